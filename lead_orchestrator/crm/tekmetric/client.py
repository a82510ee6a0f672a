"""HTTP client for one Tekmetric partner app: one client id and secret, many shops.

- Token: `POST /api/v1/oauth/token`, Basic auth with the client id and secret, form body
  `grant_type=client_credentials`. The token stays valid until revoked, so it is kept
  and fetched again only after a 401 — once per request; a second 401 is CrmUnauthorized.
  The answer's `scope` lists the shop ids the app may read.
- Budget: 600 requests a minute for the whole app, all shops together; over it Tekmetric
  answers 429 with an empty body. Requests pass a sliding-window limiter first (570 a
  minute by default, limiter.py), so a burst waits or is refused here instead of there.
  A 429 all the same holds *every* request of this client back for
  `min(2^n s + up to 1 s jitter, 60 s)` (n = 429s in a row), or the Retry-After if one is
  ever sent: the callers get CrmRateLimited at once instead of a storm of 429s.
- Lists are Spring pages: `content`, `last`, `totalPages`; at most 100 rows a page.
- 5xx answers and connection errors are retried a few times within the caller's deadline;
  403 (`{"type": "ERROR", "message": "Access Denied"}`, a shop outside the token's scope)
  is CrmUnauthorized, 404 CrmNotFound.

One client is meant to be shared by every shop and thread of a process (the token and
the hold-back are the app's, not a shop's).
"""
from __future__ import annotations

import random
import threading
import time
from typing import Any, Callable, Iterator

import httpx

from lead_orchestrator.crm.http import HttpClientOwner, retry_after as _retry_after
from lead_orchestrator.crm.tekmetric.budget import BUDGET_PER_MINUTE, safe_per_minute
from lead_orchestrator.crm.tekmetric.limiter import SlidingWindowLimiter
from lead_orchestrator.crm.errors import CrmError, CrmNotFound, CrmRateLimited, CrmUnauthorized, CrmUnavailable

API = "/api/v1"
PAGE_SIZE = 100  # Tekmetric's cap: a larger size is silently cut to 100
MAX_BACKOFF_S = 60.0  # the contract's cap on the wait after a 429
MAX_RETRY_WAIT_S = 30.0  # the longest a 5xx's Retry-After is waited out inside one call
FORM = "application/x-www-form-urlencoded;charset=UTF-8"
Json = dict[str, Any]


class TekmetricClient(HttpClientOwner):
    def __init__(self, base_url: str, client_id: str, client_secret: str, *, timeout: float = 10.0,
                 max_attempts: int = 3, http: httpx.Client | None = None,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                 jitter: Callable[[], float] = random.random, limiter: SlidingWindowLimiter | None = None,
                 requests_per_minute: int | None = safe_per_minute(BUDGET_PER_MINUTE)) -> None:
        """`limiter`: one shared with other clients of the same app; else one of this
        client's own at `requests_per_minute` (None: no limiter)."""
        if not client_id or not client_secret:
            raise ValueError("a Tekmetric partner app needs a client id and a client secret")
        if limiter is None and requests_per_minute is not None:
            limiter = SlidingWindowLimiter(requests_per_minute, clock=clock, sleep=sleep)
        self.limiter = limiter
        self._base = base_url.rstrip("/")
        self._auth = (client_id, client_secret)
        self._use_http(http, timeout)
        self._timeout = timeout
        self._max_attempts = max_attempts
        self._clock, self._sleep, self._jitter = clock, sleep, jitter
        self._token: str | None = None
        self._scope: frozenset[str] = frozenset()
        self._token_lock = threading.Lock()  # one token request at a time, shared by all threads
        self._state_lock = threading.Lock()
        self._held_until = 0.0  # clock() value before which no request is sent (after a 429)
        self._limited_in_a_row = 0
        self.requests_made = 0  # HTTP requests sent, token requests included
        self._thread_counts = threading.local()  # the same, per thread: one scan's own cost
        self.tokens_acquired = 0
        self.rate_limited = 0  # 429 answers received

    # --- public -------------------------------------------------------------------
    def scope(self, *, deadline: float | None = None) -> frozenset[str]:
        """The shop ids the partner app may read (from the token answer)."""
        self._bearer(deadline)
        return self._scope

    def get(self, path: str, params: Json | None = None, *, deadline: float | None = None) -> Any:
        """GET `/api/v1{path}` and its JSON, retrying what is worth retrying."""
        for attempt in range(1, self._max_attempts + 1):
            try:
                return self._get_once(path, params, deadline)
            except CrmRateLimited:
                raise  # a pace for the caller, not something to retry here
            except CrmUnavailable as exc:
                delay = min(exc.retry_after, MAX_RETRY_WAIT_S) if exc.retry_after is not None \
                    else min(0.2 * 2 ** (attempt - 1), 5.0)
                if attempt == self._max_attempts or (deadline is not None and self._clock() + delay >= deadline):
                    raise
                self._sleep(delay)
        raise AssertionError("unreachable")

    def pages(self, path: str, params: Json, *, size: int = PAGE_SIZE,
              deadline: float | None = None) -> Iterator[Json]:
        """Each page of a list, from page 0 until one says `last` (or is empty)."""
        size = max(1, min(size, PAGE_SIZE))
        page = 0
        while True:
            body = self.get(path, {**params, "page": page, "size": size}, deadline=deadline)
            if not isinstance(body, dict) or not isinstance(body.get("content"), list):
                raise CrmError(f"Tekmetric {path}: not a page (no content list)")
            yield body
            total = body.get("totalPages")
            if body.get("last") is True or not body["content"]:
                return
            if isinstance(total, int) and page + 1 >= total:
                return
            if "last" not in body and not isinstance(total, int):
                return  # no way to tell where the list ends: one page is all we trust
            page += 1

    def requests_sent_by_this_thread(self) -> int:
        """Requests this thread has sent through the client: what one scan cost, even
        while other threads use the same client."""
        return getattr(self._thread_counts, "sent", 0)

    # --- one request --------------------------------------------------------------
    def _get_once(self, path: str, params: Json | None, deadline: float | None) -> Any:
        token = self._bearer(deadline)
        response = self._send("GET", path, deadline, params=params, headers=self._headers(token))
        if response.status_code == 401:
            # The token was revoked (or expired after all): fetch a new one, once.
            self._forget(token)
            token = self._bearer(deadline)
            response = self._send("GET", path, deadline, params=params, headers=self._headers(token))
            if response.status_code == 401:
                raise CrmUnauthorized(f"Tekmetric {path}: a fresh token was refused too (HTTP 401)", 401)
        return self._answer(path, response)

    @staticmethod
    def _headers(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}", "Accept": "application/json"}

    def _send(self, method: str, path: str, deadline: float | None, **kwargs) -> httpx.Response:
        self._hold_back()
        if self.limiter is not None:
            self.limiter.acquire(deadline)
        timeout = self._timeout
        if deadline is not None:
            timeout = min(timeout, deadline - self._clock())
            if timeout <= 0:
                raise CrmUnavailable(f"Tekmetric {path}: time budget exhausted")
        with self._state_lock:
            self.requests_made += 1
        self._thread_counts.sent = self.requests_sent_by_this_thread() + 1
        try:
            response = self._http.request(method, self._base + API + path, timeout=timeout, **kwargs)
        except (httpx.TimeoutException, httpx.TransportError) as exc:
            raise CrmUnavailable(f"Tekmetric {path}: {type(exc).__name__}") from exc
        if response.status_code == 429:
            limited = self._limited(path, response)
            # A limiter shared by the app's processes (crm/app_budget.py) holds them all back.
            report = getattr(self.limiter, "rate_limited", None)
            if report is not None:
                report(limited.retry_after)
            raise limited
        with self._state_lock:
            self._limited_in_a_row = 0
        return response

    def _answer(self, path: str, response: httpx.Response) -> Any:
        status = response.status_code
        if status == 403:
            raise CrmUnauthorized(f"Tekmetric {path}: access denied (HTTP 403; is the shop still connected "
                                  f"to the partner app?) {_message(response)}".strip(), 403)
        if status == 404:
            raise CrmNotFound(f"Tekmetric {path}: not found", 404)
        if status >= 500:
            raise CrmUnavailable(f"Tekmetric {path}: HTTP {status}", status, _retry_after(response))
        if status >= 300:
            raise CrmError(f"Tekmetric {path}: HTTP {status} {_message(response)}".strip(), status)
        try:
            return response.json()
        except ValueError:
            raise CrmError(f"Tekmetric {path}: HTTP {status} with a body that is not JSON", status) from None

    # --- the app-wide hold-back after a 429 ---------------------------------------
    def _hold_back(self) -> None:
        with self._state_lock:
            wait = self._held_until - self._clock()
        if wait > 0:
            raise CrmRateLimited(f"Tekmetric: partner app over its request budget; holding back {wait:.1f}s",
                                 None, retry_after=wait)

    def _limited(self, path: str, response: httpx.Response) -> CrmRateLimited:
        with self._state_lock:
            self.rate_limited += 1
            self._limited_in_a_row += 1
            wait = _retry_after(response)
            if wait is None:
                wait = min(2.0 ** self._limited_in_a_row + self._jitter(), MAX_BACKOFF_S)
            self._held_until = max(self._held_until, self._clock() + wait)
        return CrmRateLimited(f"Tekmetric {path}: HTTP 429 (partner app over its request budget)", 429,
                              retry_after=wait)

    # --- token --------------------------------------------------------------------
    def _bearer(self, deadline: float | None) -> str:
        with self._token_lock:
            if self._token is None:
                self._token, self._scope = self._acquire(deadline)
            return self._token

    def _forget(self, token: str) -> None:
        with self._token_lock:
            if self._token == token:  # another thread may have replaced it already
                self._token = None

    def _acquire(self, deadline: float | None) -> tuple[str, frozenset[str]]:
        path = "/oauth/token"
        response = self._send("POST", path, deadline, auth=self._auth, content=b"grant_type=client_credentials",
                              headers={"Content-Type": FORM, "Accept": "application/json"})
        if response.status_code in (400, 401):
            raise CrmUnauthorized(f"Tekmetric refused the partner app's credentials (HTTP {response.status_code} "
                                  f"{_oauth_error(response)})", response.status_code)
        body = self._answer(path, response)
        token = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise CrmError(f"Tekmetric {path}: no access_token in the answer")
        if str(body.get("token_type", "bearer")).lower() != "bearer":
            raise CrmError(f"Tekmetric {path}: token type {body.get('token_type')!r}, not bearer")
        scope = body.get("scope")
        with self._state_lock:
            self.tokens_acquired += 1
        return token, frozenset(scope.split()) if isinstance(scope, str) else frozenset()


def _json(response: httpx.Response) -> Json:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _message(response: httpx.Response) -> str:
    message = _json(response).get("message")
    return message if isinstance(message, str) else ""


def _oauth_error(response: httpx.Response) -> str:
    error = _json(response).get("error")
    return error if isinstance(error, str) else "no error code"
