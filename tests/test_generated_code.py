"""The committed stubs are exactly what scripts/gen_proto.sh produces from proto/ (DESIGN.md §4.7)."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "clients" / "python" / "mlxd_proto" / "v1"


def test_regenerating_the_stubs_changes_nothing(tmp_path):
    subprocess.run(["bash", str(ROOT / "scripts" / "gen_proto.sh")], check=True,
                   env=dict(os.environ, MLXD_PROTO_OUT=str(tmp_path), PYTHON=sys.executable))
    generated = sorted(p.name for p in tmp_path.iterdir())
    assert generated == sorted(p.name for p in COMMITTED.iterdir() if p.is_file())
    for name in generated:
        stale = f"{name} is stale: run scripts/gen_proto.sh"
        assert (tmp_path / name).read_bytes() == (COMMITTED / name).read_bytes(), stale
