"""Loopback endpoints that fail the way networks and vendors do, for the send-outcome
tests: real sockets, so each SDK raises exactly what it raises in production.

- `MisbehavingServer(mode)`: reads each request in full (the vendor got it), then
  closes (`close`), resets (`reset`), never answers (`hang`), or sends half an answer
  (`partial`); `not_tls` answers plain text to a TLS client before any request.
- `refused_url()`: a port nothing listens on.
- `unresponsive_listener()`: a listener whose accept queue is full, so a connect times out.
- `Forwarder(port, target_port)`: a TCP relay started on a port that refused a moment
  ago (a vendor coming back), forwarding to a stand-in.
"""
from __future__ import annotations

import contextlib
import socket
import struct
import threading

from tests.support import free_port


def _read_request(conn: socket.socket) -> None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            return
        body += chunk


class _Listener:
    """A loopback listener whose thread hands each accepted connection to `_handle`
    until `close()`."""

    def __init__(self, port: int = 0):
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", port))
        self._sock.listen(16)
        self._sock.settimeout(0.1)  # accept() wakes up to see the stop flag
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._open: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()
        for conn in self._open:
            conn.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(10)  # accepted sockets would inherit the listener's 0.1 s
            self._open.append(conn)
            self._handle(conn)

    def _handle(self, conn: socket.socket) -> None:
        raise NotImplementedError


class MisbehavingServer(_Listener):
    def __init__(self, mode: str):
        self.mode = mode
        self.requests = 0
        super().__init__()

    def __enter__(self) -> "MisbehavingServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _handle(self, conn: socket.socket) -> None:
        if self.mode == "not_tls":
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            conn.close()
            return
        try:
            _read_request(conn)
        except OSError:
            conn.close()
            return
        self.requests += 1
        if self.mode == "close":
            conn.close()
        elif self.mode == "reset":  # RST instead of FIN
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()
        elif self.mode == "partial":
            conn.sendall(b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 400\r\n\r\n{\"sid\": \"SM")
            conn.close()
        # hang: keep the connection open, never answer


def refused_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


@contextlib.contextmanager
def unresponsive_listener():
    """A URL whose connects time out: the listener's accept queue is full, so the kernel
    drops further SYNs. Yields the URL."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers: list[socket.socket] = []
    try:
        for _ in range(32):
            probe = socket.socket()
            probe.settimeout(0.3)
            try:
                probe.connect(("127.0.0.1", port))
            except (TimeoutError, socket.timeout):
                probe.close()
                break
            fillers.append(probe)
        else:
            raise RuntimeError("could not fill the accept queue")
        yield f"http://127.0.0.1:{port}"
    finally:
        for s in fillers:
            s.close()
        listener.close()


class Forwarder(_Listener):
    """Relays every connection on `port` to `target_port` (both on loopback)."""

    def __init__(self, port: int, target_port: int):
        self._target = target_port
        super().__init__(port)

    def _handle(self, client: socket.socket) -> None:
        client.settimeout(None)
        upstream = socket.create_connection(("127.0.0.1", self._target))
        self._open.append(upstream)
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while chunk := src.recv(65536):
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)
