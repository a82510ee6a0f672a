"""Keeps `lead-orchestrator up`'s processes running.

A child that exits is started again after a capped exponential backoff (1 s, 2 s, 4 s …
up to `max_delay`; a run that lasted `stable_after` seconds starts the backoff over).
A child that exits `crash_loop_exits` times within `crash_loop_window` seconds, or that
many times in a row without running `stable_after` seconds (a slow starter), is in a
crash loop: that is reported once, loudly, with the end of its log, on the console and
in DATA_DIR/logs/supervisor.log; it is still retried at the capped pace and the other
children are never touched. `DATA_DIR/supervisor.json` holds each child's pid and state
(read by the tests and by whoever wants to know what runs).

Why not supervisord or circus: supervisord gives up on a program after `startretries`
quick failures (state FATAL) and restarts a program that ran a while without any delay,
so a database down for a minute would leave the dispatcher dead for good; neither can
watch a PostgreSQL that `pg_ctl` started in the background, nor re-register the demo
shop with the stand-ins after they restart; both bring a daemon, a config file and an
RPC socket of their own. The loop below is one thread and a few dozen lines of policy.
A real deployment uses systemd (deploy/systemd/), which does all of this itself.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, Protocol

# Once its leader exits, what is left of a child's process group (a Dagster daemon's code
# server and run workers) gets SIGTERM, then SIGKILL after this many seconds: a run worker
# may record that it was interrupted; a code server, which ignores SIGTERM, does not linger.
ORPHAN_GRACE_SECONDS = 5.0


@dataclass(frozen=True)
class RestartPolicy:
    initial_delay: float = 1.0
    max_delay: float = 30.0
    stable_after: float = 30.0
    crash_loop_exits: int = 4
    crash_loop_window: float = 60.0

    def delay(self, consecutive_failures: int) -> float:
        """Seconds to wait before the next start, after that many short runs in a row."""
        return min(self.max_delay, self.initial_delay * 2 ** max(0, consecutive_failures - 1))


class Child(Protocol):
    name: str
    log_path: Path | None

    def launch(self) -> int:
        """Starts it; returns its pid. Raises if it cannot be started."""

    def ended(self) -> str | None:
        """None while it runs; once it is gone, how it ended ("exit code 1", "killed by SIGKILL")."""

    def after_exit(self) -> None:
        """Called once it has ended: clean up what it left behind."""

    def tick(self) -> None:
        """Called on every supervisor tick (finishes clean-ups started by after_exit)."""

    def stop(self, timeout: float) -> None:
        """Stops it for good (Ctrl-C)."""


def describe_returncode(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def signal_group(pgid: int, sig: int) -> bool:
    """Signals a whole process group; False when nothing is left of it."""
    try:
        os.killpg(pgid, sig)  # the group outlives its leader while members remain
        return True
    except ProcessLookupError:
        return False


def stop_process_groups(procs: list[subprocess.Popen], timeout: float = 15.0) -> None:
    """SIGTERM to each child's process group (children started with start_new_session),
    up to `timeout` for the children to exit, then SIGKILL to whatever is left of each
    group: a Dagster daemon's code server ignores SIGTERM and outlived its daemon (we
    found them orphaned, 150 MB each, after test and benchmark runs)."""
    for proc in procs:
        signal_group(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        signal_group(proc.pid, signal.SIGKILL)
        proc.wait()
    # SIGKILL is delivered at once, but a process takes a moment to go: return only once
    # the groups are empty, so that whoever stopped us finds nothing left running.
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and any(signal_group(p.pid, 0) for p in procs):
        time.sleep(0.05)


class ProcessChild:
    """A command in its own session (so its process group can be signalled as a whole),
    its output appended to LOG_DIR/<name>.log."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], cwd: Path, log_dir: Path):
        self.name, self.argv, self.env, self.cwd = name, argv, env, cwd
        self.log_path: Path | None = log_dir / f"{name}.log"
        self.proc: subprocess.Popen | None = None
        self._orphans: list[tuple[int, float]] = []  # (pgid, SIGKILL at)

    def launch(self) -> int:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== {datetime.now().isoformat(timespec='seconds')} starting {self.name}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(self.argv, env=self.env, cwd=self.cwd, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        return self.proc.pid

    def ended(self) -> str | None:
        code = self.proc.poll() if self.proc else None
        return None if code is None else describe_returncode(code)

    def after_exit(self) -> None:
        if self.proc is not None and signal_group(self.proc.pid, signal.SIGTERM):
            self._orphans.append((self.proc.pid, time.monotonic() + ORPHAN_GRACE_SECONDS))

    def tick(self) -> None:
        now = time.monotonic()
        for pgid, kill_at in list(self._orphans):
            if now >= kill_at:
                signal_group(pgid, signal.SIGKILL)
                self._orphans.remove((pgid, kill_at))

    def kill_orphans(self) -> None:
        for pgid, _ in self._orphans:
            signal_group(pgid, signal.SIGKILL)
        self._orphans.clear()

    def stop(self, timeout: float) -> None:
        self.kill_orphans()
        if self.proc is not None:
            stop_process_groups([self.proc], timeout)


@dataclass
class _Slot:
    child: Child
    ready: Callable[[], bool] | None
    on_ready: Callable[[], None] | None
    pid: int | None = None
    running: bool = False
    started_at: float = 0.0
    starts: int = 0
    ready_seen: bool = False
    hook_done: bool = False
    hook_retry_at: float = 0.0
    hook_error: str | None = None
    failures: int = 0  # short runs in a row
    exits: deque = field(default_factory=deque)  # monotonic times of recent exits
    next_start: float | None = None
    crash_loop: bool = False
    held_reported: bool = False
    last_exit: str | None = None


class Supervisor:
    def __init__(self, log_dir: Path, state_file: Path, policy: RestartPolicy = RestartPolicy(),
                 hold_dir: Path | None = None, say: Callable[[str], None] = print):
        self.log_dir, self.state_file, self.policy, self.hold_dir = log_dir, state_file, policy, hold_dir
        self._say = say
        self._slots: dict[str, _Slot] = {}
        self._lock = threading.Lock()

    # --- setting up -------------------------------------------------------------------
    def add(self, child: Child, *, ready: Callable[[], bool] | None = None,
            on_ready: Callable[[], None] | None = None, running_pid: int | None = None) -> None:
        """Supervise `child`: `ready` says when it serves (probed until true after each
        start), `on_ready` runs once it does (again after every restart). `running_pid`:
        it was started already (the embedded database); else it starts at the next tick."""
        slot = _Slot(child, ready, on_ready)
        if running_pid is not None:
            slot.pid, slot.running, slot.started_at, slot.starts = running_pid, True, time.monotonic(), 1
        else:
            slot.next_start = 0.0
        self._slots[child.name] = slot

    def is_ready(self, name: str) -> bool:
        slot = self._slots[name]
        return slot.running and (slot.ready is None or slot.ready_seen) and (slot.on_ready is None or slot.hook_done)

    def pid(self, name: str) -> int | None:
        return self._slots[name].pid

    # --- the loop ---------------------------------------------------------------------
    def tick(self) -> None:
        changed = False
        for slot in self._slots.values():
            slot.child.tick()
            if slot.running:
                how = slot.child.ended()
                if how is None:
                    changed |= self._check_running(slot)
                else:
                    self._exited(slot, how)
                    changed = True
            elif slot.next_start is not None and time.monotonic() >= slot.next_start:
                reported = slot.held_reported
                if self._held(slot):
                    changed |= not reported  # supervisor.json says "held" from now on
                    continue
                self._launch(slot)
                changed = True
        if changed:
            self._write_state()

    def wait_until(self, condition: Callable[[], bool], timeout: float, stop: threading.Event,
                   interval: float = 0.2) -> bool:
        """Supervises until `condition()` holds (True), `timeout` passes or `stop` is set (False)."""
        deadline = time.monotonic() + timeout
        while not stop.is_set():
            self.tick()
            if condition():
                return True
            if time.monotonic() >= deadline:
                return False
            stop.wait(interval)
        return False

    def run(self, stop: threading.Event, interval: float = 0.2) -> None:
        while not stop.is_set():
            self.tick()
            stop.wait(interval)

    def stop_all(self, timeout: float = 15.0) -> None:
        """Stops every child (process groups: SIGTERM, then SIGKILL after `timeout`)."""
        # Processes first, all at once (one SIGTERM round, one wait), then the rest (the
        # embedded database, which they were using).
        processes = [s.child for s in self._slots.values() if isinstance(s.child, ProcessChild)]
        for child in processes:
            child.kill_orphans()
        stop_process_groups([c.proc for c in processes if c.proc is not None], timeout)
        for slot in self._slots.values():
            if not isinstance(slot.child, ProcessChild):
                slot.child.stop(timeout)
            slot.running = False
        self._write_state()

    # --- what happens to one child ----------------------------------------------------
    def _launch(self, slot: _Slot) -> None:
        slot.next_start = None
        slot.held_reported = False
        try:
            slot.pid = slot.child.launch()
        except Exception as exc:  # noqa: BLE001 - a child that cannot start is one that exited
            slot.running, slot.started_at = True, time.monotonic()
            self._exited(slot, f"failed to start: {exc}")
            return
        slot.running, slot.started_at = True, time.monotonic()
        slot.ready_seen = slot.hook_done = False
        slot.hook_retry_at, slot.hook_error = 0.0, None
        slot.starts += 1
        if slot.starts > 1:
            self._report(f"{slot.child.name} restarted (pid {slot.pid}, start {slot.starts})")

    def _check_running(self, slot: _Slot) -> bool:
        changed = False
        now = time.monotonic()
        if not slot.ready_seen and slot.ready is not None and slot.ready():
            slot.ready_seen = changed = True
            if slot.starts > 1:
                self._report(f"{slot.child.name} is serving again, {now - slot.started_at:.1f}s after its restart")
        if slot.on_ready is not None and not slot.hook_done and (slot.ready is None or slot.ready_seen) \
                and now >= slot.hook_retry_at:
            try:
                slot.on_ready()
                slot.hook_done = changed = True
            except Exception as exc:  # noqa: BLE001 - retried; the child itself runs
                slot.hook_retry_at = now + 2.0
                if str(exc) != slot.hook_error:  # once per distinct error, not every 2 s
                    slot.hook_error = str(exc)
                    self._report(f"{slot.child.name}: set-up after start failed ({exc}); trying again every 2 s")
        if slot.failures and now - slot.started_at >= self.policy.stable_after:
            if slot.crash_loop:
                self._report(f"{slot.child.name} recovered from its crash loop: running for "
                             f"{self.policy.stable_after:.0f}s (pid {slot.pid})")
            slot.failures, slot.crash_loop, changed = 0, False, True
        return changed

    def _exited(self, slot: _Slot, how: str) -> None:
        now = time.monotonic()
        ran = now - slot.started_at
        slot.running, slot.last_exit = False, how
        slot.child.after_exit()
        slot.exits.append(now)
        while slot.exits and now - slot.exits[0] > self.policy.crash_loop_window:
            slot.exits.popleft()
        slot.failures = slot.failures + 1 if ran < self.policy.stable_after else 1
        delay = self.policy.delay(slot.failures)
        slot.next_start = now + delay
        name = slot.child.name
        looping = max(len(slot.exits), slot.failures) >= self.policy.crash_loop_exits
        if looping and not slot.crash_loop:
            slot.crash_loop = True
            self._report(
                f"CRASH LOOP: {name} exited {slot.failures} times in a row, {len(slot.exits)} within the last "
                f"{self.policy.crash_loop_window:.0f}s (last: {how} after {ran:.1f}s). The other processes "
                f"keep running; {name} is retried every {self.policy.max_delay:.0f}s at most."
                + self._log_excerpt(slot))
        elif slot.crash_loop:
            self._report(f"{name} still failing ({how} after {ran:.1f}s); next try in {delay:.0f}s")
        else:
            self._report(f"{name} stopped unexpectedly ({how} after {ran:.1f}s); restarting in {delay:.0f}s"
                         + self._log_excerpt(slot, lines=8))

    def _held(self, slot: _Slot) -> bool:
        """An operator's hold file (DATA_DIR/hold/<name>) keeps a stopped child stopped."""
        if self.hold_dir is None or not (self.hold_dir / slot.child.name).exists():
            return False
        if not slot.held_reported:
            slot.held_reported = True
            self._report(f"{slot.child.name} is held: not restarting it while {self.hold_dir / slot.child.name} exists")
        return True

    # --- reporting --------------------------------------------------------------------
    def _log_excerpt(self, slot: _Slot, lines: int = 20) -> str:
        path = slot.child.log_path
        if path is None or not path.exists():
            return ""
        tail = path.read_text(errors="replace").splitlines()[-lines:]
        return f"\n    last lines of {path}:\n" + "\n".join(f"    | {line}" for line in tail)

    def _report(self, message: str) -> None:
        with self._lock:
            self._say(message)
            self.log_dir.mkdir(parents=True, exist_ok=True)
            with open(self.log_dir / "supervisor.log", "a") as log:
                log.write(f"{datetime.now().isoformat(timespec='seconds')} {message}\n")

    def _write_state(self) -> None:
        state = {"pid": os.getpid(), "updated": datetime.now().isoformat(timespec="seconds"), "children": {
            name: {"pid": s.pid, "state": ("running" if s.running else "held" if s.held_reported else "waiting"),
                   "ready": s.running and (s.ready is None or s.ready_seen), "starts": s.starts, "crash_loop": s.crash_loop,
                   "last_exit": s.last_exit}
            for name, s in self._slots.items()}}
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_name(f".{self.state_file.name}.tmp")
        tmp.write_text(json.dumps(state, indent=2))
        os.replace(tmp, self.state_file)
