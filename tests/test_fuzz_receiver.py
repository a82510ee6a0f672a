"""Fuzzing the receiver over real HTTP, on a database of its own:

- schemathesis generates requests (valid and invalid) from the receiver's own
  /openapi.json, aimed at a real shop and, for some, correctly signed;
- hypothesis generates hostile deliveries: wrong types, huge and deeply nested JSON,
  invalid UTF-8, NaN/1e999/NUL/lone surrogates, SQL and template injection strings,
  missing, wrong, garbage, other-shop and tampered signatures, replayed, stale and
  future timestamps, wrong content types, odd shop names.

Every case must answer below 500 with the one error body when it fails, never accept
a delivery whose signature was not valid for that shop, and change no row unless it
was accepted (an audit trigger counts every row written to the tenant tables).

FUZZ_EXAMPLES sets the cases per test (default 150, so the default suite stays fast);
`FUZZ_EXAMPLES=5000 pytest tests/test_fuzz_receiver.py -s` is the 10,000-case run
recorded in docs/security.md; FUZZ_REPORT=path.json writes its figures.
"""
from __future__ import annotations

import base64
import datetime as dt
import json
import os
import time
import uuid
from collections import Counter

import httpx
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st
from standardwebhooks import Webhook

from tests.conftest import TENANT_TABLES, scratch_database
from tests.support import session_box, ThreadedServer

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
# The default suite draws the same cases every run (CI must not turn red by chance);
# a dedicated run (FUZZ_EXAMPLES set) explores new ones each time.
HYPOTHESIS = hsettings(max_examples=EXAMPLES, deadline=None, database=None, print_blob=True,
                       derandomize="FUZZ_EXAMPLES" not in os.environ,
                       suppress_health_check=list(HealthCheck))

STATS: dict[str, Counter] = {}
TIMES: dict[str, float] = {}


@pytest.fixture(scope="module")
def fuzz(pg, settings, tmp_path_factory):
    """A migrated database of its own with two shops, an audit counter of row changes
    in every tenant table, and a receiver on it (rate limit out of the way)."""
    with scratch_database(pg, "fuzz") as url:
        yield from _fuzz_setup(url, settings)


def _fuzz_setup(url: str, settings):
    from lead_orchestrator.store.db import Database
    from lead_orchestrator.store.shops import ShopChanges, create_shop
    from webhook_receiver.main import create_app

    admin = psycopg.connect(url, autocommit=True, row_factory=psycopg.rows.dict_row)
    admin.execute("CREATE TABLE fuzz_audit (n bigint NOT NULL); INSERT INTO fuzz_audit VALUES (0);")
    admin.execute("""CREATE FUNCTION fuzz_count() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
                     SET search_path = public, pg_temp AS $$ BEGIN UPDATE fuzz_audit SET n = n + 1; RETURN NULL; END $$""")
    for table in TENANT_TABLES:
        admin.execute(f"CREATE TRIGGER fuzz_audit AFTER INSERT OR UPDATE OR DELETE ON {table} "
                      "FOR EACH ROW EXECUTE FUNCTION fuzz_count()")
    shops = []
    for slug in ("fuzz-shop", "other-shop"):
        secret = "whsec_" + base64.b64encode(os.urandom(24)).decode()
        shops.append(create_shop(admin, slug, slug, ShopChanges(
            webhook_secret=secret, sendgrid_api_key="SG.fuzz-key-0123456789abcdef", sendgrid_sender="service@fuzz.example",
            postal_address="1 Fuzz St, Austin, TX 78701"), session_box()))  # an active shop must be able to send
    db = Database(url, max_size=8, name="fuzz", box=session_box()).open()
    app = create_app(settings.model_copy(update={"webhook_rate_limit": "1000000/second"}), db)
    with ThreadedServer(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        yield {"server": server, "client": client, "admin": admin, "shop": shops[0], "other": shops[1]}
    db.close()
    admin.close()


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    if not STATS:
        return
    figures = {name: {"cases": sum(v for k, v in c.items() if k.isdigit()) + c["unsendable"],
                      "5xx": c["5xx"], "accepted": c["accepted"], "unsendable": c["unsendable"],
                      "seconds": round(TIMES.get(name, 0), 1),
                      "statuses": {k: v for k, v in sorted(c.items()) if k.isdigit()},
                      "aims": {k[4:]: v for k, v in sorted(c.items()) if k.startswith("aim ")}}
               for name, c in STATS.items()}
    figures["total"] = {"cases": sum(f["cases"] for f in figures.values()),
                        "5xx": sum(f["5xx"] for f in figures.values()),
                        "seconds": round(sum(TIMES.values()), 1)}
    print("\nfuzz figures:", json.dumps(figures, indent=1))
    if os.environ.get("FUZZ_REPORT"):
        with open(os.environ["FUZZ_REPORT"], "w") as handle:
            json.dump(figures, handle, indent=1)


def audit(fuzz) -> int:
    return fuzz["admin"].execute("SELECT n FROM fuzz_audit").fetchone()["n"]


def exchange(fuzz, stats: Counter, method: str, path: str, *, headers: dict, content: bytes,
             params: dict | None = None, signed_for_real_shop: bool = False, note: str = "") -> httpx.Response | None:
    """Sends one case and checks everything that must hold for every case."""
    before = audit(fuzz)
    try:
        response = fuzz["client"].request(method, path, headers=headers, content=content, params=params)
    except (httpx.LocalProtocolError, UnicodeEncodeError):
        stats["unsendable"] += 1  # not expressible as HTTP (e.g. a newline in a header)
        return None
    after = audit(fuzz)
    status = response.status_code
    stats[str(status)] += 1
    if status >= 500:
        stats["5xx"] += 1
    assert status < 500, f"{method} {path} -> {status}: {response.text[:500]}"
    if status >= 400:
        error = response.json()["error"]
        assert isinstance(error["code"], str) and isinstance(error["message"], str)
        assert after == before, f"rejected request ({status}) changed {after - before} row(s)"
    elif status == 202:
        assert signed_for_real_shop, f"accepted a delivery not validly signed for that shop: {note} {path} {headers}"
        assert after > before
        stats["accepted"] += 1
    elif status == 200 and path.startswith("/webhooks/"):
        assert signed_for_real_shop and after == before, f"duplicate: {note} {path} {headers}"
    return response


def sign(secret: str, body: bytes, *, msg_id: str | None = None, at: dt.datetime | None = None) -> dict[str, str]:
    msg_id = msg_id or "msg_" + uuid.uuid4().hex
    at = at or dt.datetime.now(dt.timezone.utc)
    # The library signs text; a body that is not UTF-8 gets signed over its latin-1 reading,
    # which is not what the receiver verifies: it must still fail cleanly.
    text = body.decode("utf-8", errors="surrogateescape") if _is_utf8(body) else body.decode("latin-1")
    return {"webhook-id": msg_id, "webhook-timestamp": str(int(at.timestamp())),
            "webhook-signature": Webhook(secret).sign(msg_id, at, text)}


def _is_utf8(body: bytes) -> bool:
    try:
        body.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


# --- 1. schemathesis, from the receiver's own OpenAPI document ----------------------

def test_schemathesis_cases_from_the_receivers_openapi(fuzz):
    import schemathesis
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

    schema = schemathesis.openapi.from_url(f"{fuzz['server'].url}/openapi.json")
    cases = st.one_of(schema.as_strategy(generation_mode=GenerationMode.POSITIVE),
                      schema.as_strategy(generation_mode=GenerationMode.NEGATIVE))
    stats = STATS.setdefault("schemathesis", Counter())
    shop = fuzz["shop"]
    secret = shop.webhook_secret.get_secret_value()

    @HYPOTHESIS
    # Hypothesis favours the first choice: most cases should get past the shop lookup.
    @given(case=cases, aim=st.sampled_from(["real shop, signed", "real shop", "as generated"]))
    def run(case, aim):
        real = aim != "as generated" and "tenant" in (case.path_parameters or {})
        if real:
            case.path_parameters["tenant"] = shop.slug
        kwargs = case.as_transport_kwargs(base_url=fuzz["server"].url)
        headers = {k: v for k, v in kwargs.get("headers", {}).items() if k.lower() != "content-length"}
        if "json" in kwargs:
            content = json.dumps(kwargs["json"]).encode()
            headers.setdefault("Content-Type", "application/json")
        else:
            data = kwargs.get("data", b"")
            content = data.encode() if isinstance(data, str) else bytes(data or b"")
        signed = real and aim.endswith("signed")
        if signed:
            headers = {k: v for k, v in headers.items() if not k.lower().startswith("webhook-")}
            headers |= sign(secret, content)
        path = kwargs["url"][len(fuzz["server"].url):]
        stats["aim " + aim + (" get" if kwargs["method"] == "GET" else "")] += 1
        response = exchange(fuzz, stats, kwargs["method"], path, headers=headers, content=content,
                            params=kwargs.get("params"), signed_for_real_shop=signed)
        if response is not None:
            case.validate_response(response, checks=[not_a_server_error, response_schema_conformance,
                                                     content_type_conformance])

    started = time.monotonic()
    try:
        run()
    finally:
        TIMES["schemathesis"] = TIMES.get("schemathesis", 0) + time.monotonic() - started
    assert stats["5xx"] == 0


# --- 2. hostile deliveries ------------------------------------------------------------

INJECTIONS = [
    "' OR '1'='1", "1; DROP TABLE leads; --", "Robert'); DELETE FROM tenants;--", "$$; SELECT pg_sleep(10); $$",
    "{{ 7*7 }}", "{{ config.__class__.__init__.__globals__ }}", "{% for x in range(10**9) %}x{% endfor %}",
    "${jndi:ldap://example.invalid/a}", "<script>alert(1)</script>", "../../../etc/passwd", "%s%s%s%n",
    "\r\nX-Injected: yes", "\u202e\u0000\ud7ff", "NaN", "-Infinity", "current_tenant_id()", "set_config('app.tenant_id','1',true)",
]
leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
                 st.text(max_size=40), st.sampled_from(INJECTIONS))
json_values = st.recursive(leaf, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                                               max_size=4), max_leaves=25)


@st.composite
def shaped(draw):
    """A body shaped like a ShopMonkey webhook, with hostile values where it hurts."""
    data = {"id": draw(st.one_of(st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True), st.sampled_from(INJECTIONS),
                                 st.integers(), st.text(max_size=80))),
            "updatedDate": draw(st.one_of(st.none(), st.text(max_size=50), st.just("2026-11-20T15:02:11.000Z"))),
            "status": draw(st.one_of(st.sampled_from(["Estimate", "Invoice"]), st.sampled_from(INJECTIONS)))}
    data.update(draw(st.dictionaries(st.text(max_size=10), json_values, max_size=3)))
    body = {"apiVersion": draw(st.one_of(st.just("3"), leaf)),
            "operation": draw(st.one_of(st.sampled_from(["INSERT", "UPDATE", "DELETE"]), leaf)),
            "table": draw(st.one_of(st.sampled_from(["order", "customer", "vehicle"]), leaf)),
            "data": draw(st.one_of(st.just(data), json_values))}
    return json.dumps(body).encode()


@st.composite
def nested(draw):
    depth = draw(st.one_of(st.integers(20, 100), st.integers(100, 200_000)))
    opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
    inner = opener * depth + "1" + closer * depth
    return ('{"operation":"INSERT","table":"order","data":{"id":"deep","x":' + inner + "}}").encode()


@st.composite
def huge(draw):
    size = draw(st.integers(200_000, 400_000))
    return b'{"operation":"INSERT","table":"order","data":{"id":"big","pad":"' + b"a" * size + b'"}}'


special_json = st.sampled_from([
    b'{"operation":"INSERT","table":"order","data":{"id":"n1","total":NaN}}',
    b'{"operation":"INSERT","table":"order","data":{"id":"n2","total":1e999}}',
    b'{"operation":"INSERT","table":"order","data":{"id":"n3","total":-1e999}}',
    b'{"operation":"INSERT","table":"order","data":{"id":"n4","total":' + b"9" * 5000 + b"}}",
    b'{"operation":"INSERT","table":"order","data":{"id":"n5","note":"\\u0000"}}',
    b'{"operation":"INSERT","table":"order","data":{"id":"n6","\\u0000":1}}',
    b'{"operation":"INSERT","table":"order","data":{"id":"n7","note":"\\udc00\\ud800"}}',
    b'{"operation":"INSERT","table":"order","data":{"id":"n8\xff\xfe"}}',
    b'\xef\xbb\xbf{"operation":"INSERT","table":"order","data":{"id":"bom"}}',
    b'{"operation":"INSERT","operation":"DELETE","table":"order","data":{"id":"dupkey"}}',
    b"", b"null", b"[]", b'"string"', b"{", b"}" * 10,
])
bodies = st.one_of(shaped(), json_values.map(lambda v: json.dumps(v).encode()), st.binary(max_size=2048),
                   nested(), huge(), special_json)

SIGNATURES = ["valid", "valid", "none", "wrong secret", "other shop", "garbage", "stale", "future", "tampered",
              "replay"]
CONTENT_TYPES = ["application/json", "application/json", "application/json; charset=utf-8", "APPLICATION/JSON",
                 "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None]


def test_hostile_deliveries(fuzz):
    stats = STATS.setdefault("hostile", Counter())
    shop, other = fuzz["shop"], fuzz["other"]
    accepted: list[tuple[bytes, dict]] = []

    @HYPOTHESIS
    @given(body=bodies, signature=st.sampled_from(SIGNATURES), content_type=st.sampled_from(CONTENT_TYPES),
           tenant=st.one_of(st.just("fuzz-shop"), st.just("fuzz-shop"), st.just("other-shop"),
                            st.text(min_size=1, max_size=70).filter(lambda t: "/" not in t)),
           # Outside the 300 s window by a margin: the header holds whole seconds and
           # the check happens a moment after signing.
           skew=st.integers(310, 10 ** 7))
    def run(body, signature, content_type, tenant, skew):
        secret = shop.webhook_secret.get_secret_value()
        now = dt.datetime.now(dt.timezone.utc)
        sent = body
        if signature == "valid":
            headers = sign(secret, body)
        elif signature == "none":
            headers = {}
        elif signature == "wrong secret":
            headers = sign("whsec_" + base64.b64encode(os.urandom(24)).decode(), body)
        elif signature == "other shop":
            headers = sign(other.webhook_secret.get_secret_value(), body)
        elif signature == "garbage":
            headers = {"webhook-id": "msg_x", "webhook-timestamp": str(int(now.timestamp())),
                       "webhook-signature": "v1," + base64.b64encode(body[:32]).decode() + " v2,zz =="}
        elif signature == "stale":
            headers = sign(secret, body, at=now - dt.timedelta(seconds=skew))
        elif signature == "future":
            headers = sign(secret, body, at=now + dt.timedelta(seconds=skew))
        elif signature == "tampered":
            headers = sign(secret, body)
            sent = body + b" " if body[-1:] != b" " else body[:-1]
        else:  # replay an accepted delivery byte for byte (or a fresh one if none yet)
            sent, headers, signed_for = accepted[-1] if accepted else (body, sign(secret, body), "fuzz-shop")
            headers = dict(headers)
        if content_type:
            headers["content-type"] = content_type
        from urllib.parse import quote

        if signature != "replay":  # whose secret made a valid signature, if any
            signed_for = {"valid": "fuzz-shop", "other shop": "other-shop"}.get(signature)
        validly_signed = _is_utf8(sent) and tenant == signed_for
        response = exchange(fuzz, stats, "POST", f"/webhooks/shopmonkey/{quote(tenant, safe='')}",
                            headers=headers, content=sent, signed_for_real_shop=validly_signed,
                            note=f"{signature} {tenant!r} {sent[:80]!r}")
        if response is not None and response.status_code == 202:
            accepted.append((sent, dict(headers), tenant))

    started = time.monotonic()
    try:
        run()
    finally:
        TIMES["hostile"] = TIMES.get("hostile", 0) + time.monotonic() - started
    assert stats["5xx"] == 0
