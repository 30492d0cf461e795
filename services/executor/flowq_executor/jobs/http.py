"""`http` steps: one HTTP request whose answer must have the expected status.

Redirects are followed only to the same host unless `followRedirects: all` asks for more
(`none` follows none), so a step cannot be bounced to a host its author did not name.
The step's timeout bounds the whole exchange; the controller enforces it.

Every request says which step sent it: `X-Flowq-Task-Id`, `X-Flowq-Step` and `X-Flowq-Attempt`
(a step's own `headers` win). A step may run again after its executor died, so a receiver that
must act once can key on the task and step.
"""

from __future__ import annotations

import functools
import ssl
from typing import Any

import httpx

from flowq_executor.jobs.base import OutputTail, StepContext, StepFailedError

MAX_REDIRECTS = 10
BODY_TAIL_CHARS = 2000


@functools.cache
def _tls() -> ssl.SSLContext:
    """httpx's default TLS context (certifi, or SSL_CERT_FILE / SSL_CERT_DIR), built once:
    building it costs milliseconds of CPU, and every client would build its own."""
    return httpx.create_ssl_context()


class HttpJob:
    def __init__(self, ctx: StepContext) -> None:
        props = ctx.properties
        self.url: str = props["url"]
        self.method: str = str(props.get("method", "GET")).upper()
        self.headers = httpx.Headers(
            {
                "X-Flowq-Task-Id": ctx.task_id,
                "X-Flowq-Step": ctx.step,
                "X-Flowq-Attempt": str(ctx.attempt),
            }
        )
        for name, value in (props.get("headers") or {}).items():
            self.headers[str(name)] = str(value)  # replaces ours whatever its case
        self.body: Any = props.get("body")
        expect = props.get("expectStatus")
        self.expect: set[int] | None = (
            None
            if expect is None
            else {int(c) for c in (expect if isinstance(expect, list) else [expect])}
        )
        self.redirects: str = props.get("followRedirects", "same-host")

    def _expected(self, code: int) -> bool:
        return 200 <= code < 300 if self.expect is None else code in self.expect

    def _describe_expected(self) -> str:
        return "2xx" if self.expect is None else " or ".join(str(c) for c in sorted(self.expect))

    async def run(self) -> str:
        content = json = None
        if isinstance(self.body, str):
            content = self.body
        elif self.body is not None:
            json = self.body
        async with httpx.AsyncClient(timeout=None, follow_redirects=False, verify=_tls()) as client:
            request = client.build_request(
                self.method, self.url, headers=self.headers, content=content, json=json
            )
            try:
                response = await self._send(client, request)
            except httpx.HTTPError as exc:
                raise StepFailedError(
                    f"{self.method} {self.url} failed: {type(exc).__name__}: {exc or 'no answer'}"
                ) from None
        tail = OutputTail(BODY_TAIL_CHARS)
        tail.write(f"{response.status_code} {response.reason_phrase}\n")
        tail.write(response.text)
        if not self._expected(response.status_code):
            raise StepFailedError(
                f"{self.method} {response.request.url} answered {response.status_code} "
                f"{response.reason_phrase}; expected {self._describe_expected()}",
                tail.text(),
            )
        return tail.text()

    async def _send(self, client: httpx.AsyncClient, request: httpx.Request) -> httpx.Response:
        origin = request.url.host, request.url.port, request.url.scheme
        for _ in range(MAX_REDIRECTS + 1):
            response = await client.send(request)
            await response.aread()
            nxt = response.next_request
            if nxt is None or self.redirects == "none" or self._expected(response.status_code):
                return response
            if self.redirects != "all" and (nxt.url.host, nxt.url.port, nxt.url.scheme) != origin:
                raise StepFailedError(
                    f"{self.method} {request.url} redirects to another host ({nxt.url}); "
                    "set followRedirects: all on the step to follow it"
                )
            request = nxt
        raise StepFailedError(f"{self.method} {self.url}: more than {MAX_REDIRECTS} redirects")

    async def clean(self) -> None:
        """A request creates nothing flowq can take back."""
