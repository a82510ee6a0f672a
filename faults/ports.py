"""Ports for everything the suite starts, taken from one range (9700-9799 by default), so
the suite never collides with a developer's running stack or the test session."""
from __future__ import annotations

import socket


class PortRange:
    def __init__(self, first: int = 9700, last: int = 9799) -> None:
        if not 1024 <= first <= last <= 65535:
            raise ValueError(f"bad port range {first}-{last}")
        self.first, self.last = first, last
        self._next = first

    def __call__(self) -> int:
        """The next port of the range that can be bound now (wrapping around once)."""
        size = self.last - self.first + 1
        for _ in range(size):
            port = self._next
            self._next = self.first + (self._next - self.first + 1) % size
            if _bindable(port):
                return port
        raise RuntimeError(f"no free port left in {self.first}-{self.last}")


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As the servers bind: a port whose old connections linger in TIME_WAIT is fine.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
