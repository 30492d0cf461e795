"""Schemathesis against a live apiserver's /openapi.json: generated and fuzzed requests to
every route never get a 5xx, and every answer matches the schema the gateway publishes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.support.stack import Stack

ROOT = Path(__file__).resolve().parent.parent
SCHEMATHESIS = ROOT / ".venv" / "bin" / "schemathesis"
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"


@pytest.fixture
def stack(procs, sqlite_database_url, redis_server_url, key_prefix) -> Stack:
    return Stack(procs, sqlite_database_url, redis_server_url, key_prefix).start()


def test_fuzzed_requests_get_no_server_error_and_answers_match_the_schema(
    stack: Stack, tmp_path: Path
) -> None:
    run = subprocess.run(
        [
            str(SCHEMATHESIS), "run", f"{stack.base_url}/openapi.json",
            "--checks", CHECKS,
            "--phases", "examples,coverage,fuzzing",
            "--max-examples", "25",
            "--seed", "20261127",
            "--request-timeout", "15",
            "--workers", "1",
        ],
        capture_output=True,
        text=True,
        timeout=170,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "NO_COLOR": "1"},
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
