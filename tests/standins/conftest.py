"""Fixtures for the stand-in tests: the three stand-ins on free ports (once per session,
reset before each test) and a tiny HTTP receiver standing in for our webhook endpoints."""
from __future__ import annotations

import collections
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from standins.outbox import Outbox
from standins.servers import StandinServers
from tests.standins.accounts import SENDGRID_KEY, TWILIO_SID, TWILIO_TOKEN


@pytest.fixture(scope="session")
def servers():
    with StandinServers() as s:
        s.twilio.add_account(TWILIO_SID, TWILIO_TOKEN)
        s.sendgrid.add_api_key(SENDGRID_KEY)
        yield s


@pytest.fixture(autouse=True)
def _fresh_standins(servers):
    servers.shopmonkey.reset()
    servers.twilio.reset()
    servers.sendgrid.reset()
    yield


class Receiver:
    """Records every POST; answers 200 unless told otherwise per path with respond()."""

    def __init__(self) -> None:
        self.requests = Outbox()
        self._plans: dict[str, collections.deque] = collections.defaultdict(collections.deque)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                path = self.path.split("?")[0]
                receiver.requests.add({"path": self.path, "headers": dict(self.headers.items()),
                                       "body": body.decode(), "at": time.monotonic()})
                plan = receiver._plans[path]
                status, headers, delay = plan.popleft() if plan else (200, {}, 0.0)
                if delay:
                    time.sleep(delay)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def respond(self, path: str, *statuses: int, headers: dict | None = None, delay: float = 0.0) -> None:
        for status in statuses:
            self._plans[path].append((status, headers or {}, delay))

    def wait_for_count(self, n: int, path: str | None = None, timeout: float = 5.0) -> list[dict]:
        def enough(items):
            hits = [i for i in items if path is None or i["path"] == path]
            return hits if len(hits) >= n else None

        return self.requests.wait_for(enough, timeout)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()
