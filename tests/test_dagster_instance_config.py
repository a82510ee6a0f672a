"""dagster.yaml as Dagster itself reads it: valid against Dagster's instance schema, with
run monitoring on (so a run stuck starting, cancelling or past its maximum runtime is
marked failed) and the monitoring daemon among the daemons `dagster-daemon run` starts."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_dagster_yaml_passes_dagsters_own_schema(tmp_path):
    from dagster._core.errors import DagsterInvalidConfigError
    from dagster._core.instance.config import dagster_instance_config

    shutil.copyfile(ROOT / "dagster.yaml", tmp_path / "dagster.yaml")
    config, _ = dagster_instance_config(str(tmp_path))
    assert config["run_monitoring"]["enabled"] is True

    # The same loader refuses a key the schema does not know: the check above means something.
    (tmp_path / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text()
                                           + "\nrun_monitoring_typo:\n  enabled: true\n")
    with pytest.raises(DagsterInvalidConfigError):
        dagster_instance_config(str(tmp_path))


def test_the_instance_monitors_runs(dagster_instance):
    instance = dagster_instance
    assert instance.run_monitoring_enabled
    assert "MONITORING" in instance.get_required_daemon_types()
    # Runs here take seconds (the longest, a touch-point window, minutes): a run not started
    # after 3 minutes, or still "started" after an hour, is dead.
    assert 0 < instance.run_monitoring_start_timeout_seconds <= 300
    assert 0 < instance.run_monitoring_cancel_timeout_seconds <= 300
    assert 600 <= instance.run_monitoring_max_runtime_seconds <= 4 * 3600
    assert instance.run_monitoring_poll_interval_seconds <= 60
    # The default run launcher cannot resume a run; asking it to would refuse to start.
    assert instance.run_monitoring_max_resume_run_attempts == 0
