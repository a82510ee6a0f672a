"""A small TCP/HTTP fault proxy, put between the product and a vendor stand-in.

It forwards HTTP/1.1 requests one at a time per client connection (keep-alive kept) and,
on the operator's word, misbehaves the way vendors and networks do:

- connection modes: `pass` (forward), `refuse` (nobody listens: connection refused),
  `hang` (connections are accepted, requests read and never answered);
- per-request faults, drawn for a fraction `rate` of requests from a seeded generator
  (so a run can be repeated exactly), or queued one by one:
  `429` and `500`: answered by the proxy, the request never reaches the vendor;
  `timeout`: forwarded, the vendor answers, the client hears nothing until it gives up
  (held at most `hold_seconds`, then closed);
  `close`: forwarded, the vendor answers, the connection is closed without the answer.

The last two are the ambiguous outcomes: the vendor did the work, the client cannot
know. The proxy runs its own event loop on a background thread; every control method
may be called from any thread.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import random
import threading
import time
from collections import Counter, deque
from typing import Callable

FAULT_KINDS = ("429", "500", "timeout", "close")
MODES = ("pass", "refuse", "hang")
MAX_HEAD = 64 * 1024
MAX_HOLD = 600.0  # no connection is held longer than this, whatever the caller asked


class FaultPlan:
    """Which requests fail, and how: a pure function of the seed and the request's rank."""

    def __init__(self, seed: int = 0, rate: float = 0.0, kinds: tuple[str, ...] = FAULT_KINDS) -> None:
        unknown = set(kinds) - set(FAULT_KINDS)
        if unknown or not kinds:
            raise ValueError(f"fault kinds are among {FAULT_KINDS}, got {kinds}")
        if not 0.0 <= rate <= 1.0:
            raise ValueError("rate is a fraction between 0 and 1")
        self.rate, self.kinds = rate, tuple(kinds)
        self._rng = random.Random(seed)

    def next(self) -> str:
        """`pass` or a fault kind, for the next request."""
        draw = self._rng.random()
        if draw >= self.rate:
            return "pass"
        return self.kinds[min(len(self.kinds) - 1, int(draw / self.rate * len(self.kinds)))]

    def take(self, count: int) -> list[str]:
        return [self.next() for _ in range(count)]


def generic_error_body(status: int) -> bytes:
    """An error body both SDKs can read: Twilio's code/message and SendGrid's errors list."""
    message = f"injected by the fault proxy (HTTP {status})"
    return json.dumps({"code": 20429 if status == 429 else 20500, "message": message, "status": status,
                       "errors": [{"message": message, "field": None, "help": None}]}).encode()


class _Closed(Exception):
    """The peer went away (or sent something we cannot frame) in the middle of a message."""


async def read_message(reader: asyncio.StreamReader, *, request: bool, method: str = "GET") -> tuple[bytes, str] | None:
    """One HTTP/1.1 message, raw, and its first line; None when the peer closed cleanly
    before a new message began."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial.strip():
            return None
        raise _Closed("closed inside a header") from None
    except (asyncio.LimitOverrunError, ValueError):
        raise _Closed("header too large") from None
    lines = head.decode("latin-1").split("\r\n")
    first = lines[0]
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    body = b""
    try:
        if not request and _bodyless_response(first, method):
            pass
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            body = await _read_chunked(reader)
        elif "content-length" in headers:
            length = int(headers["content-length"])
            if length < 0:
                raise _Closed("negative content-length")
            body = await reader.readexactly(length)
        elif not request:
            body = await reader.read()  # the answer runs until the connection closes
    except (asyncio.IncompleteReadError, ValueError, asyncio.LimitOverrunError):
        raise _Closed("closed inside a body") from None
    return head + body, first


def _bodyless_response(status_line: str, method: str) -> bool:
    parts = status_line.split(" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 200
    return method == "HEAD" or 100 <= status < 200 or status in (204, 304)


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    out = bytearray()
    while True:
        size_line = await reader.readuntil(b"\r\n")
        out += size_line
        size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            while True:  # trailers, up to the empty line
                trailer = await reader.readuntil(b"\r\n")
                out += trailer
                if trailer == b"\r\n":
                    return bytes(out)
        out += await reader.readexactly(size + 2)


def _wants_close(raw_head: bytes) -> bool:
    head = raw_head.split(b"\r\n\r\n", 1)[0].lower()
    return b"\r\nconnection: close" in head or head.startswith(b"http/1.0") or b" http/1.0\r\n" in head


class FaultProxy:
    """with FaultProxy(upstream_port=8702, port=9710, seed=7) as proxy:
           proxy.set_faults(rate=0.2)      # or proxy.queue("close", "429")
           proxy.set_mode("refuse"); ...; proxy.set_mode("pass")
           proxy.counts()                  # {"requests": ..., "forwarded": ..., "429": ..., ...}
    """

    def __init__(self, upstream_port: int, port: int, *, upstream_host: str = "127.0.0.1",
                 host: str = "127.0.0.1", seed: int = 0, hold_seconds: float = 30.0,
                 error_body: Callable[[int], bytes] = generic_error_body, name: str = "proxy") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.host, self.port, self.name = host, port, name
        self.seed = seed
        self.hold_seconds = min(hold_seconds, MAX_HOLD)
        self.error_body = error_body
        self._plan = FaultPlan(seed, 0.0)
        self._queued: deque[str] = deque()
        self._mode = "pass"
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._clients: set[asyncio.StreamWriter] = set()
        self._mode_changed: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # ----- lifecycle -----
    def start(self, timeout: float = 10.0) -> "FaultProxy":
        self._thread = threading.Thread(target=self._run, name=f"fault-proxy-{self.name}", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout) or self._failure is not None:
            raise RuntimeError(f"fault proxy {self.name} did not start on port {self.port}: {self._failure!r}")
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)
        self._thread = None

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ----- control -----
    def set_mode(self, mode: str) -> None:
        """`pass`, `refuse` (stop listening, cut open connections) or `hang`."""
        if mode not in MODES:
            raise ValueError(f"mode is one of {MODES}")
        asyncio.run_coroutine_threadsafe(self._set_mode(mode), self._loop).result(10)

    @property
    def mode(self) -> str:
        return self._mode

    def set_faults(self, rate: float, kinds: tuple[str, ...] = FAULT_KINDS, seed: int | None = None) -> None:
        """From now on, a fraction `rate` of requests fail (kinds drawn evenly); 0 stops it."""
        with self._lock:
            self._plan = FaultPlan(self.seed if seed is None else seed, rate, kinds)

    def queue(self, *kinds: str) -> None:
        """The next requests get exactly these outcomes (`pass` allowed), before any drawn ones."""
        bad = set(kinds) - set(FAULT_KINDS) - {"pass"}
        if bad:
            raise ValueError(f"unknown fault kinds {sorted(bad)}")
        with self._lock:
            self._queued.extend(kinds)

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def reset_counts(self) -> None:
        with self._lock:
            self._counts.clear()

    # ----- internals -----
    def _count(self, what: str, n: int = 1) -> None:
        with self._lock:
            self._counts[what] += n

    def _decide(self) -> str:
        with self._lock:
            return self._queued.popleft() if self._queued else self._plan.next()

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        try:
            self._mode_changed = asyncio.Event()
            self._loop.run_until_complete(self._listen())
        except BaseException as exc:  # reported by start()
            self._failure = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port, reuse_address=True,
                                                  limit=MAX_HEAD, backlog=256)

    async def _set_mode(self, mode: str) -> None:
        previous, self._mode = self._mode, mode
        if mode == "refuse" and self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
            for writer in list(self._clients):
                writer.transport.abort()  # the vendor is gone: open connections die too
        elif mode != "refuse" and previous == "refuse":
            await self._listen()
        self._mode_changed.set()  # wakes held connections, which then close
        self._mode_changed = asyncio.Event()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._clients):
            writer.transport.abort()
        self._mode_changed.set()
        # Aborted connections end their handlers; give them a moment to finish cleanly.
        handlers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        if handlers:
            await asyncio.wait(handlers, timeout=2)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._clients.add(writer)
        self._count("connections")
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            while True:
                if self._mode == "hang":
                    self._count("hung")
                    await self._hold(reader, MAX_HOLD, until_mode=True)
                    return
                try:
                    message = await read_message(reader, request=True)
                except _Closed:
                    self._count("bad_requests")
                    return
                if message is None:
                    return
                raw, first_line = message
                if self._mode == "hang":  # switched while this request was on its way
                    self._count("requests")
                    self._count("hung")
                    await self._hold(reader, MAX_HOLD, until_mode=True)
                    return
                self._count("requests")
                decision = self._decide()
                if decision in ("429", "500"):
                    self._count(decision)
                    await self._answer_error(writer, int(decision))
                    return
                if upstream is None:
                    try:
                        upstream = await asyncio.open_connection(*self.upstream, limit=MAX_HEAD)
                    except OSError:
                        self._count("upstream_refused")
                        return  # the client sees its connection closed, as with a dead vendor
                method = first_line.split(" ", 1)[0].upper()
                upstream[1].write(raw)
                await upstream[1].drain()
                try:
                    answer = await read_message(upstream[0], request=False, method=method)
                except _Closed:
                    answer = None
                if answer is None:
                    self._count("upstream_closed")
                    return
                self._count("forwarded")
                if decision == "close":
                    self._count("close")
                    return  # the vendor answered; the client never hears it
                if decision == "timeout":
                    self._count("timeout")
                    await self._hold(reader, self.hold_seconds)
                    return
                writer.write(answer[0])
                await writer.drain()
                self._count("answered")
                if _wants_close(raw) or _wants_close(answer[0]):
                    return
        except (ConnectionError, OSError):
            self._count("client_reset")
        finally:
            self._clients.discard(writer)
            if upstream is not None:
                upstream[1].close()
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _hold(self, reader: asyncio.StreamReader, seconds: float, *, until_mode: bool = False) -> None:
        """Say nothing for up to `seconds` (or until the mode changes), reading and dropping
        whatever the client sends, until it gives up and closes."""
        deadline = time.monotonic() + min(seconds, MAX_HOLD)
        changed = self._mode_changed
        while (left := deadline - time.monotonic()) > 0:
            read = asyncio.ensure_future(reader.read(65536))
            waits = {read, asyncio.ensure_future(changed.wait())} if until_mode else {read}
            done, pending = await asyncio.wait(waits, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
            if read in done:
                if not read.result():
                    return  # the client gave up
                continue
            return  # held long enough, or the mode changed

    async def _answer_error(self, writer: asyncio.StreamWriter, status: int) -> None:
        body = self.error_body(status)
        reason = {429: "Too Many Requests", 500: "Internal Server Error"}.get(status, "Error")
        extra = "Retry-After: 1\r\n" if status == 429 else ""
        writer.write((f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
                      f"Content-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n").encode() + body)
        await writer.drain()
