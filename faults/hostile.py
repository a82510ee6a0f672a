"""5,000 hostile requests at the receiver, hand-made and drawn from a seed: bad, missing,
foreign, stale and tampered signatures; bodies that are not JSON, not the right shape,
deeply nested, oversized or not UTF-8; odd shop names and paths, wrong methods, broken
framing; clients that leave mid-body or before the answer; unsigned Twilio and SendGrid
callbacks and garbage unsubscribe tokens; and replays of a delivery already accepted.

While they arrive, a trickle of genuine estimates for another shop must all get through.
Counted: 5xx answers, hostile deliveries accepted, rows written for the attacked shops
(an audit trigger on every tenant table but the poll's own state), and ERROR lines and
tracebacks in the receiver's log.
"""
from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import random
import time
from collections import Counter
from urllib.parse import urlsplit

from faults.common import Context, say
from faults.ledger import Result
from faults.scenario import run_webhook_fault, wait_until
from faults.stack import FaultStack
from faults.traffic import Estimate, WebhookSender, plan_estimates, sign

REQUESTS = 5000
CONCURRENCY = 16
TIME_BUDGET_S = 300.0
LEGIT = 100

AUDIT_SQL = """
CREATE TABLE fault_audit (tenant_id bigint NOT NULL, table_name text NOT NULL, n bigint NOT NULL,
                          PRIMARY KEY (tenant_id, table_name));
CREATE FUNCTION fault_audit_count() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = public, pg_temp AS $$
DECLARE
    changed jsonb := CASE WHEN TG_OP = 'DELETE' THEN to_jsonb(OLD) ELSE to_jsonb(NEW) END;
    tenant bigint := coalesce((changed->>'tenant_id')::bigint,
                              CASE WHEN TG_TABLE_NAME = 'tenants' THEN (changed->>'id')::bigint END, -1);
BEGIN
    INSERT INTO fault_audit VALUES (tenant, TG_TABLE_NAME, 1)
    ON CONFLICT (tenant_id, table_name) DO UPDATE SET n = fault_audit.n + 1;
    RETURN NULL;
END $$;
"""
# poll_state is left out: the poll writes it for every shop every 30 s.
AUDITED = ("tenants", "inbox_events", "leads", "contacts", "touches", "lead_events")

KINDS = ("unsigned", "wrong-secret", "other-shop-secret", "tampered", "stale", "future", "garbage-signature",
         "text-plain", "not-json", "json-array", "data-not-object", "deep-nesting", "huge-body", "invalid-utf8",
         "unknown-shop", "odd-slug", "replay", "leave-mid-body", "leave-before-answer", "partial-headers",
         "bad-content-length", "huge-header", "wrong-method", "twilio-status-unsigned",
         "twilio-inbound-bad-signature", "sendgrid-events-bad-signature", "unsubscribe-garbage", "unknown-path")


class Attack:
    """Builds the raw bytes of each hostile request from a seeded generator."""

    def __init__(self, seed: int, target, other, replay: tuple[dict, bytes]) -> None:
        self.rng = random.Random(seed)
        self.target, self.other = target, other
        self.secret = target.webhook_secret.get_secret_value()
        self.replay_headers, self.replay_body = replay

    def _body(self) -> bytes:
        stamp = dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        return json.dumps({"apiVersion": "3", "operation": "INSERT", "table": "order",
                           "data": {"id": "%024x" % self.rng.getrandbits(96), "status": "Estimate",
                                    "createdDate": stamp, "updatedDate": stamp}}).encode()

    def _signed(self, body: bytes, secret: str | None = None, at: dt.datetime | None = None) -> dict:
        msg_id = "msg_%024x" % self.rng.getrandbits(96)
        text = body.decode("latin-1")  # what a careless sender signs when the body is not UTF-8
        return {**sign(secret or self.secret, msg_id, text.encode("utf-8", "surrogateescape"), at)}

    def build(self, kind: str) -> tuple[bytes, str]:
        """(raw request, how to send it: "answer", "leave" after sending, or "partial")."""
        path = f"/webhooks/shopmonkey/{self.target.slug}"
        body = self._body()
        now = dt.datetime.now(dt.timezone.utc)
        headers: dict[str, str] = {"content-type": "application/json"}
        method, mode = "POST", "answer"
        if kind == "unsigned":
            pass
        elif kind == "wrong-secret":
            headers = self._signed(body, "whsec_" + base64.b64encode(self.rng.randbytes(24)).decode())
        elif kind == "other-shop-secret":
            headers = self._signed(body, self.other.webhook_secret.get_secret_value())
        elif kind == "tampered":
            headers = self._signed(body)
            body = body.replace(b'"Estimate"', b'"Invoice"')
        elif kind in ("stale", "future"):
            skew = dt.timedelta(seconds=self.rng.randint(400, 10**6))
            headers = self._signed(body, at=now - skew if kind == "stale" else now + skew)
        elif kind == "garbage-signature":
            headers = {**self._signed(body), "webhook-signature": "v1," + base64.b64encode(self.rng.randbytes(32)).decode()}
        elif kind == "text-plain":
            headers = {**self._signed(body), "content-type": "text/plain"}
        elif kind in ("not-json", "json-array", "data-not-object", "deep-nesting", "huge-body", "invalid-utf8"):
            body = {"not-json": b'{"operation": "INSERT", "table": "order", "data": {',
                    "json-array": b"[]",
                    "data-not-object": b'{"apiVersion":"3","operation":"INSERT","table":"order","data":"x"}',
                    "deep-nesting": b"[" * 60000 + b"]" * 60000,
                    "huge-body": b'{"operation":"INSERT","table":"order","data":{"id":"big","pad":"'
                                 + b"a" * 600_000 + b'"}}',
                    "invalid-utf8": b'{"operation":"INSERT","table":"order","data":{"id":"\xff\xfe\xfd"}}'}[kind]
            headers = self._signed(body)
        elif kind == "unknown-shop":
            headers = self._signed(body)
            path = f"/webhooks/shopmonkey/no-such-shop-{self.rng.randint(0, 10**6)}"
        elif kind == "odd-slug":
            headers = self._signed(body)
            path = "/webhooks/shopmonkey/" + self.rng.choice(
                ["..%2F..%2Fetc%2Fpasswd", "%00", "a" * 3000, "%27%20OR%201%3D1--", "%E2%80%AE", "UPPER", "-x"])
        elif kind == "replay":
            headers, body = dict(self.replay_headers), self.replay_body
        elif kind == "leave-mid-body":
            headers = self._signed(body)  # the body never arrives whole: nothing can be stored
            raw = _serialize("POST", path, {**headers, "content-length": "20000"}, body, length=False)
            return raw[: len(raw) - len(body) // 2], "partial"
        elif kind == "leave-before-answer":
            # Badly signed: a valid delivery whose sender leaves early is rightly stored.
            headers = self._signed(body, self.other.webhook_secret.get_secret_value())
            mode = "leave"
        elif kind == "partial-headers":
            raw = _serialize("POST", path, self._signed(body), body)
            return raw[: raw.index(b"\r\n\r\n") // 2], "partial"
        elif kind == "bad-content-length":
            return _serialize("POST", path, {**self._signed(body), "content-length": self.rng.choice(
                ["abc", "-1", "1e3", "99999999999999999999"])}, body, length=False), "answer"
        elif kind == "huge-header":
            headers = {"x-pad": "p" * self.rng.randint(20_000, 70_000), "webhook-id": "msg_pad",
                       "webhook-timestamp": str(int(now.timestamp())), "webhook-signature": "v1,AAAA"}
        elif kind == "wrong-method":
            method = self.rng.choice(["GET", "PUT", "DELETE", "PATCH", "OPTIONS"])
            headers = self._signed(body)
        elif kind == "twilio-status-unsigned":
            path = f"/webhooks/twilio/{self.target.slug}/" + self.rng.choice(["status", "inbound"])
            headers = {"content-type": "application/x-www-form-urlencoded"}
            body = b"MessageSid=SM" + b"0" * 32 + b"&MessageStatus=delivered&From=%2B15125550100&Body=STOP"
        elif kind == "twilio-inbound-bad-signature":
            path = f"/webhooks/twilio/{self.target.slug}/inbound"
            headers = {"content-type": "application/x-www-form-urlencoded",
                       "x-twilio-signature": base64.b64encode(self.rng.randbytes(20)).decode()}
            body = b"From=%2B15125550100&To=%2B15125550199&Body=STOP&MessageSid=SM" + b"1" * 32
        elif kind == "sendgrid-events-bad-signature":
            path = f"/webhooks/sendgrid/{self.target.slug}/events"
            headers = {"content-type": "application/json",
                       "x-twilio-email-event-webhook-signature": base64.b64encode(self.rng.randbytes(64)).decode(),
                       "x-twilio-email-event-webhook-timestamp": str(int(now.timestamp()))}
            body = json.dumps([{"email": "dana@example.com", "event": "unsubscribe", "sg_message_id": "x"}]).encode()
        elif kind == "unsubscribe-garbage":
            method = self.rng.choice(["GET", "POST"])
            path = "/unsubscribe/" + self.rng.choice(["x", "a.b.c", "%00", "Zm9v" * 300, "..%2Fadmin"])
            headers, body = {}, b""
        elif kind == "unknown-path":
            method = self.rng.choice(["GET", "POST"])
            path = self.rng.choice(["/admin", "/../../etc/passwd", "/webhooks/other/x", "/webhooks/shopmonkey",
                                    "/%2e%2e/%2e%2e/", "/docs/../openapi.json?x=" + "y" * 5000])
        else:
            raise ValueError(kind)
        return _serialize(method, path, headers, body), mode


def _serialize(method: str, path: str, headers: dict[str, str], body: bytes, *, length: bool = True) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "host: 127.0.0.1", "connection: close", "user-agent: fault-suite"]
    if length:
        lines.append(f"content-length: {len(body)}")
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace") + body


async def _exchange(host: str, port: int, raw: bytes, mode: str, timeout: float = 15.0) -> str:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
    except (OSError, asyncio.TimeoutError):
        return "connect-failed"
    try:
        writer.write(raw)
        try:
            await asyncio.wait_for(writer.drain(), timeout)
        except (ConnectionError, asyncio.TimeoutError):
            pass  # the server may answer (413, 400) and close before reading everything
        if mode in ("leave", "partial"):
            return "client-left"
        line = await asyncio.wait_for(reader.readline(), timeout)
        if not line:
            return "closed-unanswered"
        parts = line.split()
        status = parts[1].decode() if len(parts) > 1 else "garbled"
        try:
            await asyncio.wait_for(reader.read(), timeout)
        except (ConnectionError, asyncio.TimeoutError):
            pass
        return status
    except asyncio.TimeoutError:
        return "no-answer-15s"
    except ConnectionError:
        return "reset"
    finally:
        writer.transport.abort() if mode in ("leave", "partial") else writer.close()


async def _flood(url: str, attack: Attack, count: int) -> tuple[Counter, Counter]:
    parts = urlsplit(url)
    statuses: Counter[str] = Counter()
    by_kind: Counter[str] = Counter()
    deadline = time.monotonic() + TIME_BUDGET_S
    plan = [attack.rng.choice(KINDS) for _ in range(count)]
    queue = iter(plan)

    async def worker() -> None:
        for kind in queue:
            if time.monotonic() > deadline:
                return
            raw, mode = attack.build(kind)
            status = await _exchange(parts.hostname, parts.port, raw, mode)
            statuses[status] += 1
            if status.isdigit() and (status.startswith("5") or (status.startswith("2") and kind != "replay")):
                by_kind[f"{kind} -> {status}"] += 1

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return statuses, by_kind


def _audit(fs) -> Counter:
    with fs.connect() as conn:
        return Counter({(r["tenant_id"], r["table_name"]): r["n"]
                        for r in conn.execute("SELECT tenant_id, table_name, n FROM fault_audit")})


def hostile(ctx: Context) -> Result:
    name = "hostile"
    # The per-shop rate limit would answer most of the flood with 429 before any check
    # runs; it is lifted so that every request reaches the validation it aims at.
    with FaultStack(name, ctx.run_dir, ctx.ports, shops=3, seed=ctx.seed, keep=ctx.keep,
                    env={"WEBHOOK_RATE_LIMIT": "1000000/minute"}) as fs:
        target, other, legit = fs.shops
        with fs.connect() as conn:
            conn.execute(AUDIT_SQL)
            for table in AUDITED:
                conn.execute(f"CREATE TRIGGER fault_audit AFTER INSERT OR UPDATE OR DELETE ON {table} "
                             "FOR EACH ROW EXECUTE FUNCTION fault_audit_count()")
        fs.start()
        # One genuine delivery to the attacked shop, so that replays of it can be tried.
        first = Estimate(target, fs.standins.shopmonkey).create()
        replay_headers = sign(target.webhook_secret.get_secret_value(), first.webhook_id, first.body())
        warmup = WebhookSender(fs.receiver_url).start([first])
        warmup.join(60)
        wait_until(lambda: fs.standins.twilio.messages.items() and fs.standins.sendgrid.sent.items(), 60,
                   "the first touch of the warm-up estimate")
        time.sleep(5)  # its delivery callbacks land before the audit starts
        before = _audit(fs)
        errors_before = _log_errors(fs.log_text("receiver"))
        attack = Attack(ctx.seed, target, other, (replay_headers, first.body()))
        figures: dict = {}
        estimates = plan_estimates(fs, LEGIT, [legit])

        def inject(sender):
            start = time.monotonic()
            say(f"{name}: {REQUESTS} hostile requests, {CONCURRENCY} at a time")
            statuses, flagged = asyncio.run(_flood(fs.receiver_url, attack, REQUESTS))
            figures.update(statuses=statuses, flagged=flagged)
            return start, time.monotonic()

        result, _, _ = run_webhook_fault(ctx, fs, name, f"{REQUESTS} hostile requests while {LEGIT} genuine "
                                         "estimates arrive for another shop", estimates, over_seconds=60,
                                         inject=inject)
        changed = _audit(fs) - before
        hostile_rows = {f"{table} (shop {tenant})": n for (tenant, table), n in changed.items()
                        if tenant != legit.id and n}
        statuses: Counter = figures["statuses"]
        fives = sum(n for s, n in statuses.items() if s.startswith("5"))
        accepted = sum(n for k, n in figures["flagged"].items() if "-> 2" in k)
        log_errors = _log_errors(fs.log_text("receiver")) - errors_before
        result.extra.update(hostile_requests=sum(statuses.values()), hostile_answers=dict(sorted(statuses.items())),
                            hostile_5xx_or_accepted=dict(figures["flagged"]), rows_changed_by_hostile=hostile_rows,
                            receiver_log_error_lines=log_errors)
        result.checks[f"{fives} hostile request(s) answered 5xx"] = fives == 0
        result.checks[f"{accepted} hostile delivery(ies) accepted"] = accepted == 0
        result.checks[f"{sum(hostile_rows.values())} row(s) changed by hostile requests"] = not hostile_rows
        return result


def _log_errors(text: str) -> int:
    return sum(1 for line in text.splitlines() if "ERROR" in line or line.startswith("Traceback"))
