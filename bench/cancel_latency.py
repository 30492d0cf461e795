"""Cancel latency of a running shell step: from CancelTask to the task CANCELLED as the client
sees it (WatchTask), 10 runs. The heartbeat is 10 s here, so the figure is the cancel
channel's, not the database poll's.

    .venv/bin/python bench/cancel_latency.py
"""

import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from flowq.v1 import types_pb2
from tests.support.procs import ProcessGroup
from tests.support.rediskeys import delete_prefixed_keys, new_key_prefix
from tests.support.stack import Stack

REDIS = "redis://127.0.0.1:6379/0"
prefix = new_key_prefix()
took = []
with ProcessGroup(tempfile.mkdtemp()) as procs:
    try:
        stack = Stack(
            procs,
            f"sqlite:///{tempfile.mkdtemp()}/c.db",
            REDIS,
            prefix,
            extra_env={"FLOWQ_HEARTBEAT_SECONDS": "10", "FLOWQ_LEASE_TTL_SECONDS": "30"},
        ).start()
        long = {"steps": [{"name": "w", "type": "shell", "properties": {"command": "sleep 60"}}]}
        stack.put_workflow("long", long)
        with stack.client() as flowq:
            for _ in range(10):
                task_id = flowq.exec_workflow("demo", "long").task_id
                while flowq.get_task(task_id).steps[0].status != types_pb2.STEP_STATUS_RUNNING:
                    time.sleep(0.05)
                started = time.monotonic()
                flowq.cancel_task("demo", task_id)
                done = flowq.wait(task_id, timeout=30)
                took.append(time.monotonic() - started)
                assert done.status == types_pb2.TASK_STATUS_CANCELLED, done.status
    finally:
        delete_prefixed_keys(REDIS, prefix)
print(
    f"cancel -> CANCELLED: median {statistics.median(took):.3f} s, "
    f"max {max(took):.3f} s (n={len(took)})"
)
