"""The committed flowq.v1 package must be exactly what `make proto` generates from protos/."""

from __future__ import annotations

import filecmp
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_committed_generated_code_is_fresh(tmp_path: Path) -> None:
    subprocess.run(
        ["make", "-s", "proto", f"PROTO_OUT={tmp_path}"],
        cwd=ROOT,
        check=True,
        timeout=300,
        capture_output=True,
    )
    generated = tmp_path / "flowq" / "v1"
    committed = ROOT / "libs" / "flowq" / "v1"
    names = sorted(p.name for p in generated.iterdir() if p.is_file())
    assert names == sorted(
        p.name for p in committed.iterdir() if p.is_file() and p.suffix in (".py", ".pyi", ".binpb")
    )
    match, mismatch, errors = filecmp.cmpfiles(generated, committed, names, shallow=False)
    assert not mismatch and not errors, (
        f"stale generated code: {mismatch + errors}; run `make proto` and commit"
    )
