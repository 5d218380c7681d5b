"""The main job, end to end: spawn `mlxd serve` as a parent would, wait for its ready line and SERVING,
stream one chat generation to the terminal, then stop the daemon with SIGTERM.

    .venv/bin/python scripts/demo.py [--model PATH] [--prompt TEXT]
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from mlxd_client import Client


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, help="model folder or .gguf (default: SmolLM2-135M-Instruct Q4_1)")
    parser.add_argument("--prompt", default="What is the capital of France? Answer in one sentence.")
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()
    if args.model is None:
        from mlxd.demo_models import fetch_model
        args.model = fetch_model()

    sock = Path(tempfile.mkdtemp(prefix="mlxd-demo-")) / "mlxd.sock"
    cmd = [sys.executable, "-m", "mlxd", "serve", "--model", str(args.model), "--addr", f"unix:{sock}"]
    print("$", " ".join(cmd), file=sys.stderr)
    daemon = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        ready = json.loads(daemon.stdout.readline() or "{}")
        if ready.get("event") != "ready":
            print(f"mlxd did not start (exit code {daemon.wait()})", file=sys.stderr)
            return 1
        print("ready:", json.dumps(ready), file=sys.stderr)
        with Client(ready["addr"]) as client:
            client.wait_serving(timeout=30)
            info = client.model_info()
            print(f"model: {info.model_id} ({info.architecture}, {info.dtype}, {info.quantization or 'unquantized'})",
                  file=sys.stderr)
            print(f"user: {args.prompt}\nassistant: ", end="", flush=True)
            for response in client.generate(messages=[{"role": "user", "content": args.prompt}],
                                            max_tokens=args.max_tokens, temperature=0.0):
                if response.HasField("chunk"):
                    print(response.chunk.text, end="", flush=True)
                else:
                    final, t = response.final, response.final.timings
                    print(f"\n[{final.usage.prompt_tokens} prompt + {final.usage.completion_tokens} generated tokens; "
                          f"time to first token {t.time_to_first_token_seconds * 1000:.0f} ms; "
                          f"prefill {t.prefill_tokens_per_second:.0f} tok/s; "
                          f"decode {t.decode_tokens_per_second:.1f} tok/s]", file=sys.stderr)
    finally:
        daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(30)
    print(f"daemon stopped with exit code {code}", file=sys.stderr)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
