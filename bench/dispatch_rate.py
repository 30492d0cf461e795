"""Dispatch throughput: tasks/s one dispatcher hands to one executor (accepted RunTask calls).

N one-step tasks are stored and enqueued with no dispatcher running; then one dispatcher starts
and we time, from its /metrics, how fast flowq_dispatcher_messages_total{outcome="dispatched"}
climbs. Also prints the rate one sequential gRPC client gets from ExecWorkflow.

    .venv/bin/python bench/dispatch_rate.py [postgres|sqlite] [N]     (PROFILE=1: py-spy profiles)

A measuring script until `make bench` (issue 9) exists; it uses the test suite's process helpers.
"""

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from flowq.client import Client, load_workflows
from tests.support.pg import create_database, drop_database
from tests.support.procs import ProcessGroup
from tests.support.stack import Stack

N = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
backend = sys.argv[1] if len(sys.argv) > 1 else "postgres"
admin = "postgresql://postgres@127.0.0.1:5432/test"
db_url = create_database(admin) if backend == "postgres" else f"sqlite:///{tempfile.mkdtemp()}/b.db"
with ProcessGroup(tempfile.mkdtemp()) as procs:
    stack = Stack(
        procs,
        db_url,
        "redis://127.0.0.1:6379/0",
        f"bench{time.time_ns()}",
        extra_env={"FLOWQ_EXECUTOR_MAX_TASKS": "1024", "FLOWQ_LOG_LEVEL": "WARNING"},
    )
    stack.start("executor", "apiserver")
    with Client(stack.target()) as c:
        for w in load_workflows(
            "appId: b\nname: noop\nsteps: [{name: s, type: sleep, properties: {seconds: 0}}]\n"
        ):
            c.put_workflow(w)
        t = time.perf_counter()
        ids = [c.exec_workflow("b", "noop").task_id for _ in range(N)]
        exec_rate = N / (time.perf_counter() - t)
        stack.start("dispatcher")
        profs = []
        if os.environ.get("PROFILE"):
            for role in ("executor", "dispatcher"):
                profs.append(
                    subprocess.Popen(
                        [
                            str(Path(sys.executable).parent / "py-spy"),
                            "record",
                            "-p",
                            str(stack.processes[role].pid),
                            "-d",
                            "6",
                            "-r",
                            "100",
                            "-f",
                            "raw",
                            "-o",
                            f"/tmp/flowq-profile-{role}.txt",
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                )

        def dispatched():
            m = re.search(
                r'flowq_dispatcher_messages_total\{outcome="dispatched"\} ([0-9.]+)',
                stack.metrics("dispatcher"),
            )
            return float(m.group(1)) if m else 0.0

        first = None
        while True:
            n = dispatched()
            now = time.perf_counter()
            if n and first is None:
                first = (now, n)
            if n >= N:
                break
            time.sleep(0.02)
        rate = (n - first[1]) / (now - first[0])
        for p in profs:
            p.wait()
        for i in ids[-5:]:
            c.wait(i, timeout=120)
    print(
        f"{backend}: N={N} exec (1 sequential gRPC client) {exec_rate:.0f}/s; dispatch (1 dispatcher -> 1 executor) {rate:.0f} tasks/s"
    )
if backend == "postgres":
    drop_database(admin, db_url)
