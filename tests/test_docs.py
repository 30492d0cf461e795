"""docs/api.md cannot drift: every served REST route and gRPC method is documented, every
documented one is served, and every curl and grpcurl example in it runs against a live
stack with the outcome it shows (`# 404 ...` after a curl, `# {"code": 9 ...` after a
grpcurl; no comment: success)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.support.stack import Stack

ROOT = Path(__file__).resolve().parent.parent
API_MD = ROOT / "docs" / "api.md"
GRPCURL = ROOT / ".venv" / "bin" / "grpcurl"
SERVICES = ("flowq.v1.WorkflowService", "flowq.v1.QueueService", "flowq.v1.ExecutorService")

COMMAND_START = re.compile(r"^(?:[A-Z_]+=\$\()?(curl|grpcurl)\b")


@pytest.fixture
def stack(procs, sqlite_database_url, redis_server_url, key_prefix) -> Stack:
    return Stack(procs, sqlite_database_url, redis_server_url, key_prefix).start()


def section(text: str, heading: str) -> str:
    """From `heading` to the next heading of the same or a higher level."""
    start = text.index(heading)
    level = len(heading) - len(heading.lstrip("#"))
    pattern = re.compile(rf"^#{{1,{level}}} ", re.M)
    end = pattern.search(text, start + len(heading))
    return text[start : end.start() if end else len(text)]


def documented_routes(text: str) -> set[tuple[str, str]]:
    table = section(text, "## REST routes")
    return set(re.findall(r"^\| `(GET|PUT|POST|DELETE|PATCH) (/api/v1/[^`]*)` \|", table, re.M))


def served_routes(stack: Stack) -> set[tuple[str, str]]:
    spec = httpx.get(f"{stack.base_url}/openapi.json", timeout=30).json()
    return {
        (method.upper(), path)
        for path, operations in spec["paths"].items()
        for method in operations
        if path.startswith("/api/v1/")
    }


def test_every_served_route_and_method_is_documented_and_the_reverse(stack: Stack) -> None:
    text = API_MD.read_text()
    documented, served = documented_routes(text), served_routes(stack)
    assert served - documented == set(), "served but not in docs/api.md"
    assert documented - served == set(), "in docs/api.md but not served"

    targets = {
        "flowq.v1.WorkflowService": stack.target(),
        "flowq.v1.QueueService": stack.target("dispatcher"),
        "flowq.v1.ExecutorService": stack.target("executor"),
    }
    for service in SERVICES:
        listed = subprocess.run(
            [str(GRPCURL), "-plaintext", targets[service], "list", service],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert listed.returncode == 0, listed.stderr
        served_methods = {line.rsplit(".", 1)[1] for line in listed.stdout.split()}
        table = section(text, f"### {service} ")
        documented_methods = set(re.findall(r"^\| `(\w+)` \|", table, re.M))
        assert served_methods == documented_methods, service


def examples(text: str) -> tuple[str, list[tuple[str, str, str]]]:
    """The shell blocks as one script, and for each curl/grpcurl call in it, in order, its
    kind and the comment that follows it (what it should answer)."""
    blocks = re.findall(r"```sh\n(.*?)```", text, re.S)
    calls: list[tuple[str, str, str]] = []
    for block in blocks:
        lines = block.splitlines()
        for i, line in enumerate(lines):
            match = COMMAND_START.match(line)
            if not match:
                continue
            after = ""
            for following in lines[i + 1 :]:
                if COMMAND_START.match(following):
                    break
                if following.startswith("# ") and not after:
                    after = following
            calls.append((match.group(1), line, after))
    return "\n".join(blocks), calls


PRELUDE = r"""
set -u
call() { echo "$1 $2 $3" >> "$LOG"; }
curl() {
  local args=("${@//localhost:8080/127.0.0.1:$HTTP}")
  args=("${args[@]//localhost:9102/127.0.0.1:$DISPATCHER_METRICS}")
  local body; body=$(mktemp)
  local code; code=$(command curl -sS --max-time 30 -o "$body" -w '%{http_code}' "${args[@]}")
  local rc=$?
  cat "$body"; echo; rm -f "$body"
  call curl "$rc" "$code"
}
grpcurl() {
  local args=("${@//localhost:50051/127.0.0.1:$APISERVER}")
  args=("${args[@]//localhost:50052/127.0.0.1:$DISPATCHER}")
  args=("${args[@]//localhost:50053/127.0.0.1:$EXECUTOR}")
  "$GRPCURL" -max-time 30 "${args[@]}"
  call grpcurl "$?" -
}
"""


def test_every_example_in_the_api_docs_runs_as_shown(stack: Stack, tmp_path: Path) -> None:
    script, calls = examples(API_MD.read_text())
    log = tmp_path / "calls.log"
    env = {
        "PATH": "/usr/bin:/bin",
        "LOG": str(log),
        "GRPCURL": str(GRPCURL),
        "HTTP": str(stack.http_port),
        "APISERVER": str(stack.grpc_ports["apiserver"]),
        "DISPATCHER": str(stack.grpc_ports["dispatcher"]),
        "EXECUTOR": str(stack.grpc_ports["executor"]),
        "DISPATCHER_METRICS": str(stack.metrics_ports["dispatcher"]),
    }
    run = subprocess.run(
        ["bash", "-c", PRELUDE + script], env=env, capture_output=True, text=True, timeout=150
    )
    assert "unbound variable" not in run.stderr and "command not found" not in run.stderr, (
        run.stderr
    )
    results = [line.split() for line in log.read_text().splitlines()]
    assert len(results) == len(calls), (results, calls)
    for (kind, line, comment), (ran, rc, code) in zip(calls, results, strict=True):
        assert kind == ran
        if kind == "curl":
            want = re.match(r"# (\d{3}) ", comment)
            assert rc == "0", (line, run.stderr)
            assert code == want.group(1) if want else code.startswith("2"), (line, code, comment)
        else:
            want = re.search(r'"code": (\d+)', comment)
            expected = str(64 + int(want.group(1))) if want else "0"
            assert rc == expected, (line, rc, comment, run.stderr[-2000:])
