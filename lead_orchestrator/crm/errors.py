"""The errors a CRM adapter raises, named for what the caller must do, not for the CRM:
the retry and parking rules (retry_policy.py) are written once against these."""
from __future__ import annotations


class CrmError(RuntimeError):
    """Something went wrong that is not one of the cases below (e.g. a malformed answer):
    treated as unexpected, retried a few times, then dead-lettered with its reason."""

    # Requests the failed call had made, retries included, when its adapter counted them
    # (a scan that failed before reading anything still cost requests).
    requests: int | None = None

    def __init__(self, message: str, status: int | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after  # seconds, when the CRM (or our pacer) said how long


class CrmUnauthorized(CrmError):
    """The shop's credentials were refused (401/403): park until they are fixed."""


class CrmNotFound(CrmError):
    """The object does not exist (any more)."""


class CrmUnavailable(CrmError):
    """The CRM could not be reached or failed (connection, timeout, 5xx): retry for as
    long as the lead could still qualify."""


class CrmRateLimited(CrmUnavailable):
    """The CRM (or our own pacer) says: not now. A pace, not a failure: it never spends
    an attempt."""
