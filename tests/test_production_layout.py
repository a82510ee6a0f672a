"""The production layout on one machine (`lead-orchestrator up --production`), started as
an operator starts it, on private ports with its own embedded PostgreSQL and stand-ins:
it runs deploy/Procfile's command lines (a Dagster code server of its own, loaded by the
daemon and the webserver through deploy/workspace.yaml; a receiver with two uvicorn
workers on one port; two dispatchers). A burst of estimates across shops gets one lead
and one first SMS and email each, taken by both dispatchers; then a receiver worker, a
dispatcher and the code server are killed in turn, and after each the killed part comes
back and new estimates are answered once, nothing lost or doubled. The database
connections of each process stay within the bounds docs/deployment.md states."""
from __future__ import annotations

import os
import re
import shlex
import signal
import time
from pathlib import Path

import httpx
import psutil
import pytest

from lead_orchestrator.runtime.layout import APP_NAMES, procfile_commands
from tests.layout_support import ConnectionPeaks, Estimate, ProductionLayout
from tests.support import wait_for

SHOPS = 6
BURST = 60
AFTER_EACH_KILL = 12
# The pool bounds the layout runs with (the defaults), and what each process keeps beside
# its pool (docs/deployment.md, Database connections).
RECEIVER_POOL, DISPATCHER_POOL, DAGSTER_POOL = 4, 16, 2
RECEIVER_WORKERS = 2


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    running = ProductionLayout(tmp_path_factory.mktemp("production"),
                               env={"RESTART_MAX_DELAY_SECONDS": "2", "RECEIVER_WORKERS": str(RECEIVER_WORKERS)})
    try:
        running.start()
        running.shop_list = running.add_shops(SHOPS, "layout")
        running.peaks = ConnectionPeaks(running).start()
        yield running
    finally:
        if getattr(running, "peaks", None) is not None:
            running.peaks.stop()
        running.kill_everything()  # only if a test failed before stopping it


def answered_once(layout: ProductionLayout, estimates: list[Estimate], timeout: float = 60) -> None:
    """Every estimate gets its first SMS and email; once nothing is left to do (every
    event done, no send in flight), each has exactly one lead, one SMS and one email."""
    wait_for(lambda: layout.answered(estimates), timeout=timeout, interval=0.25,
             message=f"first SMS and email for {len(estimates)} estimates")
    orders = [e.order_id for e in estimates]

    def settled() -> bool:
        with layout.connect() as conn:
            return conn.execute(
                "SELECT NOT EXISTS (SELECT 1 FROM inbox_events WHERE object_id = ANY(%s) AND status <> 'done') "
                "AND NOT EXISTS (SELECT 1 FROM touches WHERE status = 'sending') AS settled",
                (orders,)).fetchone()["settled"]

    wait_for(settled, timeout=30, interval=0.25, message="every event done and no send in flight")
    with layout.connect() as conn:
        leads = conn.execute("SELECT order_id, count(*) AS n FROM leads WHERE order_id = ANY(%s) GROUP BY 1",
                             (orders,)).fetchall()
    assert {r["order_id"]: r["n"] for r in leads} == {o: 1 for o in orders}
    sms, mail = layout.sms_per_phone(), layout.emails_per_address()
    assert {e.phone: sms[e.phone] for e in estimates} == {e.phone: 1 for e in estimates}
    assert {e.email: mail[e.email] for e in estimates} == {e.email: 1 for e in estimates}


def claimers(layout: ProductionLayout, estimates: list[Estimate]) -> set[str]:
    """The processes that took these estimates' events ("dispatcher-<pid>")."""
    with layout.connect() as conn:
        rows = conn.execute("SELECT DISTINCT split_part(claimed_by, ' ', 1) AS who FROM inbox_events "
                            "WHERE object_id = ANY(%s)", ([e.order_id for e in estimates],)).fetchall()
    return {r["who"] for r in rows}


def test_the_layout_runs_the_procfile_lines(layout):
    """Each supervised process is its Procfile line, as /bin/sh runs it (`exec`: the
    program itself, no shell left); the daemon and the webserver start no code server of
    their own; the receiver's master has two serving workers."""
    commands = procfile_commands()
    bin_dir = Path(psutil.Process(layout.pid("receiver")).cmdline()[0]).parent
    env = {**layout.env, "RECEIVER_HOST": "127.0.0.1", "RECEIVER_WORKERS": str(RECEIVER_WORKERS),
           "DAGSTER_CODE_SERVER_HOST": "127.0.0.1"}
    for name, pid in layout.pids().items():
        process = re.sub(r"-\d+$", "", name)
        if process not in commands:
            assert name in ("postgres", "standins"), name
            continue
        words = shlex.split(re.sub(r'"\$(\w+)"', lambda m: env[m.group(1)], commands[process]))
        assert words[0] == "exec"
        running = psutil.Process(pid)
        # A console script runs as `<venv python> <venv>/bin/<script> args…`.
        assert running.cmdline()[1:] == [str(bin_dir / words[1]), *words[2:]], name
        assert running.environ()["PGAPPNAME"] == APP_NAMES[process] + name.removeprefix(process)
    assert "grpc_server" in (Path(__file__).parent.parent / "deploy" / "workspace.yaml").read_text()
    for name in ("dagster-daemon", "dagster-webserver"):
        children = psutil.Process(layout.pid(name)).children(recursive=True)
        assert not [p for p in children if "api" in p.cmdline() and "grpc" in p.cmdline()], name
    assert len(layout.receiver_workers()) == RECEIVER_WORKERS
    assert [p for p in psutil.Process(layout.pid("dagster-code")).children() if "grpc" in p.cmdline()]


def test_a_burst_across_shops_is_answered_once_by_both_dispatchers(layout):
    estimates = layout.create_estimates(layout.shop_list, BURST)
    answered_once(layout, estimates)
    dispatchers = {f"dispatcher-{layout.pid(f'dispatcher-{i}')}" for i in (1, 2)}
    assert claimers(layout, estimates) == dispatchers


def test_a_killed_receiver_worker_is_replaced_and_nothing_is_lost(layout):
    master = layout.pid("receiver")
    workers = layout.receiver_workers()
    os.kill(workers[0], signal.SIGKILL)
    # uvicorn's master notices within half a second and starts another worker.
    wait_for(lambda: len(layout.receiver_workers()) == RECEIVER_WORKERS and workers[0] not in layout.receiver_workers(),
             timeout=30, interval=0.1, message="a new receiver worker")
    replacement = (set(layout.receiver_workers()) - set(workers)).pop()
    estimates = layout.create_estimates(layout.shop_list, AFTER_EACH_KILL)
    answered_once(layout, estimates)
    assert layout.pid("receiver") == master  # the supervisor saw nothing: the master replaced it
    assert psutil.Process(replacement).is_running()


def test_a_killed_dispatcher_is_restarted_and_nothing_is_lost(layout):
    before = layout.pid("dispatcher-1")
    other = f"dispatcher-{layout.pid('dispatcher-2')}"
    os.kill(before, signal.SIGKILL)
    # Sent at once: the other dispatcher answers them while this one restarts.
    estimates = layout.create_estimates(layout.shop_list, AFTER_EACH_KILL)
    answered_once(layout, estimates)
    wait_for(lambda: layout.restarted("dispatcher-1", before), timeout=60, interval=0.1,
             message="dispatcher-1 restarted")
    # Back: listening again (the fast path's alive lock is held on that connection).
    wait_for(lambda: "lead-dispatcher-1/dispatcher-listen" in layout.connections(), timeout=60, interval=0.2,
             message="the new dispatcher-1 listening")
    assert claimers(layout, estimates) <= {other, f"dispatcher-{layout.pid('dispatcher-1')}"}
    assert "dispatcher-1 stopped unexpectedly (killed by SIGKILL" in layout.output()


def test_a_killed_code_server_is_restarted_and_dagster_loads_it_again(layout):
    before = layout.pid("dagster-code")
    killed_at = time.time()
    os.kill(before, signal.SIGKILL)
    # The fast path does not need the code server: these are answered while it restarts.
    estimates = layout.create_estimates(layout.shop_list, AFTER_EACH_KILL)
    answered_once(layout, estimates)
    wait_for(lambda: layout.restarted("dagster-code", before), timeout=90, interval=0.2,
             message="the code server restarted and serving")
    # The daemon evaluates the sensors on the new code server (same address, no restart).
    wait_for(lambda: sensor_ticked_since(layout, "inbox_sensor", killed_at), timeout=60, interval=0.5,
             message="an inbox_sensor tick on the new code server")
    # The webserver shows the location loaded, not an error.
    wait_for(lambda: location_loaded(layout), timeout=60, interval=0.5, message="the webserver's code location")
    assert layout.state()["dagster-daemon"]["starts"] == 1 and layout.state()["dagster-webserver"]["starts"] == 1


def sensor_ticked_since(layout: ProductionLayout, sensor: str, since: float) -> bool:
    with layout.connect("dagster") as conn:
        # Dagster keeps tick times as UTC without a zone, and the tick as JSON (the sensor's
        # name under its old key, job_name).
        row = conn.execute("SELECT count(*) AS n FROM job_ticks WHERE status IN ('SUCCESS', 'SKIPPED') "
                           "AND timestamp > (to_timestamp(%s) AT TIME ZONE 'UTC') "
                           "AND tick_body::jsonb ->> 'job_name' = %s", (since, sensor)).fetchone()
    return row["n"] > 0


def location_loaded(layout: ProductionLayout) -> bool:
    query = "{ workspaceOrError { ... on Workspace { locationEntries { locationOrLoadError { __typename } } } } }"
    try:
        answer = httpx.post(f"{layout.url('DAGSTER_PORT')}/graphql", json={"query": query}, timeout=10).json()
    except (httpx.HTTPError, ValueError):
        return False
    entries = answer["data"]["workspaceOrError"]["locationEntries"]
    return [e["locationOrLoadError"]["__typename"] for e in entries] == ["RepositoryLocation"]


def test_connections_per_process_stay_within_their_bounds(layout):
    """Sampled through every test above (the burst, the kills, the restarts): each
    process's connections at once stay within its pool and the few it keeps beside it."""
    layout.peaks.stop()
    peak = layout.peaks.peak
    per_worker = RECEIVER_POOL + 2  # the pool, the inbox writer, an availability probe while the database is away
    assert sum(n for name, n in peak.items() if name.startswith("lead-receiver")) <= RECEIVER_WORKERS * per_worker
    for i in (1, 2):
        mine = {name: n for name, n in peak.items() if name.split("/")[0] == f"lead-dispatcher-{i}"}
        assert mine.get(f"lead-dispatcher-{i}/dispatcher", 0) <= DISPATCHER_POOL, mine
        # Beside the pool: LISTEN, claim lease, sender session, and Dagster's storage for the
        # leads history (a connection per operation, two at once at most).
        assert sum(mine.values()) <= DISPATCHER_POOL + 5, mine
    # The code server's pool, and a run's (runs inherit its PGAPPNAME); the killed code
    # server's child is still closing for a few seconds while the new one starts.
    assert peak["dagster-code/dagster"] <= 2 * DAGSTER_POOL
    print("peak connections:", dict(sorted(peak.items())), "all at once:", layout.peaks.peak_total)


def test_sigterm_stops_every_process_it_started(layout):
    pids = layout.pids()
    tree = [p for pid in pids.values() for p in _with_children(pid)]
    assert layout.stop() == 0, layout.output()[-3000:]
    wait_for(lambda: not [p for p in tree if _running(p)], timeout=10, interval=0.1,
             message="every process gone")


def _running(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE  # a zombie waits for init to reap it
    except psutil.NoSuchProcess:
        return False


def _with_children(pid: int) -> list[psutil.Process]:
    try:
        process = psutil.Process(pid)
        return [process, *process.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
