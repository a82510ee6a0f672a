"""Claims tied to a live session: an event claimed by a process that died is claimable
again within seconds (its claim lease went with its session), while a live claimer's
events are left alone. The 5-minute stale rule stays for claimers without a lease."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psycopg
import pytest
from psycopg.rows import dict_row

from lead_orchestrator.store.db import Database
from lead_orchestrator.services.ingest import claim_events
from tests.conftest import scratch_database
from tests.support import session_box, wait_for

ROOT = Path(__file__).parent.parent


@pytest.fixture
def inbox(pg):
    """A migrated database of its own (claims take every waiting event of every shop),
    with one tenant, an admin connection and an application pool."""
    with scratch_database(pg, "leases") as url:
        admin = psycopg.connect(url, autocommit=True, row_factory=dict_row)
        tenant = admin.execute("INSERT INTO tenants (slug, name) VALUES ('lease-shop', 'Lease shop') "
                               "RETURNING id").fetchone()["id"]
        db = Database(url, max_size=2, name="leases", box=session_box()).open()

        def add_event(**columns) -> int:
            values = {"tenant_id": tenant, "source": "webhook", "dedup_key": f"order:{os.urandom(6).hex()}:",
                      "operation": "INSERT", "table_name": "order", "object_id": os.urandom(6).hex(),
                      "payload": "{}", **columns}
            names = ", ".join(values)
            marks = ", ".join(f"%({k})s" for k in values)
            return admin.execute(f"INSERT INTO inbox_events ({names}) VALUES ({marks}) RETURNING id",
                                 values).fetchone()["id"]

        def row(event_id: int) -> dict:
            return admin.execute("SELECT status, claimed_by, attempts FROM inbox_events WHERE id = %s",
                                 (event_id,)).fetchone()

        yield {"url": url, "admin": admin, "db": db, "add_event": add_event, "row": row}
        db.close()
        admin.close()


CLAIMER = textwrap.dedent("""
    import sys, time
    from lead_orchestrator.store.db import Database
    from lead_orchestrator.services.ingest import claim_events
    db = Database(sys.argv[1], max_size=1, name="doomed").open()
    print(claim_events(db, "doomed-claimer", 10), flush=True)
    time.sleep(600)
""")


def test_a_dead_claimers_event_is_claimable_again_within_seconds(inbox):
    event_id = inbox["add_event"]()
    doomed = subprocess.Popen([sys.executable, "-c", CLAIMER, inbox["url"]], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True)
    try:
        claimed = doomed.stdout.readline()
        assert str(event_id) in claimed, claimed
        held = inbox["row"](event_id)
        assert held["status"] == "processing" and held["claimed_by"].startswith("doomed-claimer lease:")
        # Alive: its event is not anyone else's to take, and the sensor does not count it.
        assert claim_events(inbox["db"], "rescuer", 10) == []
        assert _backlog(inbox["admin"]) == 0
    finally:
        doomed.send_signal(signal.SIGKILL)
        doomed.wait(timeout=10)
        doomed.stdout.close()
    killed_at = time.monotonic()
    # With no dispatcher alive the inbox sensor asks for a run for it ...
    wait_for(lambda: _backlog(inbox["admin"]) == 1, timeout=10, message="the orphaned claim in the sensor's backlog")
    # ... and any claimer takes it at once (it was 5 minutes before).
    rescued = wait_for(lambda: claim_events(inbox["db"], "rescuer", 10), timeout=10,
                       message="the dead claimer's event claimed again")
    print(f"\nclaimed again {time.monotonic() - killed_at:.2f} s after its claimer was killed")
    assert [event_id for _, event_id in rescued] == [event_id]
    after = inbox["row"](event_id)
    assert after["claimed_by"].startswith("rescuer lease:") and after["attempts"] == 2


def test_a_claimer_that_lost_its_session_takes_a_new_lease_and_frees_its_old_claims(inbox):
    from lead_orchestrator.store.claim_lease import lease_for

    first = inbox["add_event"]()
    assert [e for _, e in claim_events(inbox["db"], "worker", 10)] == [first]
    old_lease = lease_for(inbox["db"].url).number
    # Its lease's session ends (what a database restart does to every session).
    inbox["admin"].execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                           "WHERE application_name = 'claim-lease' AND datname = current_database()")
    wait_for(lambda: inbox["admin"].execute(
        "SELECT count(*) AS n FROM pg_stat_activity WHERE application_name = 'claim-lease' "
        "AND datname = current_database()").fetchone()["n"] == 0, timeout=10, message="the lease's session gone")
    second = inbox["add_event"]()
    # The next claim notices, renews the lease, and takes both: the event claimed under
    # the lost lease may have been interrupted, so it is anyone's again.
    assert sorted(e for _, e in claim_events(inbox["db"], "worker", 10)) == [first, second]
    new_lease = lease_for(inbox["db"].url).number
    assert new_lease != old_lease
    assert inbox["row"](first)["claimed_by"] == f"worker lease:{new_lease}"


def test_claims_without_a_lease_keep_the_five_minute_rule(inbox):
    recent = inbox["add_event"](status="processing", claimed_by="legacy", claimed_at="now()")
    stale = inbox["add_event"](status="processing", claimed_by="legacy")
    inbox["admin"].execute("UPDATE inbox_events SET claimed_at = now() - interval '6 minutes' WHERE id = %s",
                           (stale,))
    assert [e for _, e in claim_events(inbox["db"], "rescuer", 10)] == [stale]
    assert inbox["row"](recent)["claimed_by"] == "legacy"


def test_a_claimer_cannot_name_a_lease_it_does_not_hold(inbox):
    inbox["add_event"]()
    with pytest.raises(psycopg.Error) as caught, inbox["db"].system_tx() as conn:
        conn.execute("SELECT * FROM claim_inbox_events('impostor lease:2000000000', 10, interval '5 minutes')")
    assert caught.value.sqlstate == "LO001"


def _backlog(admin) -> int:
    return admin.execute("SELECT pending FROM inbox_backlog_older_than(interval '0 seconds')").fetchone()["pending"]
