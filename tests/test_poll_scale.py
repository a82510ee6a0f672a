"""The poll at scale: slots spread over the cycle, shards, and claims that keep two
pollers off the same shop — against real PostgreSQL (a database of their own, so that
"every due shop" means these tests' shops) and the ShopMonkey stand-in over HTTP."""
from __future__ import annotations

import datetime as dt
import threading
from collections import Counter

import psycopg
import pytest
from psycopg.rows import dict_row

from lead_orchestrator.services.poll import PollConfig, Shard, next_slot, poll_cycle, slot_phase_s
from tests.poll_support import add_shops, poll_db  # noqa: F401 - poll_db is a fixture

UTC = dt.timezone.utc
LEASE = dt.timedelta(seconds=PollConfig().lease_s)


# --- pure rules ----------------------------------------------------------------------

def test_a_shops_next_slot_is_after_the_moment_within_one_cadence_and_at_its_own_phase():
    now = dt.datetime(2026, 12, 1, 12, 0, 0, 250_000, tzinfo=UTC)
    for tenant_id in (1, 2, 3, 977, 20_000):
        slot = next_slot(tenant_id, now, 30)
        assert now < slot <= now + dt.timedelta(seconds=30)
        assert slot.timestamp() % 30 == pytest.approx(slot_phase_s(tenant_id, 30), abs=1e-3)
        # The slot after a slot is one cadence later: a shop polled on time keeps 30 s.
        assert next_slot(tenant_id, slot, 30) - slot == dt.timedelta(seconds=30)


@pytest.mark.parametrize("shops", [60, 1_000, 20_000])
def test_slots_spread_evenly_over_the_cycle_whatever_the_number_of_shops(shops):
    per_second = Counter(int(slot_phase_s(tenant_id, 30)) for tenant_id in range(1, shops + 1))
    assert set(per_second) == set(range(30)) or shops < 30
    # Within 5 % (plus one shop) of an even share in every second of the cycle.
    assert max(per_second.values()) <= shops / 30 * 1.05 + 1
    assert min(per_second.values()) >= shops / 30 * 0.95 - 1


def test_every_shop_is_in_exactly_one_shard():
    for count in (1, 2, 3, 8):
        shards = [Shard(i, count) for i in range(count)]
        for tenant_id in range(1, 500):
            assert sum(s.holds(tenant_id) for s in shards) == 1
    with pytest.raises(ValueError):
        Shard(2, 2)


# --- against the database and the stand-in -------------------------------------------

def _shops(url: str, standins, count: int) -> dict[int, str]:
    keys = add_shops(url, count)
    for key in keys.values():
        standins.shopmonkey.add_shop(key)
    return keys


def _requests_by_key(standins, keys: dict[int, str]) -> dict[int, int]:
    by_key = standins.shopmonkey.request_counts()["by_key_path"]
    return {tenant_id: by_key.get(key, {}).get("/v3/order", 0) for tenant_id, key in keys.items()}


def _ok(cycle) -> set[int]:
    return {s.tenant_id for s in cycle.shops if s.outcome == "ok"}


def test_two_pollers_at_once_poll_every_shop_exactly_once(poll_db, vendors, standins):
    url, database = poll_db
    keys = _shops(url, standins, 40)
    for key in keys.values():  # each answer takes 0.2 s: both pollers are busy at the same time
        standins.shopmonkey.inject_failures(1, status=None, hang_seconds=0.2, api_key=key)
    before = _requests_by_key(standins, keys)
    config = PollConfig(concurrency=4, claim_batch=4)
    now = dt.datetime.now(UTC)
    cycles = {}
    start = threading.Barrier(2)

    def poller(name: str) -> None:
        start.wait()
        cycles[name] = poll_cycle(database, vendors, now=now, config=config, claimer=name)

    threads = [threading.Thread(target=poller, args=(name,)) for name in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)

    a, b = _ok(cycles["a"]), _ok(cycles["b"])
    assert a and b, "both pollers took part"
    assert not a & b and a | b == set(keys)
    requests = Counter({t: n - before[t] for t, n in _requests_by_key(standins, keys).items()})
    assert set(requests.values()) == {1}, requests  # no shop was asked twice
    # Nothing is left claimed, and nothing is due before its next slot.
    with psycopg.connect(url, row_factory=dict_row) as conn:
        assert conn.execute("SELECT count(*) AS n FROM poll_state WHERE claimed_by IS NOT NULL").fetchone()["n"] == 0
    with database.system_tx() as conn:
        assert conn.execute("SELECT count(*) AS n FROM poll_due_tenant_ids(%s)", (now,)).fetchone()["n"] == 0


def test_shards_split_the_shops_and_each_polls_only_its_own(poll_db, vendors, standins):
    url, database = poll_db
    keys = _shops(url, standins, 12)
    now = dt.datetime.now(UTC)
    cycles = [poll_cycle(database, vendors, now=now, shard=Shard(i, 2)) for i in (0, 1)]
    assert [_ok(c) for c in cycles] == [{t for t in keys if t % 2 == 0}, {t for t in keys if t % 2 == 1}]
    assert "(shard 2/2)" in cycles[1].summary()


def test_a_dead_pollers_claims_hold_until_their_lease_runs_out(poll_db, vendors, standins):
    url, database = poll_db
    keys = _shops(url, standins, 5)
    now = dt.datetime.now(UTC)
    with database.system_tx() as conn:
        conn.execute("SELECT poll_prepare_shard(0, 1)")
        claimed = conn.execute("SELECT poll_claim_due(0, 1, %s, 100, %s, 'a-poller-that-died') AS id",
                               (now, LEASE)).fetchall()
    assert {r["id"] for r in claimed} == set(keys)
    assert poll_cycle(database, vendors, now=now + LEASE - dt.timedelta(seconds=1)).shops == []
    # Named shops are refused too while another poller holds them.
    (held,) = poll_cycle(database, vendors, now=now, tenant_ids=[next(iter(keys))]).shops
    assert held.outcome == "not_reached" and "another poller" in held.error
    later = poll_cycle(database, vendors, now=now + LEASE + dt.timedelta(seconds=1))
    assert _ok(later) == set(keys)


def test_ticks_every_5_seconds_poll_each_shop_once_per_30_seconds_spread_over_the_cycle(poll_db, vendors, standins):
    url, database = poll_db
    keys = _shops(url, standins, 60)
    t0 = dt.datetime.now(UTC)
    first = poll_cycle(database, vendors, now=t0)
    assert _ok(first) == set(keys)  # never polled: all due at once, once
    before = _requests_by_key(standins, keys)
    # Each got its slot in the next 30 s, counted from its poll (the first cycle's own
    # second or so may push a few just past t0 + 30 s).
    cycle_end = t0 + dt.timedelta(seconds=30)
    in_cycle = {s.tenant_id for s in first.shops if s.next_poll_at <= cycle_end}
    assert len(in_cycle) >= 50
    # One tick every 5 s: each takes the shops whose slot came, each shop once.
    ticks = [poll_cycle(database, vendors, now=t0 + dt.timedelta(seconds=5 * k)) for k in range(1, 7)]
    polled = Counter(s.tenant_id for tick in ticks for s in tick.shops if s.outcome == "ok")
    assert polled == Counter(in_cycle)
    assert all(6 <= len(tick.shops) <= 14 for tick in ticks[1:]), [len(t.shops) for t in ticks]
    after = _requests_by_key(standins, keys)
    assert {after[t] - before[t] for t in in_cycle} == {1}


def test_a_failing_shop_comes_back_at_its_own_slot_after_its_backoff(poll_db, vendors, standins):
    url, database = poll_db
    keys = _shops(url, standins, 1)
    (tenant_id, key), = keys.items()
    standins.shopmonkey.revoke_key(key)
    now = dt.datetime.now(UTC)
    (first,) = poll_cycle(database, vendors, now=now).shops
    phase = slot_phase_s(tenant_id, 30)
    assert first.outcome == "unauthorized"
    # First error: the next slot; the second: its slot once the minute's backoff is over.
    assert now < first.next_poll_at <= now + dt.timedelta(seconds=31)
    (second,) = poll_cycle(database, vendors, now=first.next_poll_at).shops
    assert 60 <= (second.next_poll_at - first.next_poll_at).total_seconds() <= 90
    assert [p.next_poll_at.timestamp() % 30 for p in (first, second)] == pytest.approx([phase, phase])
    assert poll_cycle(database, vendors, now=second.next_poll_at - dt.timedelta(seconds=1)).shops == []
    with database.system_tx() as conn:
        counts = conn.execute("SELECT * FROM poll_backoff_counts(%s, 0, 1)", (first.next_poll_at,)).fetchall()
    assert counts == [{"health": "unauthorized", "shops": 1}]


def test_the_poll_command_polls_named_shops_or_a_shard_and_refuses_a_bad_shard(poll_db, standins, settings,
                                                                                  monkeypatch):
    from click.testing import CliRunner

    from lead_orchestrator.cli.main import main

    url, database = poll_db
    keys = _shops(url, standins, 2)
    with psycopg.connect(url, row_factory=dict_row) as conn:
        even = next(t for t in keys if t % 2 == 0)
        slug = conn.execute("SELECT slug FROM tenants WHERE id = %s", (even,)).fetchone()["slug"]
    for name, value in {"DATABASE_URL": url, "LEAD_DATA_DIR": str(settings.data_dir), "APP_SECRET_KEY": "cli-test",
                        "SHOPMONKEY_BASE_URL": standins.shopmonkey_url}.items():
        monkeypatch.setenv(name, value)
    runner = CliRunner()
    named = runner.invoke(main, ["poll", "--shop", slug], catch_exceptions=False)
    assert named.exit_code == 0 and "polled 1/1 due shops" in named.output, named.output
    before = _requests_by_key(standins, keys)
    # Shard 2 of 2 holds the odd tenant ids: of these two shops, exactly one.
    sharded = runner.invoke(main, ["poll", "--once", "--shard", "2/2"], catch_exceptions=False)
    assert sharded.exit_code == 0 and "polled 1/1 due shops (shard 2/2)" in sharded.output, sharded.output
    after = _requests_by_key(standins, keys)
    assert [t for t in keys if after[t] > before[t]] == [t for t in keys if t % 2 == 1]
    wrong = runner.invoke(main, ["poll", "--shard", "3/2"])
    assert wrong.exit_code == 2 and "I/N" in wrong.output
