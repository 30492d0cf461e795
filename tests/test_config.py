"""Settings: defaults from ARCHITECTURE.md, and every bad variable named in one error."""

from __future__ import annotations

import pytest

from flowq.config import Settings
from flowq.errors import ConfigError


def test_defaults_match_the_documented_contract() -> None:
    s = Settings.from_env("dispatcher", {})
    assert s.database_url == "sqlite:///.flowq/flowq.db"
    assert s.redis_url == "redis://127.0.0.1:6379/0"
    assert s.key_prefix == "flowq"
    assert (s.grpc_port, s.metrics_port) == (50052, 9102)
    assert Settings.from_env("apiserver", {}).grpc_port == 50051
    assert (
        Settings.from_env("executor", {}).grpc_port,
        Settings.from_env("executor", {}).metrics_port,
    ) == (50053, 9103)
    assert s.executor_target == "127.0.0.1:50053"
    assert s.executor_allow_shell is False
    assert (s.max_deliveries, s.claim_idle_ms, s.max_task_attempts) == (5, 15000, 3)
    assert (s.lease_ttl_seconds, s.heartbeat_seconds) == (6, 2)
    assert (s.sweep_interval_seconds, s.requeue_after_seconds) == (2, 30)
    assert s.shutdown_grace_seconds == 30


def test_every_bad_variable_is_named_in_one_error() -> None:
    env = {
        "FLOWQ_GRPC_PORT": "http",
        "FLOWQ_MAX_DELIVERIES": "0",
        "FLOWQ_EXECUTOR_ALLOW_SHELL": "maybe",
        "FLOWQ_DATABASE_URL": "mysql://x",
    }
    with pytest.raises(ConfigError) as err:
        Settings.from_env("executor", env)
    for name in env:
        assert name in err.value.message


def test_heartbeat_must_be_shorter_than_the_lease() -> None:
    with pytest.raises(ConfigError, match="FLOWQ_HEARTBEAT_SECONDS"):
        Settings.from_env(
            "executor", {"FLOWQ_HEARTBEAT_SECONDS": "10", "FLOWQ_LEASE_TTL_SECONDS": "5"}
        )


def test_passwords_are_masked_when_settings_are_logged() -> None:
    s = Settings.from_env("apiserver", {"FLOWQ_DATABASE_URL": "postgresql://flowq:s3cret@db/flowq"})
    assert "s3cret" not in str(s.public())
