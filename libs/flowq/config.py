"""Settings: one frozen object per process, read once from the FLOWQ_* variables.

Every bad variable is named in a single `ConfigError`, so an operator fixes them all at once.
This module is the only place that reads the environment.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from flowq.errors import ConfigError
from flowq.tls import TlsFiles

#: Never echoed back, not even in a configuration error.
SECRET_VARIABLES = frozenset({"FLOWQ_API_TOKENS", "FLOWQ_INTERNAL_TOKEN"})
DNS_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")

# Default gRPC and metrics ports by service role.
GRPC_PORTS = {"apiserver": 50051, "dispatcher": 50052, "executor": 50053}
METRICS_PORTS = {
    "dispatcher": 9102,
    "executor": 9103,
}  # the apiserver serves /metrics on FLOWQ_HTTP_PORT


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("expected true or false")


def _port(raw: str) -> int:
    value = int(raw)
    if not 0 <= value <= 65535:
        raise ValueError("expected a port number between 0 and 65535")
    return value


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise ValueError("expected an integer of at least 1")
    return value


def _positive_float(raw: str) -> float:
    value = float(raw)
    if value <= 0:
        raise ValueError("expected a number greater than 0")
    return value


def _dns_label(raw: str) -> str:
    if not DNS_LABEL_RE.match(raw):
        raise ValueError("expected a Kubernetes namespace name (lowercase letters, digits, '-')")
    return raw


def _readable_file(raw: str) -> str:
    path = raw.strip()
    if path and not os.access(path, os.R_OK):
        raise ValueError("no readable file there")
    return path


def _token(raw: str) -> str:
    value = raw.strip()
    if value and (len(value) < 16 or any(c.isspace() or c == "," for c in value)):
        raise ValueError("a token needs at least 16 characters, without spaces or commas")
    return value


def _tokens(raw: str) -> tuple[str, ...]:
    """Comma-separated tokens, or `@/path/to/file` with one per line (# comments)."""
    text = raw.strip()
    if text.startswith("@"):
        try:
            with open(text[1:]) as f:
                items = [line.split("#", 1)[0].strip() for line in f]
        except OSError as exc:
            raise ValueError(f"cannot read the token file: {exc.strerror}") from None
        if not any(items):
            raise ValueError("the token file holds no token")
    else:
        items = text.split(",")
    return tuple(_token(item) for item in items if item.strip())


def _url(*schemes: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        scheme = raw.split(":", 1)[0].split("+", 1)[0]
        if "://" not in raw or scheme not in schemes:
            raise ValueError(
                f"expected a URL starting with {' or '.join(s + '://' for s in schemes)}"
            )
        return raw

    return parse


def _log_level(raw: str) -> str:
    value = raw.strip().upper()
    if value not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError("expected DEBUG, INFO, WARNING or ERROR")
    return value


def _nonempty(raw: str) -> str:
    if not raw.strip():
        raise ValueError("must not be empty")
    return raw.strip()


@dataclass(frozen=True)
class Settings:
    """Configuration shared by every flowq service; each reads the fields it needs."""

    role: str
    database_url: str
    redis_url: str
    key_prefix: str
    grpc_port: int
    http_port: int
    metrics_port: int
    instance_id: str
    executor_target: str
    executor_allow_shell: bool
    executor_max_tasks: int
    max_deliveries: int
    max_task_attempts: int
    claim_idle_ms: int
    lease_ttl_seconds: float
    heartbeat_seconds: float
    sweep_interval_seconds: float
    requeue_after_seconds: float
    shutdown_grace_seconds: float
    backoff_max_seconds: float
    log_level: str
    #: Executor: the kubeconfig for Kubernetes steps; empty = in-cluster, else ~/.kube/config.
    kubeconfig: str
    #: Executor: the namespace of Kubernetes steps that name none.
    kube_namespace: str
    #: Bearer tokens every gRPC call (and REST request) must carry; empty = no auth.
    api_tokens: tuple[str, ...]
    #: The token the dispatcher presents to executors (also accepted everywhere).
    internal_token: str
    #: Whether /metrics needs a bearer token too (when tokens are set).
    metrics_auth: bool
    #: PEM files: this process's certificate and key (TLS on its gRPC and HTTP ports, and the
    #: identity it presents to other flowq services), and the CA it trusts; a CA set on a
    #: server means clients must present a certificate it signed (mTLS).
    tls_cert: str
    tls_key: str
    tls_ca: str

    @classmethod
    def from_env(cls, role: str, env: Mapping[str, str] | None = None) -> Settings:
        """Read the settings of service `role`; raise ConfigError naming every bad variable."""
        env = os.environ if env is None else env
        spec: dict[str, tuple[str, Callable[[str], Any], str]] = {
            "database_url": (
                "FLOWQ_DATABASE_URL",
                _url("sqlite", "postgresql", "postgres"),
                "sqlite:///.flowq/flowq.db",
            ),
            "redis_url": (
                "FLOWQ_REDIS_URL",
                _url("redis", "rediss", "unix"),
                "redis://127.0.0.1:6379/0",
            ),
            "key_prefix": ("FLOWQ_KEY_PREFIX", _nonempty, "flowq"),
            "grpc_port": ("FLOWQ_GRPC_PORT", _port, str(GRPC_PORTS.get(role, 50051))),
            "http_port": ("FLOWQ_HTTP_PORT", _port, "8080"),
            "metrics_port": ("FLOWQ_METRICS_PORT", _port, str(METRICS_PORTS.get(role, 9102))),
            "instance_id": (
                "FLOWQ_INSTANCE_ID",
                _nonempty,
                f"{socket.gethostname()}-{os.getpid()}",
            ),
            "executor_target": ("FLOWQ_EXECUTOR_TARGET", _nonempty, "127.0.0.1:50053"),
            "executor_allow_shell": ("FLOWQ_EXECUTOR_ALLOW_SHELL", _bool, "false"),
            "executor_max_tasks": ("FLOWQ_EXECUTOR_MAX_TASKS", _positive_int, "32"),
            "max_deliveries": ("FLOWQ_MAX_DELIVERIES", _positive_int, "5"),
            "max_task_attempts": ("FLOWQ_MAX_TASK_ATTEMPTS", _positive_int, "3"),
            "claim_idle_ms": ("FLOWQ_CLAIM_IDLE_MS", _positive_int, "15000"),
            "lease_ttl_seconds": ("FLOWQ_LEASE_TTL_SECONDS", _positive_float, "6"),
            "heartbeat_seconds": ("FLOWQ_HEARTBEAT_SECONDS", _positive_float, "2"),
            "sweep_interval_seconds": ("FLOWQ_SWEEP_INTERVAL_SECONDS", _positive_float, "2"),
            "requeue_after_seconds": ("FLOWQ_REQUEUE_AFTER_SECONDS", _positive_float, "30"),
            "shutdown_grace_seconds": ("FLOWQ_SHUTDOWN_GRACE_SECONDS", _positive_float, "30"),
            "backoff_max_seconds": ("FLOWQ_BACKOFF_MAX_SECONDS", _positive_float, "300"),
            "log_level": ("FLOWQ_LOG_LEVEL", _log_level, "INFO"),
            "kubeconfig": ("FLOWQ_KUBECONFIG", str, env.get("KUBECONFIG", "")),
            "kube_namespace": ("FLOWQ_KUBE_NAMESPACE", _dns_label, "default"),
            "api_tokens": ("FLOWQ_API_TOKENS", _tokens, ""),
            "internal_token": ("FLOWQ_INTERNAL_TOKEN", _token, ""),
            "metrics_auth": ("FLOWQ_METRICS_AUTH", _bool, "false"),
            "tls_cert": ("FLOWQ_TLS_CERT", _readable_file, ""),
            "tls_key": ("FLOWQ_TLS_KEY", _readable_file, ""),
            "tls_ca": ("FLOWQ_TLS_CA", _readable_file, ""),
        }
        values: dict[str, Any] = {"role": role}
        problems: list[str] = []
        for attr, (var, parse, default) in spec.items():
            raw = env.get(var, default)
            try:
                values[attr] = parse(raw)
            except ValueError as exc:
                shown = "<hidden>" if var in SECRET_VARIABLES else repr(raw)
                problems.append(f"{var}={shown}: {exc}")
        if not problems and values["heartbeat_seconds"] >= values["lease_ttl_seconds"]:
            problems.append(
                "FLOWQ_HEARTBEAT_SECONDS must be smaller than FLOWQ_LEASE_TTL_SECONDS "
                f"({values['heartbeat_seconds']} >= {values['lease_ttl_seconds']})"
            )
        if not problems and bool(values["tls_cert"]) != bool(values["tls_key"]):
            problems.append("FLOWQ_TLS_CERT and FLOWQ_TLS_KEY go together: set both or neither")
        if not problems and values["tls_ca"] and not values["tls_cert"]:
            problems.append(
                "FLOWQ_TLS_CA needs FLOWQ_TLS_CERT and FLOWQ_TLS_KEY (the server's own certificate)"
            )
        if problems:
            raise ConfigError("invalid configuration: " + "; ".join(problems))
        return cls(**values)

    def public(self) -> dict[str, Any]:
        """The settings as logged at start-up, with passwords in URLs masked."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        for key in ("database_url", "redis_url"):
            out[key] = _mask_password(out[key])
        out["api_tokens"] = f"<{len(self.api_tokens)} tokens>"
        out["internal_token"] = "<set>" if self.internal_token else ""
        return out

    @property
    def accepted_tokens(self) -> tuple[str, ...]:
        """What this service accepts as a bearer token; empty = no authentication."""
        return self.api_tokens + ((self.internal_token,) if self.internal_token else ())

    @property
    def tls(self) -> TlsFiles:
        return TlsFiles(self.tls_cert, self.tls_key, self.tls_ca)

    @property
    def outgoing_token(self) -> str:
        """What this service presents to others (the dispatcher to executors)."""
        return self.internal_token or (self.api_tokens[0] if self.api_tokens else "")


def _mask_password(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not at or ":" not in creds:
        return url
    user = creds.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{host}"
