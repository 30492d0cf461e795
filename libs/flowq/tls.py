"""TLS for gRPC and HTTP from PEM files (FLOWQ_TLS_CERT, FLOWQ_TLS_KEY, FLOWQ_TLS_CA).

A server with a certificate serves TLS on its gRPC and HTTP ports; with a CA as well it
requires clients to present a certificate that CA signed (mTLS). A client (the dispatcher
calling executors, the CLI) trusts the CA (else the system's roots) and presents its own
certificate when it has one.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc


@dataclass(frozen=True)
class TlsFiles:
    cert: str = ""
    key: str = ""
    ca: str = ""

    @property
    def serving(self) -> bool:
        """A server serves TLS when it has a certificate."""
        return bool(self.cert and self.key)

    @property
    def dialing(self) -> bool:
        """A client speaks TLS when it was given a CA or a certificate."""
        return bool(self.ca or self.cert)

    def _read(self, path: str) -> bytes | None:
        return Path(path).read_bytes() if path else None

    def server_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self._read(self.key), self._read(self.cert))],
            root_certificates=self._read(self.ca),
            require_client_auth=bool(self.ca),
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self._read(self.ca),
            private_key=self._read(self.key),
            certificate_chain=self._read(self.cert),
        )

    def uvicorn_options(self) -> dict[str, Any]:
        if not self.serving:
            return {}
        options: dict[str, Any] = {"ssl_certfile": self.cert, "ssl_keyfile": self.key}
        if self.ca:
            options.update(ssl_ca_certs=self.ca, ssl_cert_reqs=ssl.CERT_REQUIRED)
        return options


def aio_channel(target: str, tls: TlsFiles, options: list[tuple[str, Any]]) -> grpc.aio.Channel:
    if tls.dialing:
        return grpc.aio.secure_channel(target, tls.channel_credentials(), options=options)
    return grpc.aio.insecure_channel(target, options=options)


def channel(target: str, tls: TlsFiles, options: list[tuple[str, Any]]) -> grpc.Channel:
    if tls.dialing:
        return grpc.secure_channel(target, tls.channel_credentials(), options=options)
    return grpc.insecure_channel(target, options=options)
