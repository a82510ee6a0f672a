"""The HTTP client every CRM adapter talks through.

Building an `httpx.Client` builds a TLS context, and loading the CA bundle into it costs
about 35 ms of CPU. The dispatcher builds a client per shop, and it builds them at the
start of a burst, when every millisecond counts: a profile of the 1,000-estimate burst
put 30 % of the dispatcher's CPU there. One context, built once per process and shared
read-only, costs 0.1 ms per client instead.
"""
from __future__ import annotations

import ssl
import threading
from typing import Self

import certifi
import httpx

_context: ssl.SSLContext | None = None
_lock = threading.Lock()


def tls_context() -> ssl.SSLContext:
    """The process's TLS context: the certifi CA bundle, as httpx's default uses."""
    global _context
    with _lock:
        if _context is None:
            _context = ssl.create_default_context(cafile=certifi.where())
        return _context


def http_client(timeout: float) -> httpx.Client:
    return httpx.Client(timeout=timeout, verify=tls_context())


def retry_after(response: httpx.Response) -> float | None:
    """A 429's or 503's Retry-After in seconds (the delta form both CRMs send), or None."""
    value = response.headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


class HttpClientOwner:
    """What every CRM client does with its connection pool: use the caller's (the poll
    shares one across shops, and closes it) or open its own, and close only its own."""

    def _use_http(self, http: httpx.Client | None, timeout: float) -> None:
        self._http = http or http_client(timeout)
        self._owns_http = http is None

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
