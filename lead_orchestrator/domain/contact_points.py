"""Phone and email addresses: normalisation used everywhere an address is compared."""
from __future__ import annotations

import phonenumbers

DEFAULT_REGION = "US"


def normalize_phone(raw: str | None, region: str = DEFAULT_REGION) -> str | None:
    """E.164 form of a phone number, or None if it is not a valid number."""
    if not raw:
        return None
    try:
        parsed = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(parsed):
        return None
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def normalize_email(raw: str | None) -> str | None:
    if not raw or "@" not in raw:
        return None
    local, _, domain = raw.strip().rpartition("@")
    if not local or "." not in domain:
        return None
    return f"{local}@{domain.lower()}"
