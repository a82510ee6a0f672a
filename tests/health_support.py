"""Builds a shop's history row by row, as ingest, the touch engine and the receiver leave
it, for the tests of figures, checks, history points and reports."""
from __future__ import annotations

import datetime as dt
import itertools
import json
import uuid

from psycopg.types.json import Jsonb

UTC = dt.timezone.utc
_orders = itertools.count(1)


def add_lead(db, shop, *, created: dt.datetime | None, first_seen: dt.datetime, source: str = "webhook",
             status: str = "active", reason: str | None = None, sent_after_s: float | None = None,
             channels: tuple[str, ...] = ("sms", "email"), delivered: bool = False, bounced: bool = False,
             deferred: bool = False, first_step_status: str | None = None) -> int:
    """A lead and its step-0 touches. `sent_after_s`: the first touch went out that many
    seconds after the estimate's creation (None: not sent). `deferred`: quiet hours
    deferred step 0 when it was planned. `first_step_status` overrides the touches'
    status (e.g. 'skipped' for a lead with no usable contact)."""
    with db.tenant_tx(shop.id) as conn:
        lead_id = conn.execute(
            """INSERT INTO leads (tenant_id, order_id, status, status_reason, source, order_created_at,
                                  first_seen_at, phone_e164, email)
               VALUES (current_tenant_id(), %s, %s, %s, %s, %s, %s, '+13125550000', 'x@example.com')
               RETURNING id""",
            (f"ord-{next(_orders)}-{uuid.uuid4().hex[:6]}", status, reason, source, created, first_seen),
        ).fetchone()["id"]
        base = created or first_seen
        sent_at = base + dt.timedelta(seconds=sent_after_s) if sent_after_s is not None else None
        for channel in channels:
            touch_status = first_step_status or ("sent" if sent_at else "scheduled")
            delivery = ("bounce" if bounced and channel == "email" else "delivered" if delivered else None)
            conn.execute(
                """INSERT INTO touches (tenant_id, lead_id, step, channel, status, due_at, send_after, to_address,
                                        sent_at, reserved_at, delivery_status)
                   VALUES (current_tenant_id(), %s, 0, %s, %s, %s, %s, 'addr', %s, %s, %s)""",
                (lead_id, channel, touch_status, first_seen, sent_at or first_seen, sent_at, sent_at, delivery),
            )
        if deferred:
            conn.execute(
                "INSERT INTO lead_events (tenant_id, lead_id, at, kind, detail) "
                "VALUES (current_tenant_id(), %s, %s, 'touch_deferred', %s)",
                (lead_id, first_seen, Jsonb({"step": 0, "channel": channels[0], "reason": "quiet_hours"})),
            )
    return lead_id


def add_event(db, shop, *, status: str, received_at: dt.datetime, changed_at: dt.datetime | None = None,
              error: str | None = None, processed_at: dt.datetime | None = None) -> int:
    with db.tenant_tx(shop.id) as conn:
        return conn.execute(
            """INSERT INTO inbox_events (tenant_id, source, dedup_key, operation, table_name, object_id, payload,
                                         received_at, status, error, status_changed_at, processed_at)
               VALUES (current_tenant_id(), 'webhook', %s, 'INSERT', 'order', 'o1', '{}', %s, %s, %s, %s, %s)
               RETURNING id""",
            (uuid.uuid4().hex, received_at, status, error, changed_at or received_at, processed_at),
        ).fetchone()["id"]


def set_poll_state(db, shop, *, health: str, error: str | None, last_success: dt.datetime | None) -> None:
    with db.tenant_tx(shop.id) as conn:
        conn.execute(
            """INSERT INTO poll_state (tenant_id, health, last_error, last_success_at, consecutive_errors)
               VALUES (current_tenant_id(), %s, %s, %s, 3)
               ON CONFLICT (tenant_id) DO UPDATE SET health = EXCLUDED.health, last_error = EXCLUDED.last_error,
                   last_success_at = EXCLUDED.last_success_at""",
            (health, error, last_success),
        )


class CaptureServer:
    """A local HTTP endpoint that records every JSON body POSTed to it (an alert webhook)."""

    def __init__(self, status: int = 200):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.posts: list[dict] = []
        self.status = status
        capture = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - the http.server API
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                capture.posts.append({"path": self.path, "content_type": self.headers.get("Content-Type"),
                                      "json": json.loads(body or b"null")})
                self.send_response(capture.status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hook/T000/B000/secret-token-xyz"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> "CaptureServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def texts(self) -> list[str]:
        return [p["json"]["text"] for p in self.posts]
