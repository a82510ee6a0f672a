"""The analyst views (sql/0014_analyst_views.sql) on constructed data in a database of
their own: each view returns exactly what the tables hold, every derived figure (funnel
stage, delivery outcome, latencies, shop health) is the one worked out here by hand, and
the role lead_analyst, through a login of its own as an operator would grant it, reads
every shop through the views and can do nothing else."""
from __future__ import annotations

import uuid
from decimal import Decimal

import psycopg
import pytest
from psycopg.rows import dict_row

from tests.support import session_box
from lead_orchestrator.store.shops import SECRET_FIELDS
from tests.analyst_support import H, KEY_REFUSED, S, T0, build, built_database
from tests.test_isolation import plain_owner_url  # noqa: F401 - a fresh cluster migrated by a plain user

VIEWS = ("shops", "leads", "messages", "first_touch", "shop_health")


@pytest.fixture(scope="module")
def analyst_db(pg):
    with built_database(pg, "analyst") as found:
        yield found


@pytest.fixture(scope="module")
def analyst(analyst_db):
    """A login of the operator's making, member of lead_analyst (docs/analysts.md)."""
    url, _ = analyst_db
    login = f"analyst_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {login} LOGIN IN ROLE lead_analyst")
    try:
        with psycopg.connect(url.replace("postgres@", f"{login}@", 1), autocommit=True, row_factory=dict_row) as conn:
            assert conn.execute("SELECT current_user AS u").fetchone()["u"] == login
            yield conn
    finally:
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(f"DROP ROLE {login}")


@pytest.fixture
def admin(analyst_db):
    with psycopg.connect(analyst_db[0], autocommit=True, row_factory=dict_row) as conn:
        yield conn


def by(rows: list[dict], key: str) -> dict:
    return {row[key]: row for row in rows}


def test_the_views_return_exactly_what_the_tables_hold(analyst, admin):
    shops = admin.execute("SELECT id, slug, name, time_zone, active, crm FROM tenants").fetchall()
    assert sorted((r["shop_id"], r["shop"], r["name"], r["time_zone"], r["active"], r["crm"]) for r in
                  analyst.execute("SELECT * FROM analytics.shops").fetchall()) == sorted(
        (r["id"], r["slug"], r["name"], r["time_zone"], r["active"], r["crm"]) for r in shops)

    touches = admin.execute("SELECT * FROM touches").fetchall()
    messages = by(analyst.execute("SELECT * FROM analytics.messages").fetchall(), "message_id")
    assert len(messages) == len(touches) == 15
    for t in touches:
        m = messages[t["id"]]
        assert (m["lead_id"], m["step"], m["channel"], m["status"], m["reason"], m["due_at"], m["send_after"],
                m["sent_at"], m["delivery_status"], m["error_code"], m["attempts"], m["shop_id"]) == (
            t["lead_id"], t["step"], t["channel"], t["status"], t["reason"], t["due_at"], t["send_after"],
            t["sent_at"], t["delivery_status"], t["error_code"], t["attempts"], t["tenant_id"])

    leads = admin.execute("SELECT * FROM leads").fetchall()
    rows = by(analyst.execute("SELECT * FROM analytics.leads").fetchall(), "lead_id")
    assert len(rows) == len(leads) == 9
    for lead in leads:
        row = rows[lead["id"]]
        assert (row["order_id"], row["order_number"], row["status"], row["status_reason"], row["source"],
                row["order_created_at"], row["first_seen_at"], row["ended_at"], row["estimate_total_cents"],
                row["customer_name"], row["reachable_by_sms"], row["reachable_by_email"], row["crm"]) == (
            lead["order_id"], lead["order_number"], lead["status"], lead["status_reason"], lead["source"],
            lead["order_created_at"], lead["first_seen_at"], lead["ended_at"], lead["total_cents"],
            f"{lead['first_name']} {lead['last_name']}", lead["phone_e164"] is not None, lead["email"] is not None,
            lead["crm"])


def test_messages_carry_their_delivery_outcome(analyst, analyst_db):
    expected = analyst_db[1]["outcome"]
    rows = analyst.execute("SELECT message_id, delivery_outcome FROM analytics.messages").fetchall()
    assert {r["message_id"]: r["delivery_outcome"] for r in rows} == expected
    late = analyst.execute("SELECT deferred, seconds_after_due FROM analytics.messages WHERE status = 'deferred'"
                           ).fetchone()
    assert late == {"deferred": True, "seconds_after_due": None}
    sent = analyst.execute("SELECT seconds_after_due FROM analytics.messages WHERE sent_at = %s",
                           (T0 + 1.5 * S,)).fetchone()
    assert sent["seconds_after_due"] == Decimal("0.500")


def test_leads_carry_their_funnel_stage(analyst, analyst_db):
    data = analyst_db[1]
    rows = by(analyst.execute("SELECT * FROM analytics.leads").fetchall(), "lead_id")
    assert {lead_id: row["funnel_stage"] for lead_id, row in rows.items()} == data["stage"]
    fast = rows[data["touched_fast"]]
    assert (fast["touched"], fast["delivered"], fast["messages_sent"], fast["first_touch_at"]) == (
        True, True, 2, T0 + 1.5 * S)
    flags = ("qualified", "touched", "delivered", "replied", "converted", "opted_out", "bounced")
    assert {k: rows[data["poll_found"]][k] for k in flags} == {
        "qualified": True, "touched": True, "delivered": False, "replied": False, "converted": True,
        "opted_out": False, "bounced": False}
    assert {k: rows[data["no_contact"]][k] for k in flags} == dict.fromkeys(flags, False)
    assert rows[data["replied"]]["replied"] and rows[data["opted_out"]]["opted_out"]
    assert rows[data["bounced"]]["bounced"] and rows[data["ambiguous"]]["messages_sent"] == 0


def test_first_touch_latency_is_measured_from_creation_and_from_first_sight(analyst, analyst_db):
    data = analyst_db[1]
    rows = by(analyst.execute("SELECT * FROM analytics.first_touch").fetchall(), "lead_id")
    assert data["no_contact"] not in rows and len(rows) == 8  # qualified leads only
    figures = ("first_touch_channel", "seconds_from_created", "seconds_from_first_seen", "seconds_until_seen",
               "within_30s_of_created", "deferred_by_send_rules", "deferral_reason", "not_sent_reasons")
    expect = {
        "touched_fast": ("sms", Decimal("1.500"), Decimal("0.500"), Decimal("1.000"), True, False, None, None),
        # Found by the poll 35 s late: fast for us, slow for the customer.
        "poll_found": ("sms", Decimal("35.500"), Decimal("0.500"), Decimal("35.000"), False, False, None, None),
        "deferred": (None, None, None, Decimal("0.000"), None, True, "quiet_hours", "sms: quiet_hours"),
        "ambiguous": (None, None, None, Decimal("0.000"), None, False, None,
                      "email: rejected; sms: no_outcome_recorded"),
        "other_shop": ("email", Decimal("4.000"), Decimal("1.000"), Decimal("3.000"), True, False, None, None),
    }
    for name, values in expect.items():
        assert tuple(rows[data[name]][f] for f in figures) == values, name
    assert rows[data["poll_found"]]["source"] == "poll"


def test_shop_health_counts_what_waits_and_what_is_stuck(analyst, analyst_db):
    a, b, c = analyst_db[1]["shops"]
    rows = by(analyst.execute("SELECT * FROM analytics.shop_health").fetchall(), "shop")
    assert len(rows) == 3
    figures = ("active_leads", "messages_scheduled", "messages_deferred", "next_send_at", "unknown_sends",
               "events_pending", "events_processing", "events_parked", "events_dead", "oldest_pending_at",
               "parked_since", "oldest_dead_at", "last_webhook_at", "last_poll_event_at", "poll_health",
               "poll_consecutive_errors", "poll_last_error", "poll_last_success_at")
    assert {f: rows[a.slug][f] for f in figures} == {
        "active_leads": 3, "messages_scheduled": 2, "messages_deferred": 1, "next_send_at": T0 + H,
        "unknown_sends": 1, "events_pending": 0, "events_processing": 0, "events_parked": 0, "events_dead": 0,
        "oldest_pending_at": None, "parked_since": None, "oldest_dead_at": None, "last_webhook_at": T0 + S,
        "last_poll_event_at": T0 + 35 * S, "poll_health": "ok", "poll_consecutive_errors": 0,
        "poll_last_error": None, "poll_last_success_at": T0 + 40 * S}
    assert {f: rows[b.slug][f] for f in figures} == {
        "active_leads": 1, "messages_scheduled": 1, "messages_deferred": 0, "next_send_at": T0 + 2 * H,
        "unknown_sends": 0, "events_pending": 2, "events_processing": 1, "events_parked": 1, "events_dead": 1,
        "oldest_pending_at": T0 + 50 * S, "parked_since": T0 + 60 * S, "oldest_dead_at": T0 + 70 * S,
        "last_webhook_at": T0 + 90 * S, "last_poll_event_at": T0 + 100 * S, "poll_health": "unauthorized",
        "poll_consecutive_errors": 3, "poll_last_error": KEY_REFUSED, "poll_last_success_at": T0 - H}
    assert {f: rows[c.slug][f] for f in figures} == {
        **{f: 0 for f in figures if f.startswith(("active", "messages", "unknown", "events", "poll_consecutive"))},
        **{f: None for f in figures if f.endswith("_at") or f in ("parked_since", "poll_last_error")},
        "poll_health": "not_polled"}


def test_the_analyst_reads_every_shop_and_no_secret(analyst, analyst_db):
    a, b, c = analyst_db[1]["shops"]
    assert {r["shop"] for r in analyst.execute("SELECT DISTINCT shop FROM analytics.leads").fetchall()} == {
        a.slug, b.slug}
    assert analyst.execute("SELECT count(*) AS n FROM analytics.shop_health").fetchone()["n"] == 3
    columns = {r["column_name"] for r in analyst.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = 'analytics'").fetchall()}
    assert not columns & (set(SECRET_FIELDS) | {"phone_e164", "email", "body", "payload", "to_address"})
    for statement in ("SELECT twilio_auth_token, sendgrid_api_key FROM public.tenants",
                      "SELECT api_key, webhook_secret FROM public.shopmonkey_credentials",
                      "SELECT client_secret FROM public.crm_apps", "SELECT * FROM crm_app_credentials('tekmetric')",
                      "SELECT slug FROM public.tenants", "SELECT * FROM public.leads",
                      "SELECT payload FROM public.inbox_events", "SELECT body FROM public.touches",
                      "SELECT * FROM crm_health_problems()",
                      "SELECT * FROM claim_inbox_events('analyst', 1, interval '1 second')"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            analyst.execute(statement)


def test_the_analyst_cannot_write_anything(analyst, admin):
    from tests.conftest import table_counts

    lead = admin.execute("SELECT id, tenant_id FROM leads LIMIT 1").fetchone()
    before = table_counts(admin), admin.execute("SELECT string_agg(status, ',' ORDER BY id) AS s FROM leads").fetchone()
    for statement in (
            "INSERT INTO analytics.shops (shop, name) VALUES ('x', 'x')",
            "UPDATE analytics.messages SET status = 'sent'", "DELETE FROM analytics.leads",
            f"UPDATE public.leads SET status = 'converted' WHERE id = {lead['id']}",
            f"INSERT INTO public.lead_events (tenant_id, kind) VALUES ({lead['tenant_id']}, 'x')",
            "DELETE FROM public.contacts", "TRUNCATE public.touches", "UPDATE public.tenants SET active = false",
            "CREATE TABLE analytics.mine (x int)", "CREATE TABLE public.mine (x int)",
            "CREATE VIEW analytics.mine AS SELECT 1", "SET ROLE lead_app"):
        # A view over several tables is not updatable at all: refused before the privileges count.
        with pytest.raises((psycopg.errors.InsufficientPrivilege, psycopg.errors.ObjectNotInPrerequisiteState)):
            analyst.execute(statement)
    assert (table_counts(admin),
            admin.execute("SELECT string_agg(status, ',' ORDER BY id) AS s FROM leads").fetchone()) == before
    # And nothing in either schema grants it a write: tables, views and sequences alike.
    granted = analyst.execute(
        """SELECT c.oid::regclass::text AS relation, p.privilege
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace,
                  unnest(ARRAY['INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'REFERENCES', 'TRIGGER']) AS p(privilege)
            WHERE n.nspname IN ('public', 'analytics') AND c.relkind IN ('r', 'v', 'm', 'p')
              AND has_table_privilege(current_user, c.oid, p.privilege)
           UNION ALL
           SELECT c.oid::regclass::text, 'USAGE' FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = 'public' AND c.relkind = 'S' AND has_sequence_privilege(current_user, c.oid, 'USAGE')"""
    ).fetchall()
    assert granted == []
    readable = {r["relation"] for r in analyst.execute(
        """SELECT c.oid::regclass::text AS relation FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname IN ('public', 'analytics') AND c.relkind IN ('r', 'v', 'm', 'p')
              AND has_table_privilege(current_user, c.oid, 'SELECT')""").fetchall()}
    assert readable == {f"analytics.{v}" for v in VIEWS}


def test_the_application_role_still_sees_one_tenant_and_no_view(admin):
    admin.execute("SET ROLE lead_app")
    try:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            admin.execute("SELECT * FROM analytics.leads")
    finally:
        admin.execute("RESET ROLE")


def test_the_views_see_every_shop_when_the_owner_is_not_a_superuser(plain_owner_url):
    """The views read as their owner, past RLS because it owns the tables (not because it
    is a superuser): on a managed PostgreSQL the migrating user is a plain one."""
    from lead_orchestrator.store.migrations import apply_migrations

    apply_migrations(plain_owner_url, session_box())
    with psycopg.connect(plain_owner_url, autocommit=True, row_factory=dict_row) as owner:
        assert not owner.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()["rolsuper"]
        data = build(owner)
        owner.execute("CREATE ROLE plain_analyst LOGIN IN ROLE lead_analyst")
    login = plain_owner_url.replace("lead_owner@", "plain_analyst@", 1)
    with psycopg.connect(login, row_factory=dict_row) as analyst:
        stages = analyst.execute("SELECT lead_id, funnel_stage FROM analytics.leads").fetchall()
        assert {r["lead_id"]: r["funnel_stage"] for r in stages} == data["stage"]
        assert analyst.execute("SELECT count(*) AS n FROM analytics.shop_health").fetchone()["n"] == 3
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            analyst.execute("SELECT * FROM public.leads")



def test_the_example_queries_of_the_docs_run_as_the_analyst(analyst):
    """docs/analysts.md stays true: each example query runs as the analyst."""
    import re
    from pathlib import Path

    text = (Path(__file__).parent.parent / "docs" / "analysts.md").read_text()
    queries = [q for q in re.findall(r"```sql\n(.*?)```", text, re.S) if "ROLE" not in q]
    assert len(queries) >= 6
    for query in queries:
        analyst.execute(query).fetchall()
