"""The supervisor's policy on small real processes (fast): backoff, crash loops, hold files,
leftover process groups; and `up`'s choice of vendors."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from lead_orchestrator.settings import Settings
from lead_orchestrator.runtime.stack import choose_vendors, ports_in_use, psql_command
from lead_orchestrator.runtime.supervisor import ProcessChild, RestartPolicy, Supervisor
from tests.support import wait_for

FAST = RestartPolicy(initial_delay=0.05, max_delay=0.2, stable_after=2.0, crash_loop_exits=4, crash_loop_window=10.0)


def test_backoff_doubles_up_to_its_cap():
    policy = RestartPolicy(initial_delay=1, max_delay=30)
    assert [policy.delay(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]


def python_child(tmp_path: Path, name: str, code: str) -> ProcessChild:
    return ProcessChild(name, [sys.executable, "-c", code], dict(os.environ), tmp_path, tmp_path / "logs")


@pytest.fixture
def supervised(tmp_path):
    said: list[str] = []
    sup = Supervisor(tmp_path / "logs", tmp_path / "supervisor.json", FAST, hold_dir=tmp_path / "hold",
                     say=said.append)
    stop = threading.Event()
    yield sup, said, stop
    sup.stop_all(timeout=5)


def test_a_crash_loop_is_reported_once_and_retried_while_the_others_run(supervised, tmp_path):
    sup, said, stop = supervised
    sup.add(python_child(tmp_path, "steady", "import time; time.sleep(60)"))
    sup.add(python_child(tmp_path, "crasher", "import sys; print('cannot open the widget'); sys.exit(3)"))

    assert sup.wait_until(lambda: any("CRASH LOOP: crasher" in line for line in said), 20, stop), said
    steady_pid = sup.pid("steady")
    report = next(line for line in said if "CRASH LOOP" in line)
    assert "exit code 3" in report and "cannot open the widget" in report  # why, and the log's end
    # Still retried at the capped pace, reported once, the other never touched.
    starts = json.loads((tmp_path / "supervisor.json").read_text())["children"]["crasher"]["starts"]
    assert sup.wait_until(lambda: json.loads((tmp_path / "supervisor.json").read_text())
                          ["children"]["crasher"]["starts"] >= starts + 3, 10, stop)
    assert sum("CRASH LOOP" in line for line in said) == 1
    assert sup.pid("steady") == steady_pid and sup.is_ready("steady")
    state = json.loads((tmp_path / "supervisor.json").read_text())["children"]
    assert state["crasher"]["crash_loop"] is True and state["steady"]["starts"] == 1
    assert "CRASH LOOP: crasher" in (tmp_path / "logs" / "supervisor.log").read_text()


def test_a_child_that_ran_a_while_is_restarted_at_the_first_delay(supervised, tmp_path):
    sup, said, stop = supervised
    sup.add(python_child(tmp_path, "worker", "import time; time.sleep(60)"))
    assert sup.wait_until(lambda: sup.is_ready("worker"), 10, stop)
    first = sup.pid("worker")
    os.kill(first, signal.SIGKILL)
    assert sup.wait_until(lambda: sup.pid("worker") != first and sup.is_ready("worker"), 10, stop)
    assert any("worker stopped unexpectedly (killed by SIGKILL" in line for line in said), said


def test_what_a_dead_child_leaves_in_its_process_group_is_ended(supervised, tmp_path, monkeypatch):
    from lead_orchestrator.runtime import supervisor as supervisor_module

    monkeypatch.setattr(supervisor_module, "ORPHAN_GRACE_SECONDS", 0.5)
    sup, said, stop = supervised
    # Like a Dagster daemon and its code server: a grandchild that ignores SIGTERM.
    code = ("import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', "
            "'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)']); time.sleep(60)")
    sup.add(python_child(tmp_path, "daemon", code))
    assert sup.wait_until(lambda: sup.is_ready("daemon"), 10, stop)
    leader = sup.pid("daemon")
    wait_for(lambda: len(group_members(leader)) == 2, timeout=10, message="the grandchild started")
    os.kill(leader, signal.SIGKILL)
    assert sup.wait_until(lambda: not group_members(leader), 10, stop), group_members(leader)


def group_members(pgid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "-g", str(pgid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def test_a_hold_file_keeps_a_stopped_child_stopped(supervised, tmp_path):
    sup, said, stop = supervised
    sup.add(python_child(tmp_path, "held", "import time; time.sleep(60)"))
    assert sup.wait_until(lambda: sup.is_ready("held"), 10, stop)
    (tmp_path / "hold").mkdir()
    (tmp_path / "hold" / "held").touch()
    pid = sup.pid("held")
    os.kill(pid, signal.SIGKILL)
    assert sup.wait_until(lambda: any("held is held" in line for line in said), 10, stop)
    sup.wait_until(lambda: False, 0.5, stop)
    assert sup.pid("held") == pid and not sup.is_ready("held")
    assert json.loads((tmp_path / "supervisor.json").read_text())["children"]["held"]["state"] == "held"
    (tmp_path / "hold" / "held").unlink()
    assert sup.wait_until(lambda: sup.is_ready("held"), 10, stop)


def test_vendors_are_chosen_explicitly_never_by_the_shops_that_exist():
    bare = Settings(_env_file=None)
    assert choose_vendors(bare).standins
    assert choose_vendors(bare).urls["twilio"] == "http://127.0.0.1:8702"
    configured = Settings(_env_file=None, SHOPMONKEY_BASE_URL="https://sm.example")
    choice = choose_vendors(configured)
    assert not choice.standins and "SHOPMONKEY_BASE_URL" in choice.reason
    assert choice.urls == {"shopmonkey": "https://sm.example", "tekmetric": "https://shop.tekmetric.com",
                           "twilio": "https://api.twilio.com", "sendgrid": "https://api.sendgrid.com"}
    assert choose_vendors(configured, "standins").standins
    assert not choose_vendors(bare, "real").standins
    assert not choose_vendors(Settings(_env_file=None, LEAD_VENDORS="real")).standins
    ports = Settings(_env_file=None, SHOPMONKEY_STANDIN_PORT="9311", TWILIO_STANDIN_PORT="9312",
                     SENDGRID_STANDIN_PORT="9313", TEKMETRIC_STANDIN_PORT="9314")
    assert choose_vendors(ports).urls == {"shopmonkey": "http://127.0.0.1:9311", "tekmetric": "http://127.0.0.1:9314",
                                          "twilio": "http://127.0.0.1:9312", "sendgrid": "http://127.0.0.1:9313"}
    tekmetric = choose_vendors(Settings(_env_file=None, TEKMETRIC_BASE_URL="https://sandbox.tekmetric.com"))
    assert not tekmetric.standins and "TEKMETRIC_BASE_URL" in tekmetric.reason


def test_ports_in_use_are_named_by_their_variable():
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        port = held.getsockname()[1]
        assert ports_in_use("127.0.0.1", {"RECEIVER_PORT": port}) == [f"RECEIVER_PORT={port}"]
    assert ports_in_use("127.0.0.1", {"RECEIVER_PORT": port}) == []


def test_the_psql_command_hides_a_password():
    command = psql_command("postgresql+psycopg://app:s3cret@db.example:5432/lead", None)
    assert "s3cret" not in command and command.endswith('"postgresql://app:***@db.example:5432/lead"')
