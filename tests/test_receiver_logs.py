"""The receiver's log stays readable under hostile traffic: a client that hangs up in the
middle of its request is one INFO line, not an ERROR with a traceback."""
from __future__ import annotations

import logging
import socket

import pytest

from tests.support import ThreadedServer, wait_for


@pytest.fixture
def own_receiver(settings, db):
    from webhook_receiver.main import create_app

    with ThreadedServer(create_app(settings, db)) as server:
        yield server


def hang_up_mid_body(server, path: str, content_type: str) -> None:
    """Announces a 1,000-byte body, sends 10 bytes of it, and closes the connection."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall((f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
                      "Content-Length: 1000\r\n\r\n").encode() + b'{"apiVersi')


def receiver_records(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith(("webhook_receiver", "uvicorn"))]


@pytest.mark.parametrize("route", ["hot", "framework"])
def test_a_client_that_disconnects_mid_body_is_one_info_line(route, own_receiver, make_shop, caplog):
    shop = make_shop()
    path, content_type = {
        # Served ahead of FastAPI (hot_route.py) ...
        "hot": (f"/webhooks/shopmonkey/{shop.slug}", "application/json"),
        # ... and through FastAPI's own stack.
        "framework": (f"/webhooks/sendgrid/{shop.slug}/events", "application/json"),
    }[route]
    with caplog.at_level(logging.DEBUG):
        hang_up_mid_body(own_receiver, path, content_type)
        wait_for(lambda: any("disconnected" in r.getMessage() for r in receiver_records(caplog)),
                 timeout=10, message="the disconnect in the log")
    records = receiver_records(caplog)
    assert [r for r in records if r.levelno >= logging.WARNING] == [], [r.getMessage() for r in records]
    gone = [r for r in records if "disconnected" in r.getMessage()]
    assert len(gone) == 1 and gone[0].levelno == logging.INFO and gone[0].exc_info is None
    assert path in gone[0].getMessage()
