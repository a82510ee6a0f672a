"""deploy/Dockerfile without Docker: its install steps are replayed (the files it copies,
its `uv sync` lines) into a fresh virtualenv, and every role's command line — the image's
CMD, the manifests' commands and the code server's as the Helm chart writes it — is run
from that virtualenv, in an empty working folder, against PostgreSQL: the migration
applies the schema, the receiver answers its probes, the code server passes the chart's
readiness check and serves the code location, the dispatcher starts with the cluster's
Dagster instance and stops cleanly."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.k8s_support import (
    DEPLOY, K8S_DIR, ROOT, code_server_command, config_map, dockerfile_stages, env_assignments, pod_spec, resource,
)
from tests.support import free_port, wait_for

SECRET_NAMES = ("DATABASE_URL", "LEAD_ENCRYPTION_KEY", "APP_SECRET_KEY", "METRICS_TOKEN", "PASSWORD", "SECRET", "TOKEN")


def command_of(kind: str, name: str) -> list[str]:
    [container] = pod_spec(resource(kind, name))["containers"]
    return container["command"]


def image_cmd() -> list[str]:
    [cmd] = [json.loads(args) for keyword, args in dockerfile_stages()[-1] if keyword == "CMD"]
    return cmd


def test_one_image_whose_default_command_is_the_receivers():
    build, runtime = dockerfile_stages()
    assert image_cmd() == command_of("Deployment", "lead-receiver")
    # No ENTRYPOINT: the manifests and the chart give the whole command line.
    assert "ENTRYPOINT" not in {keyword for keyword, _ in build + runtime}
    # The runtime stage has the virtualenv and nothing of the source tree.
    copies = [args for keyword, args in runtime if keyword == "COPY"]
    assert copies == ["--from=build /opt/lead-orchestrator/venv /opt/lead-orchestrator/venv"]
    assert env_assignments(dict(build)["ENV"])["UV_PROJECT_ENVIRONMENT"] == "/opt/lead-orchestrator/venv"
    # Installed from uv.lock as it is, without the dev tools.
    syncs = [args for keyword, args in build if keyword == "RUN" and args.startswith("uv sync")]
    assert syncs and all({"--frozen", "--no-dev"} <= set(args.split()) for args in syncs)
    # The uv that ./dev uses.
    dev_uv = [line.split("=", 1)[1] for line in (ROOT / "dev").read_text().splitlines() if line.startswith("UV_VERSION=")]
    assert [args for keyword, args in build if keyword == "ARG" and args.startswith("UV_VERSION=")] == [
        f"UV_VERSION={dev_uv[0]}"]


def test_the_image_runs_unprivileged_and_holds_no_secret():
    build, runtime = dockerfile_stages()
    [user] = [args for keyword, args in runtime if keyword == "USER"]
    assert int(user.split(":")[0]) >= 1000
    for keyword, args in build + runtime:
        if keyword in ("ENV", "ARG", "LABEL"):
            assert not any(name in args.upper() for name in SECRET_NAMES), f"{keyword} {args}"
    copied = " ".join(args for keyword, args in build if keyword == "COPY")
    assert ".env" not in copied and ".data" not in copied
    # The build context leaves local data, keys and virtualenvs out.
    ignored = set((DEPLOY / "Dockerfile.dockerignore").read_text().split())
    assert {".env", ".data", ".venv", ".tools", ".git"} <= ignored


# --- the install replayed, every role run from it ----------------------------------------

def uv_binary() -> str:
    local = ROOT / ".tools" / "bin" / "uv"
    return str(local) if local.exists() else shutil.which("uv")


@pytest.fixture(scope="module")
def image_venv(tmp_path_factory) -> Path:
    """The build stage replayed: the files it COPYs into a context of their own, then its
    `uv sync` lines with its environment (the virtualenv at a temporary path; bytecode
    compilation and file copying, which only make the image start faster, left out)."""
    build = dockerfile_stages()[0]
    context, venv = tmp_path_factory.mktemp("build-context"), tmp_path_factory.mktemp("image") / "venv"
    env = {**os.environ, **env_assignments(dict(build)["ENV"]), "UV_PROJECT_ENVIRONMENT": str(venv),
           "UV_COMPILE_BYTECODE": "0", "UV_LINK_MODE": "hardlink",
           "UV_PYTHON": os.path.realpath(sys.executable)}
    env.pop("VIRTUAL_ENV", None)
    for keyword, args in build:
        if keyword == "COPY":
            *sources, _ = args.split()
            for source in sources:
                target = context / source.rstrip("/")
                if (ROOT / source).is_dir():
                    shutil.copytree(ROOT / source, target, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    shutil.copyfile(ROOT / source, target)
        elif keyword == "RUN" and args.startswith("uv sync"):
            done = subprocess.run([uv_binary(), *shlex.split(args)[1:]], cwd=context, env=env,
                                  capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, done.stderr[-3000:]
    # Installed, not linked to the source tree: the image has no source tree.
    shutil.rmtree(context)
    return venv


@pytest.fixture(scope="module")
def empty_database(pg):
    if pg[0] is None:
        pytest.skip("needs the embedded cluster to create a database (TEST_DATABASE_URL is set)")
    names = {role: f"{role}_image_{uuid.uuid4().hex[:8]}" for role in ("app", "dagster")}
    with psycopg.connect(pg[0].url("postgres"), autocommit=True) as su:
        for name in names.values():
            su.execute(f'CREATE DATABASE "{name}"')
    yield pg[0], names
    with psycopg.connect(pg[0].url("postgres"), autocommit=True) as su:
        for name in names.values():
            su.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def pod_env(image_venv, empty_database, tmp_path_factory) -> dict[str, str]:
    """What a pod sees: the image's ENV, the ConfigMap, the Secrets — with this test's
    database, its own DAGSTER_HOME and LEAD_DATA_DIR, and vendors pointed at a closed
    loopback port (nothing here may reach the real vendors)."""
    server, names = empty_database
    runtime_env = {}
    for keyword, args in dockerfile_stages()[-1]:
        if keyword == "ENV":
            runtime_env.update(env_assignments(args))
    closed = f"http://127.0.0.1:{free_port()}"
    pod_tmp = tmp_path_factory.mktemp("pod-tmp")
    env = {
        **runtime_env, **config_map(),
        "PATH": f"{image_venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path_factory.mktemp("home")),
        "DAGSTER_HOME": str(tmp_path_factory.mktemp("dagster_home")),
        # The pod's only writable place, its /tmp emptyDir (see the write watch below).
        "TMPDIR": str(pod_tmp), "LEAD_DATA_DIR": str(pod_tmp / "lead-orchestrator"),
        "SHOPMONKEY_BASE_URL": closed, "TWILIO_API_BASE_URL": closed, "SENDGRID_API_BASE_URL": closed,
        "DATABASE_URL": server.url(names["app"]), "LEAD_ENCRYPTION_KEY": os.environ["LEAD_ENCRYPTION_KEY"],
        "APP_SECRET_KEY": "image-test-secret-key", "METRICS_TOKEN": "image-test-metrics-token",
        # Dagster's storage as deploy/k8s/dagster.yaml reads it (Unix socket: PGHOST).
        "DAGSTER_PG_HOST": "", "DAGSTER_PG_PORT": "5432", "DAGSTER_PG_USER": "postgres",
        "DAGSTER_PG_PASSWORD": "", "DAGSTER_PG_DB": names["dagster"], "PGHOST": server.socket_dir,
    }
    assert "PATH" not in runtime_env or runtime_env["PATH"].startswith("/opt/lead-orchestrator/venv/bin")
    return env


# Loaded by every Python process of a role (sitecustomize on PYTHONPATH): records each
# attempt to write, create, rename or delete a file outside the pod's /tmp stand-in, as
# a read-only root filesystem would refuse it.
WRITE_WATCH = """
import os, sys
_allowed = tuple(os.environ["POD_WRITABLE"].split(os.pathsep))
_log = open(os.environ["POD_WRITE_LOG"], "a", buffering=1)
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_CHANGES = {"os.mkdir", "os.rename", "os.replace", "os.remove", "os.rmdir", "os.symlink", "os.link",
            "os.truncate", "os.chmod", "os.chown", "os.utime", "shutil.copyfile", "shutil.rmtree"}

def _watch(event, args):
    if event == "open":
        path, mode, flags = args
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or bool((flags or 0) & _WRITE_FLAGS)
    elif event in _CHANGES:
        path, writing = args[-1] if event == "shutil.copyfile" else args[0], True
    else:
        return
    if writing and isinstance(path, (str, bytes, os.PathLike)):
        full = os.path.abspath(os.fsdecode(path))
        if not full.startswith(_allowed):
            _log.write(event + " " + full + "\\n")

sys.addaudithook(_watch)
"""


class Role:
    """One role's process, started as the image would start it, from an empty folder,
    with every file it writes outside the pod's /tmp recorded (`writes()`)."""

    def __init__(self, argv: list[str], env: dict[str, str], workdir: Path):
        name = f"{Path(argv[0]).name}-{uuid.uuid4().hex[:6]}"
        self.log, self.write_log, watch = workdir / f"{name}.log", workdir / f"{name}.writes", workdir / name
        watch.mkdir()
        (watch / "sitecustomize.py").write_text(WRITE_WATCH)
        self.write_log.touch()
        env = {**env, "PYTHONPATH": str(watch), "POD_WRITE_LOG": str(self.write_log),
               "POD_WRITABLE": os.pathsep.join([env["TMPDIR"], "/dev/", str(self.write_log)])}
        self.proc = subprocess.Popen(argv, env=env, cwd=workdir, stdout=self.log.open("wb"),
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def writes(self) -> list[str]:
        return self.write_log.read_text().splitlines()

    def stop(self, timeout: float = 60) -> int:
        # Generous: on a loaded machine a graceful shutdown can take tens of seconds.
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)  # whatever it left behind
            except ProcessLookupError:
                pass
            self.proc.wait()


def on_loopback(argv: list[str], port: int) -> list[str]:
    """The same command line, listening on 127.0.0.1:<port> instead of the pod's address."""
    assert "0.0.0.0" in argv
    replaced = ["127.0.0.1" if arg == "0.0.0.0" else arg for arg in argv]
    for flag in ("--port", "-p"):
        if flag in replaced:
            replaced[replaced.index(flag) + 1] = str(port)
    return replaced


@pytest.fixture(scope="module")
def migrated(pod_env, tmp_path_factory):
    """The migration Job's command, from the image, on an empty database."""
    job = Role(command_of("Job", "lead-migrate"), pod_env, tmp_path_factory.mktemp("workdir"))
    assert job.proc.wait(180) == 0, job.output()
    return job


def test_the_write_watch_sees_a_write_outside_tmp(pod_env, tmp_path):
    outside, inside = tmp_path / "outside.txt", Path(pod_env["TMPDIR"]) / "inside.txt"
    script = f"open({str(outside)!r}, 'w').write('x'); open({str(inside)!r}, 'w').write('x')"
    role = Role(["python", "-c", script], pod_env, tmp_path)
    assert role.proc.wait(30) == 0, role.output()
    assert role.writes() == [f"open {outside}"]


def test_migration_job_applies_the_schema_from_the_image(migrated, pod_env, tmp_path):
    assert "applied " in migrated.output()
    # The Job's root filesystem is read-only: it wrote nothing outside /tmp.
    assert migrated.writes() == []
    with psycopg.connect(pod_env["DATABASE_URL"]) as conn:
        assert conn.execute("SELECT to_regclass('inbox_events') IS NOT NULL").fetchone()[0]
    again = subprocess.run(command_of("Job", "lead-migrate"), env=pod_env, cwd=tmp_path, capture_output=True,
                           text=True, timeout=180)
    assert again.returncode == 0 and "schema is up to date" in again.stdout


def test_receiver_from_the_image_answers_its_probes(migrated, pod_env, tmp_path):
    port = free_port()
    receiver = Role(on_loopback(image_cmd(), port), pod_env, tmp_path)
    try:
        url = f"http://127.0.0.1:{port}"

        def answers():
            assert receiver.proc.poll() is None, receiver.output()
            try:
                return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(answers, timeout=60, message="the receiver's /healthz")
        assert httpx.get(f"{url}/readyz", timeout=5).json()["status"] == "ready"
        assert httpx.get(f"{url}/metrics", timeout=5).status_code == 401
        token = {"Authorization": f"Bearer {pod_env['METRICS_TOKEN']}"}
        assert httpx.get(f"{url}/metrics", headers=token, timeout=5).status_code == 200
    finally:
        # A clean shutdown on SIGTERM (uvicorn then exits by re-raising the signal): the
        # inbox writer has flushed what it held.
        assert receiver.stop() in (0, -signal.SIGTERM), receiver.output()
        assert "Application shutdown complete" in receiver.output()
    # Its root filesystem is read-only in the pod: it wrote nothing outside /tmp.
    assert receiver.writes() == []


def test_code_server_from_the_image_passes_the_charts_readiness_check(migrated, pod_env, tmp_path):
    from dagster._grpc.client import DagsterGrpcClient

    port = free_port()
    server = Role(on_loopback(code_server_command(), port), pod_env, tmp_path)
    try:
        # The chart's readiness probe for a code server, run from the image too.
        probe = ["dagster", "api", "grpc-health-check", "-p", str(port)]

        def healthy():
            assert server.proc.poll() is None, server.output()
            return subprocess.run(probe, env=pod_env, cwd=tmp_path, capture_output=True, timeout=60).returncode == 0

        wait_for(healthy, timeout=120, interval=1, message="the code server's health check")
        client = DagsterGrpcClient(port=port, host="127.0.0.1")
        repositories = json.dumps(client.list_repositories())
        assert "orchestrator_dagster.definitions" in repositories
    finally:
        server.stop()
    # Its root filesystem is read-only in the pod (dagster-values.yaml), with emptyDirs at
    # /tmp and DAGSTER_HOME, where it keeps a default local instance.
    assert all(Path(line.split(" ", 1)[1]).is_relative_to(pod_env["DAGSTER_HOME"]) for line in server.writes()), \
        server.writes()


def test_dispatcher_from_the_image_starts_with_the_clusters_dagster_instance(migrated, pod_env, tmp_path):
    # The ConfigMap mount: DAGSTER_HOME holds deploy/k8s/dagster.yaml alone.
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(K8S_DIR / "dagster.yaml", home / "dagster.yaml")
    dispatcher = Role(command_of("Deployment", "lead-dispatcher"), {**pod_env, "DAGSTER_HOME": str(home)}, tmp_path)
    try:
        def waiting():
            assert dispatcher.proc.poll() is None, dispatcher.output()
            return "waiting for inbox events" in dispatcher.output()

        wait_for(waiting, timeout=60, interval=0.2, message="the dispatcher to start")
        assert "leads materializations will not be recorded" not in dispatcher.output()
        # It tells the inbox sensor that a fast path is alive once it listens.
        with psycopg.connect(pod_env["DATABASE_URL"], autocommit=True) as conn:
            conn.execute("SET ROLE lead_app")
            wait_for(lambda: conn.execute("SELECT fast_path_alive()").fetchone()[0], timeout=30,
                     message="the dispatcher's alive lock")
    finally:
        assert dispatcher.stop() == 0, dispatcher.output()
    # Its root filesystem and DAGSTER_HOME (a ConfigMap) are read-only in the pod.
    assert dispatcher.writes() == []
