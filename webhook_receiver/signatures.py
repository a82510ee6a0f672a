"""Standard Webhooks signature check for ShopMonkey deliveries, with the library.

ShopMonkey's secret may be a Standard Webhooks `whsec_<base64>` key or, as one
verifier treats it, raw bytes: both forms are tried (each compare is constant-time).
"""
from __future__ import annotations

import binascii
from functools import lru_cache

from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError


class BadSignature(Exception):
    pass


@lru_cache(maxsize=1024)
def verifiers(secret: str) -> tuple[Webhook, ...]:
    found = []
    try:
        found.append(Webhook(secret))
    except (binascii.Error, ValueError, Exception):  # not base64: only the raw form applies
        pass
    found.append(Webhook(secret.encode()))
    return tuple(found)


# The headers the check reads. Given all of a request's headers, the library turns every
# one into text and keeps the last of each name; signed_headers() hands it these three
# only, picked the same way (ASGI servers give header names in lower case).
_SIGNED = {b"webhook-id": "webhook-id", b"webhook-timestamp": "webhook-timestamp",
           b"webhook-signature": "webhook-signature"}


def signed_headers(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """The signature's headers from an ASGI scope's raw header list."""
    return {_SIGNED[name]: value.decode("latin-1") for name, value in raw if name in _SIGNED}


def verify_standard_webhook(secret: str, body: bytes | str, headers) -> None:
    """Raises BadSignature unless one `v1,` signature matches and the timestamp is
    within five minutes of now. `body`: the bytes, or their UTF-8 text (saves the
    library decoding them again)."""
    last = "no matching signature"
    for webhook in verifiers(secret):
        try:
            webhook.verify(body, headers, json_parse=False)
            return
        except WebhookVerificationError as exc:
            last = str(exc)
            if "timestamp" in last.lower() or "headers" in last.lower():
                break  # the same for every key form
        except (ValueError, binascii.Error, UnicodeDecodeError):
            last = "malformed webhook-signature header"
            break
    raise BadSignature(last)
