"""`lead-orchestrator up` writes DAGSTER_HOME/dagster.yaml from the project's: unchanged
with one poll shard, with enough sensor threads for more (docs/poll.md), and always a
configuration Dagster's own schema accepts."""
from __future__ import annotations

import yaml
from dagster._core.instance.config import dagster_instance_config

from lead_orchestrator.runtime.stack import PROJECT_ROOT, prepare_dagster_home, sensor_threads
from lead_orchestrator.settings import Settings


def _home(tmp_path, shards: int):
    settings = Settings(LEAD_DATA_DIR=str(tmp_path / f"data-{shards}"), POLL_SHARDS=shards)
    return prepare_dagster_home(settings)


def test_one_shard_keeps_the_projects_file(tmp_path):
    home = _home(tmp_path, 1)
    assert (home / "dagster.yaml").read_text() == (PROJECT_ROOT / "dagster.yaml").read_text()


def test_more_shards_get_a_sensor_thread_each_and_dagster_accepts_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_PG_URL", "postgresql+psycopg2://u:p@127.0.0.1:1/dagster")
    project = yaml.safe_load((PROJECT_ROOT / "dagster.yaml").read_text())
    shards = project["sensors"]["num_workers"] + 2
    home = _home(tmp_path, shards)
    written = yaml.safe_load((home / "dagster.yaml").read_text())
    assert written["sensors"]["num_workers"] == sensor_threads(shards) == shards + 1
    # Everything else as in the project's file.
    assert {k: v for k, v in written.items() if k != "sensors"} == {k: v for k, v in project.items() if k != "sensors"}
    config, _ = dagster_instance_config(str(home))
    assert config["sensors"]["num_workers"] == shards + 1
