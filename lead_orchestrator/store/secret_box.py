"""Encryption at rest of the per-shop secrets (ShopMonkey key, webhook secret, Twilio
auth token, SendGrid key) with `cryptography`'s Fernet (AES-128-CBC + HMAC-SHA256).

The keys come from LEAD_ENCRYPTION_KEY (one or more Fernet keys, comma-separated, the
newest first). MultiFernet encrypts with the first key and decrypts with any of them,
which is what makes rotation possible without downtime: deploy "NEW,OLD", re-encrypt
every row (`lead-orchestrator rotate-encryption-key`), then drop OLD.

Stored values carry a prefix, so a value written before encryption existed (plain
text) is told apart from a token with certainty; such values are encrypted by the
migration step (`encrypt_plaintext_secrets`) and still read meanwhile.
"""
from __future__ import annotations

import logging

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from lead_orchestrator import redaction

log = logging.getLogger(__name__)

PREFIX = "fernet:"


class SecretKeyError(RuntimeError):
    """A stored secret cannot be decrypted with the keys in force (the message never
    contains the value)."""


def parse_keys(text: str) -> list[str]:
    keys = [k.strip() for k in text.replace("\n", ",").split(",") if k.strip()]
    if not keys:
        raise SecretKeyError("LEAD_ENCRYPTION_KEY holds no key")
    for position, key in enumerate(keys, 1):
        try:
            Fernet(key)
        except (ValueError, TypeError):
            # Say which one, never what it is.
            raise SecretKeyError(f"encryption key #{position} is not a Fernet key (32 url-safe base64 bytes); "
                                 "generate one with `lead-orchestrator rotate-encryption-key --print-new-key`") from None
    return keys


def new_key() -> str:
    return Fernet.generate_key().decode()


class SecretBox:
    """Encrypts with the first key, decrypts with any; registers every plaintext it
    handles with the log redactor, so that value never reaches a log line."""

    def __init__(self, keys: list[str]):
        self._keys = list(keys)
        for key in self._keys:
            redaction.register(key)
        self._fernet = MultiFernet([Fernet(k) for k in self._keys])
        self._primary_only = Fernet(self._keys[0])

    def __repr__(self) -> str:
        return f"SecretBox({len(self._keys)} key(s))"

    @staticmethod
    def is_encrypted(value: str | None) -> bool:
        return bool(value) and value.startswith(PREFIX)

    def encrypt(self, value: str | None) -> str | None:
        if value is None:
            return None
        redaction.register(value)
        return PREFIX + self._fernet.encrypt(value.encode()).decode()

    def decrypt(self, stored: str | None, *, what: str = "a secret") -> str | None:
        if stored is None:
            return None
        if not self.is_encrypted(stored):
            # Written before encryption at rest; the migration step encrypts it.
            log.warning("%s is still stored in plain text: run `lead-orchestrator migrate`", what)
            value = stored
        else:
            try:
                value = self._fernet.decrypt(stored[len(PREFIX):].encode()).decode()
            except InvalidToken:
                raise SecretKeyError(f"{what} cannot be decrypted with the encryption keys in force "
                                     "(is LEAD_ENCRYPTION_KEY the key it was written with?)") from None
        redaction.register(value)
        return value

    def rotate(self, stored: str) -> str:
        """The same secret under the first key (plain text values get encrypted)."""
        if not self.is_encrypted(stored):
            return self.encrypt(stored)
        try:
            return PREFIX + self._fernet.rotate(stored[len(PREFIX):].encode()).decode()
        except InvalidToken:
            raise SecretKeyError("a stored secret cannot be decrypted with the encryption keys in force") from None

    def readable_with_primary(self, stored: str) -> bool:
        try:
            self._primary_only.decrypt(stored[len(PREFIX):].encode())
            return self.is_encrypted(stored)
        except InvalidToken:
            return False
