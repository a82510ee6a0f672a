"""Run the stand-ins as real HTTP servers in one background thread and event loop."""
from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time

import uvicorn

from standins import sendgrid, shopmonkey, tekmetric, twilio
from standins.sendgrid_state import SendGridState
from standins.shopmonkey_state import ShopMonkeyState
from standins.tekmetric_state import TekmetricState
from standins.twilio_state import TwilioState

DEFAULT_PORTS = {"shopmonkey": 8701, "twilio": 8702, "sendgrid": 8703}
TEKMETRIC_PORT = 8704  # `python -m standins --tekmetric-port` starts it; it is not in DEFAULT_PORTS


class _BackgroundServer(uvicorn.Server):
    """uvicorn.Server that never touches signal handlers: it runs off the main thread,
    and whoever owns the main thread decides what Ctrl-C means."""

    def install_signal_handlers(self) -> None:  # older uvicorn
        pass

    @contextlib.contextmanager
    def capture_signals(self):  # newer uvicorn
        yield


# How long an idle client connection is kept open. uvicorn's default (5 s) is far shorter
# than the idle timeouts of the front ends real APIs sit behind (a minute or more), and a
# sender's pooled connection then often met the server closing it just as it sent: a
# connection reset after the request was written, an ambiguous send (`unknown`, never
# re-sent). Seen in bursts with two dispatchers on a loaded machine (1 SMS in 500).
KEEP_ALIVE_SECONDS = 75


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted sockets only when the
    # protocol says TCP; without it each response waits ~40 ms for a delayed ACK (Nagle).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(256)
    sock.setblocking(False)
    return sock


class StandinServers:
    """ShopMonkey, Twilio, SendGrid and Tekmetric stand-ins on `host`; port 0 picks a free
    port; `tekmetric_port=None` leaves Tekmetric out.

    with StandinServers() as s:
        s.twilio_url, s.twilio.messages.items(), ...
    """

    def __init__(self, host: str = "127.0.0.1", shopmonkey_port: int = 0, twilio_port: int = 0,
                 sendgrid_port: int = 0, *, shopmonkey: ShopMonkeyState | None = None,
                 twilio: TwilioState | None = None, sendgrid: SendGridState | None = None,
                 log_level: str = "warning", access_log: bool = False, tekmetric_port: int | None = 0,
                 tekmetric: TekmetricState | None = None) -> None:
        self.host = host
        self.shopmonkey = shopmonkey or ShopMonkeyState()
        self.twilio = twilio or TwilioState()
        self.sendgrid = sendgrid or SendGridState()
        self.tekmetric = tekmetric or TekmetricState()
        # States passed in belong to the caller (who closes them); ours are closed by stop().
        self._owned = [mine for mine, given in ((self.shopmonkey, shopmonkey), (self.twilio, twilio),
                                                (self.sendgrid, sendgrid), (self.tekmetric, tekmetric))
                       if given is None]
        self._ports = {"shopmonkey": shopmonkey_port, "twilio": twilio_port, "sendgrid": sendgrid_port}
        if tekmetric_port is not None:
            self._ports["tekmetric"] = tekmetric_port
        self._log_level = log_level
        self._access_log = access_log
        self._sockets: dict[str, socket.socket] = {}
        self._bound: dict[str, int] = {}  # kept after stop() so urls stay printable
        self._servers: dict[str, _BackgroundServer] = {}
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None

    # ----- addresses -----
    def url(self, name: str) -> str:
        if name not in self._bound:
            raise RuntimeError("not started")
        port = self._bound[name]
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    @property
    def shopmonkey_url(self) -> str:
        return self.url("shopmonkey")

    @property
    def twilio_url(self) -> str:
        return self.url("twilio")

    @property
    def sendgrid_url(self) -> str:
        return self.url("sendgrid")

    @property
    def tekmetric_url(self) -> str:
        return self.url("tekmetric")

    # ----- lifecycle -----
    def start(self, timeout: float = 10.0) -> "StandinServers":
        if self._thread is not None:
            raise RuntimeError("already started")
        apps = {
            "shopmonkey": shopmonkey.create_app(self.shopmonkey),
            "twilio": twilio.create_app(self.twilio),
            "sendgrid": sendgrid.create_app(self.sendgrid),
        }
        if "tekmetric" in self._ports:
            apps["tekmetric"] = tekmetric.create_app(self.tekmetric)
        try:
            # Bound here, in the caller's thread: a busy port fails start() at once.
            for name, port in self._ports.items():
                self._sockets[name] = _listen(self.host, port)
                self._bound[name] = self._sockets[name].getsockname()[1]
        except OSError:
            self._close_sockets()
            raise
        for name, app in apps.items():
            config = uvicorn.Config(app, log_level=self._log_level, access_log=self._access_log, lifespan="off",
                                    timeout_graceful_shutdown=1, loop="asyncio",
                                    timeout_keep_alive=KEEP_ALIVE_SECONDS)
            self._servers[name] = _BackgroundServer(config)
        self._thread = threading.Thread(target=self._run, name="standins", daemon=True)
        self._thread.start()
        self._wait_until_serving(timeout)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        for server in self._servers.values():
            server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        self._thread = None
        self._servers.clear()
        self._close_sockets()
        for state in self._owned:
            state.close()

    def __enter__(self) -> "StandinServers":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ----- internals -----
    def _run(self) -> None:
        async def serve_all() -> None:
            await asyncio.gather(*(s.serve(sockets=[self._sockets[n]]) for n, s in self._servers.items()))

        try:
            asyncio.run(serve_all())
        except BaseException as exc:  # reported by start(); a thread has nobody else to tell
            self._failure = exc

    def _wait_until_serving(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pending = set(self._servers)
        while pending:
            if self._failure is not None or not self._thread or not self._thread.is_alive():
                self.stop()
                raise RuntimeError(f"stand-in servers failed to start: {self._failure!r}")
            for name in list(pending):
                if self._servers[name].started and self._accepts(name):
                    pending.discard(name)
            if pending and time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"stand-ins not accepting connections after {timeout}s: {sorted(pending)}")
            if pending:
                self._thread.join(0.01)  # returns early only if the thread died

    def _accepts(self, name: str) -> bool:
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        try:
            with socket.create_connection((host, self._bound[name]), timeout=0.5):
                return True
        except OSError:
            return False

    def _close_sockets(self) -> None:
        for sock in self._sockets.values():
            sock.close()
        self._sockets.clear()
