"""Keeps known secret values out of every log line the process writes.

Secrets are SecretStr in memory, so they print as '**********'; this is the second
line of defence for the places where a plain value slips through anyway (an SDK's
exception message, an f-string in an error path). Every secret the process decrypts
or loads is registered here, and a LogRecord factory replaces those values in the
message, its arguments and the formatted traceback of every record, whichever logger
or handler (Dagster's, uvicorn's, pytest's) later writes it.

The factory runs only for records that pass the level check, so the cost is one regex
search per emitted line. The regex is rebuilt lazily, at the first use after a new
secret: registering is on the hot path (every shop load decrypts its secrets), and
rebuilding an alternation of a few hundred secrets on each of them cost the dispatcher
a fifth of its CPU at the start of a burst (py-spy; BENCHMARKS.md).
"""
from __future__ import annotations

import logging
import re
import sys
import threading
import traceback
from contextlib import contextmanager
from typing import Iterator

MASK = "[REDACTED]"
# Shorter values would mask ordinary words; real keys and tokens are far longer.
MIN_SECRET_LENGTH = 8

_lock = threading.Lock()
_secrets: set[str] = set()
_pattern: re.Pattern[str] | None = None
_pattern_covers = 0  # how many secrets _pattern was built from
_installed = False


def register(value: str | None) -> None:
    """Adds a value to redact (and installs the log record factory on first use)."""
    if not value or len(value) < MIN_SECRET_LENGTH or value in _secrets:
        return
    with _lock:
        _secrets.add(value)
    install()


def _current_pattern() -> re.Pattern[str] | None:
    global _pattern, _pattern_covers
    if _pattern_covers != len(_secrets):  # secrets are only ever added
        with _lock:
            if _pattern_covers != len(_secrets):
                # Longest first, so a secret that contains another is masked whole.
                ordered = sorted(_secrets, key=len, reverse=True)
                _pattern = re.compile("|".join(re.escape(s) for s in ordered))
                _pattern_covers = len(ordered)
    return _pattern


def redact(text: str) -> str:
    pattern = _current_pattern()
    if pattern is None or not text:
        return text
    return pattern.sub(MASK, text)


def contains_secret(text: str) -> bool:
    pattern = _current_pattern()
    return bool(pattern and text and pattern.search(text))


def install() -> None:
    """Wraps the LogRecord factory, and the hooks that print uncaught exceptions, once
    per process."""
    global _installed
    with _lock:
        if _installed:
            return
        previous = logging.getLogRecordFactory()

        def factory(*args, **kwargs) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            _scrub(record)
            return record

        logging.setLogRecordFactory(factory)

        def print_redacted(exc_type, exc, tb) -> None:
            sys.stderr.write(redact("".join(traceback.format_exception(exc_type, exc, tb))))

        sys.excepthook = print_redacted
        threading.excepthook = lambda args: print_redacted(args.exc_type, args.exc_value, args.exc_traceback)
        _installed = True


class RedactedError(RuntimeError):
    """Stands in for an exception whose message held a secret."""


@contextmanager
def redacted_errors() -> Iterator[None]:
    """Re-raises an exception whose text holds a known secret as a RedactedError with
    the secret masked. For code whose exceptions are stored by someone else (Dagster
    keeps a failed step's error in its event log and shows it in the UI)."""
    try:
        yield
    except Exception as exc:
        text = "".join(traceback.format_exception(exc))
        if contains_secret(text):
            raise RedactedError(redact(f"{type(exc).__name__}: {exc}")) from None
        raise


def _scrub(record: logging.LogRecord) -> None:
    if not _secrets:
        return
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - a bad format string is the handler's problem, not ours
        return
    if contains_secret(message):
        # Masked in the arguments where the secret is one of them, so that formatters
        # that read the arguments themselves keep working (uvicorn's access log unpacks
        # five: client, method, path, version, status; a Tekmetric webhook's path holds
        # the shop's token); otherwise the whole message is replaced.
        args = record.args
        if isinstance(args, tuple) and args and not contains_secret(str(record.msg)):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in args)
            if not contains_secret(record.getMessage()):
                return _scrub_traceback(record)
        record.msg, record.args = redact(message), ()
    _scrub_traceback(record)


def _scrub_traceback(record: logging.LogRecord) -> None:
    if record.exc_info and record.exc_info[1] is not None:
        text = logging.Formatter().formatException(record.exc_info)
        if contains_secret(text):
            # Formatters reuse exc_text when it is set, so the raw traceback is never printed.
            record.exc_text = redact(text)


class RedactingFilter(logging.Filter):
    """For handlers configured elsewhere (e.g. a logging config file): the same scrub
    for records created before the factory was installed."""

    def filter(self, record: logging.LogRecord) -> bool:
        _scrub(record)
        return True
