"""Client commands: `generate` streams to the terminal, `health` and `info` ask the daemon.

Shared by `mlxd` (the daemon's command) and `mlxd-client` (the client package alone).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from google.protobuf.json_format import MessageToDict

from mlxd_client.channel import TlsOptions
from mlxd_client.client import Client, MlxdClientError
from mlxd_proto.v1 import inference_pb2 as pb

DEFAULT_ADDR = "127.0.0.1:50051"


def add_client_commands(sub: argparse._SubParsersAction) -> None:
    gen = sub.add_parser("generate", help="stream a generation from a running daemon")
    gen.add_argument("prompt", help="prompt text (with --chat: the user message)")
    _add_connection(gen)
    gen.add_argument("--chat", action="store_true", help="send the prompt as a user chat message")
    gen.add_argument("--max-tokens", type=int, default=128)
    gen.add_argument("--temperature", type=float)
    gen.add_argument("--top-p", type=float)
    gen.add_argument("--top-k", type=int)
    gen.add_argument("--seed", type=int)
    gen.add_argument("--stop", action="append", default=[])
    gen.add_argument("--timeout", type=float)
    shape = gen.add_mutually_exclusive_group()
    shape.add_argument("--json", action="store_true", help="the output is a JSON object")
    shape.add_argument("--json-schema", help="the output follows this JSON Schema (its text, or @FILE)")
    shape.add_argument("--regex", help="the whole output matches this regex")
    shape.add_argument("--gbnf", help="the output follows this GBNF grammar, as llama.cpp takes it (text or @FILE)")
    shape.add_argument("--lark", help="the output follows this Lark grammar (llguidance's dialect; text or @FILE)")
    gen.add_argument("--after", help="with a constraint: free text until this marker (e.g. </think>), then the rest")
    gen.set_defaults(run=_generate)
    health = sub.add_parser("health", help="print the daemon's health (exit 0 when SERVING)")
    _add_connection(health)
    health.add_argument("--service", default="")
    health.set_defaults(run=_health)
    info = sub.add_parser("info", help="print the served model's info as JSON")
    _add_connection(info)
    info.set_defaults(run=_info)


def _add_connection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--addr", default=DEFAULT_ADDR)
    parser.add_argument("--token-file", type=Path, help="send the bearer token in this file")
    parser.add_argument("--tls", action="store_true", help="connect with TLS (implied by the --tls-* options)")
    parser.add_argument("--tls-ca", type=Path, help="PEM CA certificate(s) to trust (default: the system's)")
    parser.add_argument("--tls-cert", type=Path, help="client certificate for mutual TLS")
    parser.add_argument("--tls-key", type=Path, help="client key for mutual TLS")


def _client(args: argparse.Namespace) -> Client:
    token = args.token_file.read_text().strip() if args.token_file else None
    use_tls = args.tls or args.tls_ca or args.tls_cert or args.tls_key
    tls = TlsOptions.from_files(ca=args.tls_ca, cert=args.tls_cert, key=args.tls_key) if use_tls else None
    return Client(args.addr, token=token, tls=tls)


def constraint_of(args: argparse.Namespace) -> pb.Constraint | None:
    """The --json / --json-schema / --regex / --gbnf / --lark option as the request's constraint (@FILE: read it)."""
    if args.json:
        constraint = pb.Constraint(json_object=pb.JsonObject())
    else:
        kind = next((k for k in ("json_schema", "regex", "gbnf", "lark") if getattr(args, k) is not None), None)
        if kind is None:
            if args.after:
                raise SystemExit("mlxd: --after needs a constraint (--json, --json-schema, --regex, --gbnf, --lark)")
            return None
        source = getattr(args, kind)
        if kind != "regex" and source.startswith("@"):
            source = Path(source[1:]).read_text()
        constraint = pb.Constraint(**{kind: source})
    if args.after:
        constraint.after = args.after
    return constraint


def _generate(args: argparse.Namespace) -> int:
    kwargs = dict(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                  seed=args.seed, stop=args.stop, timeout=args.timeout, constraint=constraint_of(args))
    if args.chat:
        kwargs["messages"] = [{"role": "user", "content": args.prompt}]
    else:
        kwargs["prompt"] = args.prompt
    with _client(args) as client:
        for response in client.generate(**kwargs):
            if response.HasField("chunk"):
                sys.stdout.write(response.chunk.text)
                sys.stdout.flush()
            else:
                final = response.final
                t = final.timings
                sys.stdout.write("\n")
                print(f"[{final.usage.prompt_tokens} prompt + {final.usage.completion_tokens} generated tokens, "
                      f"finish: {pb.FinishReason.Name(final.finish_reason)}, "
                      f"ttft {t.time_to_first_token_seconds * 1000:.0f} ms, "
                      f"prefill {t.prefill_tokens_per_second:.1f} tok/s, "
                      f"decode {t.decode_tokens_per_second:.1f} tok/s"
                      f"{', constraint complete' if final.constraint_complete else ''}]",
                      file=sys.stderr)
    return 0


def _health(args: argparse.Namespace) -> int:
    with _client(args) as client:
        status = client.health(args.service)
    print(status)
    return 0 if status == "SERVING" else 1


def _info(args: argparse.Namespace) -> int:
    with _client(args) as client:
        print(json.dumps(MessageToDict(client.model_info(), preserving_proto_field_name=True), indent=1))
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        return args.run(args)
    except MlxdClientError as error:
        print(f"mlxd: {error}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mlxd-client")
    add_client_commands(parser.add_subparsers(required=True))
    return run(parser.parse_args(argv))
