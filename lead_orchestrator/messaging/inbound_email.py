"""SendGrid Inbound Parse, read: the form fields SendGrid posts for one received email
turned into an `InboundEmail`. The only module that knows SendGrid's field names.

SendGrid posts multipart/form-data in one of two shapes (a setting of the parse host):
- parsed (default): `headers` (the raw header block), `text`, `html`, `from`, `to`,
  `cc`, `subject`, `envelope` (JSON: `to` list, `from`), `charsets` (JSON: the
  character set of each text field), `attachments` (a count), `attachment-info`,
  `attachment1`… (the files), `dkim`, `SPF`, `spam_score`, `sender_ip`;
- raw ("POST the raw, full MIME message"): `email` (the whole message as received) and
  the same `from`, `to`, `subject`, `envelope`, `charsets`, `dkim`, `SPF`, ….
Fields we do not use are ignored. Also here: the new text of a reply, without the
quoted history under it (mail-parser-reply, which knows the "On … wrote:" lines of the
common mail programs in a dozen languages).
"""
from __future__ import annotations

import codecs
import email
import email.policy
import email.utils
import hashlib
import json
import re
from dataclasses import dataclass
from email.message import Message
from email.parser import BytesParser, HeaderParser
from html.parser import HTMLParser

from lead_orchestrator.domain.contact_points import normalize_email

# Text beyond this is not searched for quoted history (the parser is regex-based) nor kept.
MAX_TEXT_CHARS = 100_000
MAX_REPLY_CHARS = 10_000
# Languages whose reply headers ("On … wrote:", "Am … schrieb:") are recognised; English
# is always included.
REPLY_LANGUAGES = ["en", "es", "fr", "de", "it", "nl", "pl", "sv", "da", "zh", "ko", "ja"]


class InboundEmailError(ValueError):
    """The post is not a readable Inbound Parse post: a 4xx, nothing changes."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


@dataclass(frozen=True)
class InboundEmail:
    sender: str                      # the From address
    sender_name: str | None
    recipients: tuple[str, ...]      # the SMTP envelope's first, then To and Cc
    subject: str
    text: str                        # the whole plain text, quoted history included
    headers: Message                 # the header block
    message_id: str | None
    null_return_path: bool           # the envelope sender is empty: a bounce or notice
    attachments: tuple[str, ...]     # file names
    raw: bool                        # posted as the raw MIME message

    @property
    def message_key(self) -> str:
        """What makes a re-posted message the same message: its Message-ID, or (rare: a
        message without one) a digest of who sent what."""
        if self.message_id:
            return self.message_id[:500]
        digest = hashlib.sha256("\0".join((self.sender, self.subject, self.text)).encode()).hexdigest()
        return f"sha256:{digest}"


def read_parse_post(fields: dict[str, bytes], files: list[str]) -> InboundEmail:
    """`fields`: the form's text fields as posted (bytes); `files`: names of the file
    parts (attachments in parsed mode). Raises InboundEmailError for a post that is not
    an email."""
    charsets = _json_object(fields, "charsets", required=False)
    envelope = _json_object(fields, "envelope", required=False)
    if "email" in fields:
        message = BytesParser(policy=email.policy.default).parsebytes(fields["email"])
        text, attachments = _raw_body(message)
        headers: Message = message
        raw = True
    elif "headers" in fields or "from" in fields:
        headers = HeaderParser(policy=email.policy.default).parsestr(_decoded(fields, "headers", charsets) or "")
        text = _decoded(fields, "text", charsets)
        if text is None:
            text = html_to_text(_decoded(fields, "html", charsets) or "")
        attachments, raw = list(files), False
    else:
        raise InboundEmailError("not_inbound_parse", "neither `email` nor `headers`/`from`: not an Inbound Parse post")

    sender_name, sender = _first_address(_decoded(fields, "from", charsets) or header_text(headers, "From"))
    if sender is None:
        raise InboundEmailError("no_sender", "the email has no valid From address")
    envelope_to = envelope.get("to") if isinstance(envelope.get("to"), list) else []
    recipients = [str(a) for a in envelope_to]
    for name in ("to", "cc"):
        recipients += [addr for _, addr in email.utils.getaddresses([_decoded(fields, name, charsets)
                                                                      or header_text(headers, name)]) if addr]
    envelope_from = envelope.get("from") if "from" in envelope else header_text(headers, "Return-Path")
    return InboundEmail(
        sender=sender, sender_name=sender_name or None,
        recipients=tuple(dict.fromkeys(r.strip() for r in recipients if r and r.strip())),
        subject=(_decoded(fields, "subject", charsets) or header_text(headers, "Subject")).strip(),
        text=(text or "")[:MAX_TEXT_CHARS], headers=headers,
        message_id=header_text(headers, "Message-ID") or None,
        null_return_path=("from" in envelope or "Return-Path" in headers)
        and str(envelope_from or "").strip() in ("", "<>"),
        attachments=tuple(attachments), raw=raw,
    )


def new_text(text: str) -> str:
    """What the customer wrote this time: the text above the quoted history ("On …
    wrote:" and what follows, Outlook's "From: … Sent: …" block, "> " lines)."""
    from mailparser_reply import EmailReplyParser

    text = (text or "")[:MAX_TEXT_CHARS].replace("\r\n", "\n")
    latest = EmailReplyParser(languages=REPLY_LANGUAGES).parse_reply(text)
    lines = (latest if latest is not None else text).rstrip().splitlines()
    # Outlook puts a rule of underscores above its quoted block; the parser leaves it.
    while lines and re.fullmatch(r"\s*[_\-=]{5,}\s*", lines[-1]):
        lines.pop()
    return "\n".join(lines).strip()[:MAX_REPLY_CHARS]


def html_to_text(html: str) -> str:
    """Readable text of an HTML-only email (rare: mail programs send a text part too)."""
    reader = _TextOfHtml()
    reader.feed(html or "")
    reader.close()
    return re.sub(r"\n{3,}", "\n\n", "".join(reader.parts)).strip()


# --- internals --------------------------------------------------------------------------

def _decoded(fields: dict[str, bytes], name: str, charsets: dict) -> str | None:
    """A text field in the character set SendGrid says it is in (`charsets`)."""
    data = fields.get(name)
    if data is None:
        return None
    charset = str(charsets.get(name) or "utf-8")
    try:
        codecs.lookup(charset)
    except LookupError:
        charset = "utf-8"
    return data.decode(charset, errors="replace")


def _json_object(fields: dict[str, bytes], name: str, *, required: bool) -> dict:
    data = fields.get(name)
    if data is None:
        if required:
            raise InboundEmailError("invalid_payload", f"`{name}` is required")
        return {}
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise InboundEmailError("invalid_payload", f"`{name}` is not JSON") from None
    if not isinstance(value, dict):
        raise InboundEmailError("invalid_payload", f"`{name}` is not a JSON object")
    return value


def header_text(headers: Message, name: str) -> str:
    """A header's decoded value, "" when it is missing or cannot be parsed."""
    try:
        value = headers.get(name)
    except (ValueError, IndexError):  # a header the email package cannot parse
        return ""
    return str(value).strip() if value is not None else ""


def _first_address(value: str | None) -> tuple[str | None, str | None]:
    for name, addr in email.utils.getaddresses([value or ""]):
        normalized = normalize_email(addr)
        if normalized:
            return name.strip() or None, normalized
    return None, None


def _raw_body(message: Message) -> tuple[str, list[str]]:
    body = message.get_body(preferencelist=("plain", "html"))
    text = ""
    if body is not None:
        try:
            content = body.get_content()
        except (LookupError, ValueError):  # unknown charset or a broken encoding
            content = body.get_payload(decode=True).decode("utf-8", errors="replace")
        text = html_to_text(content) if body.get_content_subtype() == "html" else content
    return text, [part.get_filename() or part.get_content_type() for part in message.iter_attachments()]


class _TextOfHtml(HTMLParser):
    BLOCKS = {"p", "div", "br", "tr", "li", "h1", "h2", "h3", "h4", "blockquote", "table"}
    SKIP = {"style", "script", "head", "title"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skipping = 0

    def handle_starttag(self, tag, attrs):
        if tag in self.SKIP:
            self._skipping += 1
        elif tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag in self.SKIP:
            self._skipping = max(0, self._skipping - 1)
        elif tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data):
        if not self._skipping:
            self.parts.append(data)
