"""Official Twilio and SendGrid SDK clients, optionally pointed at another base URL
(the local stand-ins, a recording proxy) instead of the vendors' real hosts."""
from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from sendgrid import SendGridAPIClient
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client as TwilioClient

DEFAULT_TIMEOUT = 10.0  # seconds; the SDKs' default is to wait forever


class RedirectingTwilioHttpClient(TwilioHttpClient):
    """The Twilio SDK has no base-URL setting; this HTTP client swaps scheme, host and port
    (and prepends any path prefix) on every request it is handed."""

    def __init__(self, base_url: str, timeout: float = DEFAULT_TIMEOUT, **kwargs) -> None:
        super().__init__(timeout=timeout, **kwargs)
        parts = urlsplit(base_url)
        if not parts.scheme or not parts.netloc:
            raise ValueError(f"base_url needs a scheme and a host: {base_url!r}")
        self._scheme, self._netloc, self._prefix = parts.scheme, parts.netloc, parts.path.rstrip("/")

    def request(self, method, url, *args, **kwargs):
        parts = urlsplit(url)
        url = urlunsplit((self._scheme, self._netloc, self._prefix + parts.path, parts.query, parts.fragment))
        return super().request(method, url, *args, **kwargs)


def make_twilio_client(account_sid: str, auth_token: str, base_url: str | None = None,
                       timeout: float = DEFAULT_TIMEOUT) -> TwilioClient:
    """Edge and region are left unset: they would rewrite the host we point at."""
    http_client = RedirectingTwilioHttpClient(base_url, timeout) if base_url else TwilioHttpClient(timeout=timeout)
    return TwilioClient(account_sid, auth_token, http_client=http_client)


def make_sendgrid_client(api_key: str, base_url: str | None = None,
                         timeout: float = DEFAULT_TIMEOUT) -> SendGridAPIClient:
    client = SendGridAPIClient(api_key=api_key, host=(base_url or "https://api.sendgrid.com").rstrip("/"))
    # Request clients are derived per call from this one and inherit its timeout.
    client.client.timeout = timeout
    return client
