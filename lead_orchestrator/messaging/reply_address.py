"""A lead's reply address: `reply+<tenant>-<lead>-<signature>@<inbound parse domain>`.

Every email carries it as Reply-To, so the customer's answer reaches SendGrid Inbound
Parse, which posts it to the receiver; the address alone says which lead it answers.
The signature (itsdangerous, HMAC with the app secret and a salt of its own, so an
unsubscribe token can never pass for a reply address or the reverse) makes the address
unguessable: nobody can stop another customer's sequence by writing to a made-up one.

Two constraints shape the text:
- RFC 5321 allows 64 characters in a local part; ids in base 36 and a 20-byte HMAC in
  base 32 make at most ~52 (`MAX_LOCAL_PART` is checked when one is made).
- Local parts are case-sensitive in principle, but some mail systems lowercase
  addresses, so everything in it is lowercase and read without regard to case (base 32,
  not base 64).
"""
from __future__ import annotations

import base64
import binascii

from itsdangerous import Signer
from itsdangerous.encoding import base64_decode, base64_encode

PREFIX = "reply+"
SALT = "email-reply-address"
MAX_LOCAL_PART = 64
_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


def _base36(number: int) -> str:
    if number < 0:
        raise ValueError("ids are positive")
    text = ""
    while True:
        number, digit = divmod(number, 36)
        text = _DIGITS[digit] + text
        if number == 0:
            return text


def _signer(secret_key: str | list[str]) -> Signer:
    return Signer(secret_key, salt=SALT)


def reply_local_part(secret_key: str, tenant_id: int, lead_id: int) -> str:
    payload = f"{_base36(tenant_id)}-{_base36(lead_id)}"
    mac = base64_decode(_signer(secret_key).get_signature(payload))
    local = f"{PREFIX}{payload}-{base64.b32encode(mac).decode().rstrip('=').lower()}"
    if len(local) > MAX_LOCAL_PART:  # ids beyond 10^12: not reachable, but never send a bad address
        raise ValueError(f"reply address local part would be {len(local)} characters")
    return local


def reply_address(secret_key: str, domain: str, tenant_id: int, lead_id: int) -> str:
    return f"{reply_local_part(secret_key, tenant_id, lead_id)}@{domain}"


def read_reply_address(secret_key: str | list[str], domain: str, address: str) -> tuple[int, int] | None:
    """(tenant_id, lead_id) named by a reply address of `domain` with a good signature;
    None for any other address, a forged or altered one."""
    local, at, host = (address or "").strip().strip("<>").rpartition("@")
    if not at or host.lower().rstrip(".") != domain.lower() or not local.lower().startswith(PREFIX):
        return None
    parts = local[len(PREFIX):].lower().split("-")
    if len(parts) != 3 or not all(parts):
        return None
    tenant, lead, signature = parts
    try:
        tenant_id, lead_id = int(tenant, 36), int(lead, 36)
        mac = base64.b32decode(signature.upper() + "=" * (-len(signature) % 8))
    except (ValueError, binascii.Error):
        return None
    # The ids must be written as we write them (no leading zeros), so one lead has one address.
    if f"{_base36(tenant_id)}-{_base36(lead_id)}" != f"{tenant}-{lead}":
        return None
    if not _signer(secret_key).verify_signature(f"{tenant}-{lead}", base64_encode(mac)):
        return None
    return tenant_id, lead_id


def is_reply_address(domain: str, address: str) -> bool:
    """Looks like one of ours (before checking the signature)."""
    local, _, host = (address or "").strip().strip("<>").rpartition("@")
    return host.lower().rstrip(".") == domain.lower() and local.lower().startswith(PREFIX)
