"""TLS and mutual TLS on real processes, with certificates made for the test (trustme): every
gRPC and HTTP port serves TLS, the dispatcher reaches executors over mTLS, and a client
without a certificate the CA signed cannot even finish the handshake."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import grpc
import httpx
import pytest
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc

from flowq.client import Client, ClientError
from flowq.tls import TlsFiles, channel
from flowq.v1 import types_pb2
from tests.support.stack import Stack

ROOT = Path(__file__).resolve().parent.parent
NOOP = {"steps": [{"name": "s", "type": "sleep", "properties": {"seconds": 0}}]}


def pem_files(tmp: Path, ca: trustme.CA, name: str, *identities: str) -> TlsFiles:
    cert = ca.issue_cert(*identities)
    cert.cert_chain_pems[0].write_to_path(tmp / f"{name}.pem")
    for blob in cert.cert_chain_pems[1:]:
        blob.write_to_path(tmp / f"{name}.pem", append=True)
    cert.private_key_pem.write_to_path(tmp / f"{name}.key")
    return TlsFiles(str(tmp / f"{name}.pem"), str(tmp / f"{name}.key"), str(tmp / "ca.pem"))


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, TlsFiles]:
    ca = trustme.CA()
    ca.cert_pem.write_to_path(tmp_path / "ca.pem")
    other_ca = trustme.CA()  # signs a certificate the servers must refuse
    other_ca.cert_pem.write_to_path(tmp_path / "other-ca.pem")
    stranger = pem_files(tmp_path, other_ca, "stranger", "client.example")
    return {
        "server": pem_files(tmp_path, ca, "server", "127.0.0.1", "localhost"),
        "client": pem_files(tmp_path, ca, "client", "ops@example.com"),
        "stranger": TlsFiles(stranger.cert, stranger.key, str(tmp_path / "ca.pem")),
        "no-cert": TlsFiles(ca=str(tmp_path / "ca.pem")),
    }


@pytest.fixture
def stack(procs, sqlite_database_url, redis_server_url, key_prefix, pki) -> Stack:
    server = pki["server"]
    env = {"FLOWQ_TLS_CERT": server.cert, "FLOWQ_TLS_KEY": server.key, "FLOWQ_TLS_CA": server.ca}
    return Stack(
        procs,
        sqlite_database_url,
        redis_server_url,
        key_prefix,
        extra_env=env,
        client_tls=pki["client"],
    ).start()


def check_health(target: str, tls: TlsFiles | None) -> str:
    with channel(target, tls or TlsFiles(), []) as chan:
        try:
            reply = health_pb2_grpc.HealthStub(chan).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
        except grpc.RpcError as exc:
            return exc.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def test_mutual_tls_on_grpc_and_https_and_a_task_runs_through_it(
    stack: Stack, pki: dict[str, TlsFiles]
) -> None:
    client = pki["client"]
    # REST over HTTPS with a client certificate; the gateway reaches gRPC over its own socket.
    url = f"https://127.0.0.1:{stack.http_port}/api/v1/applications/demo/workflows/noop"
    context = ssl.create_default_context(cafile=client.ca)
    context.load_cert_chain(client.cert, client.key)
    with httpx.Client(verify=context) as https:
        assert https.put(url, json=NOOP).status_code == 200
    # gRPC with the typed client; the dispatcher hands the task to the executor over mTLS.
    with stack.client() as flowq:
        done = flowq.wait(flowq.exec_workflow("demo", "noop").task_id, timeout=30)
    assert done.status == types_pb2.TASK_STATUS_SUCCEEDED
    # grpcurl, as an operator would call it.
    grpcurl = subprocess.run(
        [
            str(ROOT / ".venv" / "bin" / "grpcurl"),
            "-cacert", client.ca, "-cert", client.cert, "-key", client.key,
            stack.target(), "list",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )  # fmt: skip
    assert "flowq.v1.WorkflowService" in grpcurl.stdout, grpcurl.stderr


def test_clients_without_a_certificate_the_ca_signed_are_refused(
    stack: Stack, pki: dict[str, TlsFiles]
) -> None:
    for role in ("apiserver", "dispatcher", "executor"):
        target = stack.target(role)
        assert check_health(target, pki["client"]) == "SERVING"
        assert check_health(target, None) == "UNAVAILABLE"  # plain text to a TLS port
        assert check_health(target, pki["no-cert"]) == "UNAVAILABLE"  # no client certificate
        assert check_health(target, pki["stranger"]) == "UNAVAILABLE"  # signed by another CA
    with pytest.raises(ClientError) as err:
        with Client(stack.target(), tls=pki["no-cert"], timeout=5) as anonymous:
            anonymous.list_tasks("demo")
    assert err.value.code == "UNAVAILABLE"

    https = f"https://127.0.0.1:{stack.http_port}/healthz"
    verify = ssl.create_default_context(cafile=pki["client"].ca)
    with pytest.raises(httpx.HTTPError):  # the handshake fails without a client certificate
        httpx.get(https, verify=verify, timeout=5).raise_for_status()
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{stack.http_port}/healthz", timeout=5).raise_for_status()


def test_a_certificate_without_its_key_is_a_configuration_error(pki: dict[str, TlsFiles]) -> None:
    done = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "flowq-executor")],
        env={"PATH": "/usr/bin:/bin", "FLOWQ_TLS_CERT": pki["server"].cert},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert "FLOWQ_TLS_CERT and FLOWQ_TLS_KEY go together" in done.stderr
