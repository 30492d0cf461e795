"""A whole flowq stack for end-to-end tests: the three services as separate processes on free
ports, sharing one database and one Redis key prefix."""

from __future__ import annotations

import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field

import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from flowq.client import Client
from flowq.db.migrate import upgrade
from flowq.netutil import free_ports
from flowq.tls import TlsFiles, channel

from .procs import ProcessGroup, ServiceProcess

HEALTH_NAMES = {
    "apiserver": "flowq.v1.WorkflowService",
    "dispatcher": "flowq.v1.QueueService",
    "executor": "flowq.v1.ExecutorService",
}


@dataclass
class Stack:
    procs: ProcessGroup
    database_url: str
    redis_url: str
    key_prefix: str
    extra_env: Mapping[str, str] = field(default_factory=dict)
    #: Executors to run: named executor, executor-2, ...; the dispatcher round-robins over them.
    executors: int = 1
    grpc_ports: dict[str, int] = field(default_factory=dict)
    http_port: int = 0
    metrics_ports: dict[str, int] = field(default_factory=dict)
    processes: dict[str, ServiceProcess] = field(default_factory=dict)
    #: What the test's own clients present and trust when the services serve TLS.
    client_tls: TlsFiles | None = None

    @property
    def names(self) -> list[str]:
        """Process names in start order: the executors, the dispatcher, the apiserver."""
        extra = [f"executor-{i}" for i in range(2, self.executors + 1)]
        return ["executor", *extra, "dispatcher", "apiserver"]

    def executor_target(self) -> str:
        ports = [self.grpc_ports[n] for n in self.names if n.startswith("executor")]
        if len(ports) == 1:
            return f"127.0.0.1:{ports[0]}"
        return "ipv4:" + ",".join(f"127.0.0.1:{p}" for p in ports)

    def env(self, role: str, **overrides: str) -> dict[str, str]:
        env = {
            "FLOWQ_DATABASE_URL": self.database_url,
            "FLOWQ_REDIS_URL": self.redis_url,
            "FLOWQ_KEY_PREFIX": self.key_prefix,
            "FLOWQ_GRPC_PORT": str(self.grpc_ports[role]),
            "FLOWQ_HTTP_PORT": str(self.http_port),
            "FLOWQ_METRICS_PORT": str(self.metrics_ports[role]),
            "FLOWQ_INSTANCE_ID": f"{role}-{self.grpc_ports[role]}",
            "FLOWQ_EXECUTOR_TARGET": self.executor_target(),
            "FLOWQ_EXECUTOR_ALLOW_SHELL": "true",
            "FLOWQ_CLAIM_IDLE_MS": "1000",
            "FLOWQ_BACKOFF_MAX_SECONDS": "2",
            "FLOWQ_SHUTDOWN_GRACE_SECONDS": "5",
            "FLOWQ_LOG_LEVEL": "INFO",
        }
        env.update(self.extra_env)
        env.update(overrides)
        return env

    def start(self, *roles: str, ready: bool = True) -> Stack:
        """Start `roles` (all three by default); wait for readiness, or only liveness if not `ready`."""
        if ready:
            upgrade(self.database_url)
        if not self.grpc_ports:
            ports = free_ports(2 * len(self.names) + 1)
            self.grpc_ports = dict(zip(self.names, ports, strict=False))
            self.metrics_ports = dict(zip(self.names, ports[len(self.names) :], strict=False))
            self.http_port = ports[-1]
        for name in roles or self.names:
            role = name.split("-")[0]
            self.processes[name] = self.procs.start_service(role, self.env(name), name=name)
        for name in roles or self.names:
            health = HEALTH_NAMES[name.split("-")[0]] if ready else ""
            self.processes[name].wait_healthy(
                self.target(name), health, timeout=60, tls=self.client_tls
            )
        return self

    def owner_process(self, owner_id: str) -> tuple[str, ServiceProcess]:
        """The executor process (name, process) whose instance id starts the owner token."""
        for name, process in self.processes.items():
            if name.startswith("executor") and owner_id.startswith(
                f"{name}-{self.grpc_ports[name]}-"
            ):
                return name, process
        raise AssertionError(f"no executor owns {owner_id}")

    def target(self, role: str = "apiserver") -> str:
        return f"127.0.0.1:{self.grpc_ports[role]}"

    def health(self, role: str, service: str | None = None) -> str:
        """SERVING / NOT_SERVING of `service` (the role's own name by default) on that process."""
        name = HEALTH_NAMES[role.split("-")[0]] if service is None else service
        with channel(self.target(role), self.client_tls or TlsFiles(), []) as chan:
            reply = health_pb2_grpc.HealthStub(chan).Check(
                health_pb2.HealthCheckRequest(service=name), timeout=5
            )
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    def metrics(self, role: str) -> str:
        """The Prometheus text of one service (the apiserver serves it on its HTTP port)."""
        port = self.http_port if role == "apiserver" else self.metrics_ports[role]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
            return reply.read().decode()

    def put_workflow(self, name: str, doc: dict, app_id: str = "demo") -> None:
        """PUT a workflow document over REST; fail the test on anything but 200."""
        reply = httpx.put(
            f"{self.base_url}/api/v1/applications/{app_id}/workflows/{name}", json=doc, timeout=30
        )
        assert reply.status_code == 200, reply.text

    def client(self) -> Client:
        """A typed client of this stack's apiserver and dispatcher."""
        return Client(self.target(), queue_target=self.target("dispatcher"), tls=self.client_tls)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"
