"""Recovery time after kill -9 of the owning executor, default settings, a second executor up:
from the kill to the task RUNNING again under the other executor (3 runs).

    .venv/bin/python bench/recovery.py
"""

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from flowq.client import Client, load_workflows
from tests.support.procs import ProcessGroup
from tests.support.stack import Stack

DEFAULTS = {
    "FLOWQ_CLAIM_IDLE_MS": "15000",
    "FLOWQ_BACKOFF_MAX_SECONDS": "300",
    "FLOWQ_SHUTDOWN_GRACE_SECONDS": "30",
    "FLOWQ_LOG_LEVEL": "WARNING",
}
results = []
for _ in range(3):
    with ProcessGroup(tempfile.mkdtemp()) as procs:
        stack = Stack(
            procs,
            f"sqlite:///{tempfile.mkdtemp()}/r.db",
            "redis://127.0.0.1:6379/0",
            f"rec{time.time_ns()}",
            extra_env=DEFAULTS,
            executors=2,
        ).start()
        with Client(stack.target()) as c:
            for w in load_workflows(
                "appId: r\nname: long\nsteps: [{name: s, type: sleep, properties: {seconds: 60}}]\n"
            ):
                c.put_workflow(w)
            t = c.exec_workflow("r", "long")
            while not c.get_task(t.task_id).owner_id:
                time.sleep(0.05)
            time.sleep(1.0)
            owner = c.get_task(t.task_id).owner_id
            victim = next(
                p
                for n, p in stack.processes.items()
                if n.startswith("executor") and owner.startswith(f"{n}-{stack.grpc_ports[n]}-")
            )
            victim.kill()
            t0 = time.monotonic()
            while True:
                cur = c.get_task(t.task_id)
                if cur.owner_id and cur.owner_id != owner and cur.steps[0].status == 2:
                    break
                time.sleep(0.05)
            results.append(time.monotonic() - t0)
print(
    "recovery after kill -9 (defaults: lease 6 s, heartbeat 2 s, sweep 2 s):",
    ", ".join(f"{r:.1f} s" for r in results),
)
