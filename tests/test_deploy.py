"""deploy/: the systemd units and the Procfile name the same five processes with the same
command lines, restart them whatever happens, and every command line is one its program
accepts (`<command> --help` succeeds, so no option is misspelt) naming code that exists;
the code server they start serves the code location deploy/workspace.yaml points at."""
from __future__ import annotations

import configparser
import importlib
import importlib.util
import os
import re
import shlex
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support import free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
INSTALL_PREFIX = "/opt/lead-orchestrator/"
BIN = Path(sys.executable).parent
# process -> its unit (the dispatcher's is a template: lead-dispatcher@1, @2 ...)
PROCESSES = {"receiver": "lead-receiver", "dispatcher": "lead-dispatcher@", "dagster-code": "lead-dagster-code",
             "dagster-daemon": "lead-dagster-daemon", "dagster-webserver": "lead-dagster-webserver"}
DISPATCHER_INSTANCES = ("lead-dispatcher@1.service", "lead-dispatcher@2.service")


def env_example() -> dict[str, str]:
    pairs = (line.split("=", 1) for line in (DEPLOY / "lead-orchestrator.env.example").read_text().splitlines()
             if line and not line.startswith("#"))
    return {key: value for key, value in pairs}


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string((DEPLOY / "systemd" / name).read_text())
    return parser


def procfile() -> dict[str, str]:
    lines = (DEPLOY / "Procfile").read_text().splitlines()
    return dict(m.groups() for m in (re.match(r"^([A-Za-z0-9_-]+):\s*(.+)$", line) for line in lines) if m)


def unit_argv(name: str, env: dict[str, str]) -> list[str]:
    exec_start = unit(f"{name}.service")["Service"]["ExecStart"]
    expanded = re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], exec_start)
    argv = shlex.split(expanded)
    assert argv[0].startswith(INSTALL_PREFIX + ".venv/bin/"), argv[0]
    return [str(BIN / Path(argv[0]).name), *argv[1:]]


def procfile_argv(command: str, env: dict[str, str]) -> list[str]:
    argv = shlex.split(re.sub(r"\$(\w+)", lambda m: env[m.group(1)], command))
    assert argv[0] == "exec"  # the shell is replaced: signals reach the program itself
    return [str(BIN / argv[1]), *argv[2:]]


def test_units_and_procfile_run_the_same_five_processes_and_always_restart_them():
    env = env_example()
    assert set(procfile()) == set(PROCESSES)
    target = unit("lead-orchestrator.target")
    wanted = {f"{u}.service" for u in PROCESSES.values() if not u.endswith("@")} | set(DISPATCHER_INSTANCES)
    assert set(target["Unit"]["Wants"].split()) == wanted
    for process, name in PROCESSES.items():
        parsed = unit(f"{name}.service")
        service = parsed["Service"]
        assert service["Restart"] == "always", name
        assert parsed["Unit"]["StartLimitIntervalSec"] == "0", name  # systemd never gives up
        assert service["KillMode"] == "control-group", name  # code servers and run workers go too
        assert service["EnvironmentFile"] == "/etc/lead-orchestrator/lead-orchestrator.env", name
        assert service["WorkingDirectory"] == INSTALL_PREFIX.rstrip("/"), name
        assert parsed["Install"]["WantedBy"] == "lead-orchestrator.target", name
        assert unit_argv(name, env) == procfile_argv(procfile()[process], env), process
        for variable in re.findall(r"\$\{(\w+)\}", service["ExecStart"]):
            assert variable in env, f"{name}: {variable} missing from the example environment file"


def test_units_name_their_database_connections_as_the_production_layout_does():
    """PGAPPNAME, so that pg_stat_activity counts connections per process alike under
    systemd and under `up --production` (docs/deployment.md, Database connections)."""
    from lead_orchestrator.runtime.layout import APP_NAMES

    for process, name in PROCESSES.items():
        expected = APP_NAMES[process] + ("-%i" if name.endswith("@") else "")
        assert unit(f"{name}.service")["Service"]["Environment"] == f"PGAPPNAME={expected}", name


def test_every_command_line_is_accepted_and_names_code_that_exists(tmp_path):
    env = {**os.environ, **env_example(), "PATH": f"{BIN}:{os.environ['PATH']}"}
    commands = {p: procfile()[p] for p in PROCESSES}

    def help_of(command: str) -> subprocess.CompletedProcess:
        # As honcho/foreman run it: by /bin/sh, from the project folder.
        return subprocess.run(["sh", "-c", f"{command} --help"], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=120)

    with ThreadPoolExecutor(max_workers=3) as pool:
        results = dict(zip(commands, pool.map(help_of, commands.values())))
    for process, result in results.items():
        assert result.returncode == 0 and "Usage" in result.stdout, f"{process}: {result.stderr[-2000:]}"

    for process, command in commands.items():
        argv = procfile_argv(command, env)
        for flag, value in zip(argv, argv[1:]):
            if flag == "-m":
                assert importlib.util.find_spec(value) is not None, (process, value)
            if flag == "-w":
                assert (ROOT / value).is_file(), (process, value)
        if "uvicorn" in argv[0]:
            module, _, attribute = argv[1].partition(":")
            assert callable(getattr(importlib.import_module(module), attribute)), argv[1]


def test_the_code_server_serves_the_location_the_workspace_names(tmp_path):
    """The code server's command line from the Procfile, and `dagster job list` through
    deploy/workspace.yaml (as the daemon and the webserver load it) finds our jobs."""
    port = free_port()
    env = {**os.environ, **env_example(), "PATH": f"{BIN}:{os.environ['PATH']}",
           "DAGSTER_CODE_SERVER_PORT": str(port), "DAGSTER_HOME": str(tmp_path)}
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")  # a local instance for the CLI
    log = tmp_path / "code.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(["sh", "-c", procfile()["dagster-code"]], cwd=ROOT, env=env, stdout=out,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: server.poll() is not None or f"Started Dagster code proxy server for module orchestrator_dagster"
                 f".definitions on port {port}" in log.read_text(errors="replace"),
                 timeout=90, interval=0.25, message="the code server")
        assert server.poll() is None, log.read_text()
        listed = subprocess.run([str(BIN / "dagster"), "job", "list", "-w", "deploy/workspace.yaml"], cwd=ROOT,
                                env=env, capture_output=True, text=True, timeout=120)
        assert listed.returncode == 0, listed.stderr[-3000:]
        assert "Job: ingest_job" in listed.stdout and "Job: touchpoints_job" in listed.stdout
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(server.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        server.wait()


def test_dev_prints_its_set_up_lines_to_stderr():
    result = subprocess.run([str(ROOT / "dev"), "cli", "--help"], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: lead-orchestrator"), result.stdout[:500]
    assert "==> syncing .venv from uv.lock" in result.stderr


@pytest.mark.parametrize("name", sorted(PROCESSES.values()))
def test_units_are_documented(name):
    assert name in (ROOT / "docs" / "deployment.md").read_text()
