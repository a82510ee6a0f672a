"""`lead-orchestrator up` (what `./dev run` runs) under faults: started as a user starts it,
on private ports and a private data directory (its own embedded PostgreSQL), it keeps its
children running: a killed child comes back and serves while the others keep running, a
child that cannot start is reported as a crash loop without taking the others down, a
stopped database is started again; SIGTERM then stops everything it started."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import psycopg
import pytest

from tests.support import session_box, UpReport, free_port, wait_for

STACK_ENV_DROPPED = ("DATABASE_URL", "TEST_DATABASE_URL", "DAGSTER_HOME", "PUBLIC_BASE_URL", "LEAD_VENDORS",
                     "SHOPMONKEY_BASE_URL", "TWILIO_API_BASE_URL", "SENDGRID_API_BASE_URL", "TEKMETRIC_BASE_URL")


class Stack(UpReport):
    def __init__(self, proc: subprocess.Popen, data_dir: Path, out_path: Path, ports: dict[str, int]):
        self.proc, self.data_dir, self.out_path, self.ports = proc, data_dir, out_path, ports

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    home = tmp_path_factory.mktemp("stack")
    ports = {"RECEIVER_PORT": free_port(), "DAGSTER_PORT": free_port(), "SHOPMONKEY_STANDIN_PORT": free_port(),
             "TWILIO_STANDIN_PORT": free_port(), "SENDGRID_STANDIN_PORT": free_port(),
             "TEKMETRIC_STANDIN_PORT": free_port()}
    env = {k: v for k, v in os.environ.items() if k not in STACK_ENV_DROPPED}
    env.update({k: str(v) for k, v in ports.items()})
    env.update(LEAD_DATA_DIR=str(home / "data"), RESTART_MAX_DELAY_SECONDS="2")
    out_path = home / "up.out"
    with open(out_path, "wb") as out:
        # cwd: a folder without a .env, as the user's own .env must not steer the test.
        proc = subprocess.Popen([str(Path(sys.executable).parent / "lead-orchestrator"), "up", "--no-demo"],
                                cwd=home, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    running = Stack(proc, home / "data", out_path, ports)
    try:
        wait_for(lambda: proc.poll() is not None or "==> running;" in running.output(), timeout=240, interval=0.5,
                 message="`up` to report that everything runs")
        assert proc.poll() is None, running.output()
        yield running
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # only if a test failed before stopping it
            for pid in running.pids().values():
                _kill_group(pid)
            proc.wait()


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def test_up_prints_vendors_ports_and_how_to_reach_the_database(stack):
    out = stack.output()
    assert "vendors: local stand-ins (no vendor base URL is configured" in out
    assert f"Twilio      {stack.url('TWILIO_STANDIN_PORT')}" in out
    with psycopg.connect(stack.database_url()) as conn:  # the printed URL works as printed
        assert conn.execute("SELECT count(*) FROM tenants").fetchone()[0] >= 1


def test_a_killed_child_is_restarted_and_serves_while_the_others_keep_running(stack):
    before = stack.pids()
    daemon_group = before["dagster-daemon"]
    assert len(psutil.Process(daemon_group).children(recursive=True)) >= 1  # its code server
    os.killpg(before["receiver"], signal.SIGKILL)
    os.killpg(before["standins"], signal.SIGKILL)
    os.kill(daemon_group, signal.SIGKILL)  # the daemon alone: its code server is left behind

    wait_for(lambda: all(stack.pid(n) not in (None, before[n]) for n in ("receiver", "standins", "dagster-daemon")),
             timeout=30, message="new receiver, stand-ins and daemon")
    wait_for(lambda: answers(f"{stack.url('RECEIVER_PORT')}/readyz"), timeout=30, message="the receiver again")
    wait_for(lambda: stack.state()["standins"]["ready"], timeout=30, message="the stand-ins again")
    # What the dead daemon left (its code server) does not linger.
    wait_for(lambda: not _group(daemon_group), timeout=20, message="the old daemon's process group to be gone")
    after = stack.pids()
    for name in ("postgres", "dispatcher", "dagster-webserver"):
        assert after[name] == before[name], name
    assert answers(f"{stack.url('DAGSTER_PORT')}/server_info")

    # The restarted stand-ins know the demo shop again: an estimate gets its first SMS.
    shopmonkey, twilio = stack.url("SHOPMONKEY_STANDIN_PORT"), stack.url("TWILIO_STANDIN_PORT")
    order = httpx.post(f"{shopmonkey}/_standin/orders", timeout=10,
                       json={"api_key": _demo_key(stack), "customer": {"firstName": "Ada"}})
    assert order.status_code == 200, order.text
    wait_for(lambda: httpx.get(f"{twilio}/_outbox.json", timeout=2).json(), timeout=30,
             message="the first SMS through the restarted receiver and stand-ins")
    # And the Tekmetric demo shop: its partner app, shop and webhook URL are registered again.
    from lead_orchestrator.runtime.stack import TEKMETRIC_DEMO_SHOP_ID, TEKMETRIC_DEMO_SLUG

    sender = _demo_shop(stack, TEKMETRIC_DEMO_SLUG).twilio_sender
    made = httpx.post(f"{stack.url('TEKMETRIC_STANDIN_PORT')}/_standin/orders", timeout=10,
                      json={"shop_id": TEKMETRIC_DEMO_SHOP_ID})
    assert made.status_code == 200, made.text
    wait_for(lambda: any(m.get("from") == sender for m in httpx.get(f"{twilio}/_outbox.json", timeout=2).json()),
             timeout=30, message="the Tekmetric demo shop's first SMS after the restart")
    assert "receiver stopped unexpectedly (killed by SIGKILL" in stack.output()


def _group(pgid: int) -> list[int]:
    return [p.pid for p in psutil.process_iter() if _pgid(p.pid) == pgid]


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def _demo_key(stack: Stack) -> str:
    return _demo_shop(stack, "demo").shopmonkey_api_key.get_secret_value()


def _demo_shop(stack: Stack, slug: str):
    from lead_orchestrator.store.shops import get_shop

    with psycopg.connect(stack.database_url(), row_factory=psycopg.rows.dict_row) as conn:
        return get_shop(conn, slug, session_box())


def test_a_child_that_cannot_start_is_a_crash_loop_and_the_others_keep_serving(stack):
    before = stack.pids()
    port = stack.ports["RECEIVER_PORT"]
    os.killpg(before["receiver"], signal.SIGKILL)
    # Another program takes the receiver's port: every restart fails at once.
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    wait_for(lambda: _try_bind(squatter, port), timeout=5, interval=0.02, message="the receiver's port")
    try:
        squatter.listen(1)
        # 4 exits in a row (the kill, then 3 failed starts); the receiver takes 5-8 s to fail
        # on a busy 2-core machine.
        wait_for(lambda: "CRASH LOOP: receiver" in stack.output(), timeout=90, interval=0.25,
                 message="the crash loop report")
        report = stack.output().split("CRASH LOOP: receiver", 1)[1]
        assert "address already in use" in report.lower()  # the log's end says why
        assert "CRASH LOOP: receiver" in (stack.data_dir / "logs" / "supervisor.log").read_text()
        assert stack.state()["receiver"]["crash_loop"] is True
        after = stack.pids()
        for name in ("postgres", "standins", "dispatcher", "dagster-daemon", "dagster-webserver"):
            assert after[name] == before[name], name
        assert answers(f"{stack.url('DAGSTER_PORT')}/server_info")
        assert answers(f"{stack.url('TWILIO_STANDIN_PORT')}/_outbox.json")
    finally:
        squatter.close()
    # Still retried (every RESTART_MAX_DELAY_SECONDS=2 s here): it serves once the port is free.
    wait_for(lambda: answers(f"{stack.url('RECEIVER_PORT')}/readyz"), timeout=30, message="the receiver back")


def _try_bind(sock: socket.socket, port: int) -> bool:
    try:
        sock.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False


def test_a_stopped_database_is_started_again(stack):
    before = stack.pids()
    os.kill(before["postgres"], signal.SIGINT)  # what `pg_ctl stop -m fast` does
    wait_for(lambda: stack.pid("postgres") not in (None, before["postgres"]) and stack.state()["postgres"]["ready"],
             timeout=40, message="a new postmaster")
    with psycopg.connect(stack.database_url()) as conn:
        assert conn.execute("SELECT 1").fetchone()[0] == 1
    wait_for(lambda: answers(f"{stack.url('RECEIVER_PORT')}/readyz"), timeout=30, message="the receiver ready again")
    after = stack.pids()
    for name in ("standins", "dagster-webserver"):
        assert after[name] == before[name], name
    assert "postgres stopped unexpectedly (the postmaster is gone" in stack.output()


def test_sigterm_stops_every_process_it_started(stack):
    pids = stack.pids()
    stack.proc.send_signal(signal.SIGTERM)
    assert stack.proc.wait(60) == 0, stack.output()[-3000:]
    for name, pid in pids.items():
        assert not _alive(pid), name
        if name != "postgres":  # started by pg_ctl in a session of its own
            assert not [p for p in _group(pid) if _alive(p)], name


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE  # a zombie waits for init to reap it
    except psutil.NoSuchProcess:
        return False
