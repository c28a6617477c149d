"""A live dpx for the partner client: gunicorn (2 workers) over SQLite, demo policies,
20,000 synthetic contacts from ``dpx demo-data``, tokens from ``dpx issue-token``; and a
loopback proxy that loses responses on purpose.

Each test module gets its own server (module scope), so modules never share budget.
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from click.testing import CliRunner

from service.cli import main as dpx
from tests.dataset_policies import DEMO_POLICIES
from tests.live_server import environment, serve

PARTNERS = ("no-police", "interpol-sg")


@dataclass(frozen=True)
class LiveDpx:
    """The live server's URL, the environment it runs with, and a token per partner."""

    url: str
    env: dict[str, str]
    tokens: dict[str, str]
    """Partner id -> bearer token."""


def _dpx(env: dict[str, str | None], *args: str) -> str:
    """Run an admin command of ``dpx`` (in this process: the same code, no start-up cost)."""
    done = CliRunner().invoke(dpx, list(args), env=env, catch_exceptions=False)
    assert done.exit_code == 0, f"dpx {' '.join(args)}: {done.output}"
    return done.stdout


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveDpx]:
    base = tmp_path_factory.mktemp("live")
    shutil.copytree(DEMO_POLICIES, base / "policies")
    variables = {"DPX_DATA_DIR": str(base / "var"), "DPX_POLICY_DIR": str(base / "policies")}
    # None unsets a variable for the admin commands: the server is configured by these alone.
    overrides: dict[str, str | None] = {
        name: None for name in os.environ if name.startswith("DPX_")
    }
    overrides.update(variables)
    _dpx(overrides, "init")
    _dpx(overrides, "demo-data", "--dataset", "uk-helpline-2024", "--contacts", "20000")
    tokens = {
        partner: _dpx(overrides, "issue-token", "--partner", partner).strip()
        for partner in PARTNERS
    }
    # SIGINT is gunicorn's quick shutdown: nothing is in flight once the tests are done.
    with serve(
        variables, workers=2, log_path=base / "gunicorn.log", stop_signal=signal.SIGINT
    ) as server:
        yield LiveDpx(url=server.url, env=environment(variables), tokens=tokens)


@dataclass
class Proxy:
    """A loopback HTTP proxy in front of the live server.

    ``faults`` maps "METHOD /path" to the faults of the next matching requests, in order:
    ``"lose"`` forwards the request, lets the server answer, then closes the connection
    without a response (the client cannot know whether it was charged); ``"503"`` and
    ``"429"`` answer with that problem and forward nothing. Every request is recorded
    with its Idempotency-Key.
    """

    url: str
    faults: dict[str, list[str]] = field(default_factory=dict)
    seen: list[tuple[str, str | None]] = field(default_factory=list)


_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


def _handler(upstream: str, proxy: Proxy, lock: threading.Lock) -> type[BaseHTTPRequestHandler]:
    host, port = upstream.removeprefix("http://").split(":")

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            """Quiet: the test reads ``proxy.seen``."""

        def _relay(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            route = f"{self.command} {self.path.split('?')[0]}"
            with lock:
                proxy.seen.append((route, self.headers.get("Idempotency-Key")))
                pending = proxy.faults.get(route) or []
                fault = pending.pop(0) if pending else None
            if fault in ("503", "429"):
                code = b"rate_limited" if fault == "429" else b"unavailable"
                payload = (
                    b'{"type":"about:blank","title":"busy","status":%s,'
                    b'"detail":"try again","code":"%s"}' % (fault.encode(), code)
                )
                self.send_response(int(fault))
                self.send_header("Content-Type", "application/problem+json")
                self.send_header("Retry-After", "0")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                return
            connection = http.client.HTTPConnection(host, int(port), timeout=30)
            try:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                connection.request(self.command, self.path, body=body, headers=headers)
                answer = connection.getresponse()
                payload = answer.read()
            finally:
                connection.close()
            if fault == "lose":
                self.close_connection = True
                return
            self.send_response(answer.status)
            for name, value in answer.getheaders():
                if name.lower() not in _HOP_BY_HOP:
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = _relay
        do_POST = _relay

    return Handler


@pytest.fixture
def proxy(live: LiveDpx) -> Iterator[Proxy]:
    lock = threading.Lock()
    state = Proxy(url="")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(live.url, state, lock))
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
