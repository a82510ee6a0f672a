"""No secret in any log of a full run: a signed webhook through the receiver, the real
Dagster daemon's sensor and ingest run, the first SMS and email, a shop whose
ShopMonkey key was revoked (an error path), and an in-process ingest run. The
captured output of this process, its log records, the daemon's log file, and the
Dagster event logs and run configs of every run are searched for every secret value."""
from __future__ import annotations

import logging
import os

import pytest

from lead_orchestrator import redaction
from lead_orchestrator.store.shops import SECRET_FIELDS
from tests.conftest import emails_to, sms_to
from tests.support import wait_for

pytestmark = pytest.mark.daemon


def _secrets_of(*shops) -> dict[str, str]:
    return {f"{shop.slug}.{field}": getattr(shop, field).get_secret_value() for shop in shops for field in SECRET_FIELDS}


def _event_status(admin, shop) -> list[str]:
    return [r["status"] for r in admin.execute("SELECT status FROM inbox_events WHERE tenant_id = %s",
                                               (shop.id,)).fetchall()]


def test_no_secret_in_any_log_of_an_end_to_end_run(dagster_daemon, dagster_instance, connected_shop, standins,
                                                    admin, db, settings, caplog, capfd):
    from dagster import serialize_value

    from lead_orchestrator.store.inbox import store_event
    from orchestrator_dagster.definitions import defs

    caplog.set_level(logging.DEBUG)
    good, revoked, in_process = connected_shop(), connected_shop(), connected_shop()
    secrets = _secrets_of(good, revoked, in_process)
    secrets["APP_SECRET_KEY"] = settings.secret_key()
    secrets["LEAD_ENCRYPTION_KEY"] = os.environ["LEAD_ENCRYPTION_KEY"]

    # 1. The happy path, through the receiver and the daemon.
    created = standins.shopmonkey.create_order(good.shopmonkey_api_key.get_secret_value(), wait_webhook=True)
    phone = created["customer"]["phoneNumbers"][0]["number"]
    email = created["customer"]["emails"][0]["email"]
    wait_for(lambda: sms_to(standins, phone) and emails_to(standins, email), timeout=45, message="first touches")

    # 2. An error path: ShopMonkey refuses the shop's key while the event is ingested.
    key = revoked.shopmonkey_api_key.get_secret_value()
    order = standins.shopmonkey.create_order(key, emit_webhook=False)["order"]
    standins.shopmonkey.revoke_key(key)
    standins.shopmonkey.send_webhook(order["id"], "INSERT", wait=True)
    wait_for(lambda: _event_status(admin, revoked) == ["parked"], timeout=45, message="the revoked shop's event parked")

    # 3. An ingest run in this process (its logs go through this process's handlers).
    in_order = standins.shopmonkey.create_order(in_process.shopmonkey_api_key.get_secret_value(),
                                                emit_webhook=False)["order"]
    with db.tenant_tx(in_process.id) as conn:
        store_event(conn, source="manual", operation="INSERT", table="order", data=in_order,
                    payload={"data": in_order})
    result = defs.resolve_job_def("ingest_job").execute_in_process(instance=dagster_instance)
    assert result.success
    wait_for(lambda: _event_status(admin, in_process) == ["done"], timeout=45, message="in-process event done")

    # Everything that was written anywhere.
    captured = capfd.readouterr()
    sources = {
        "stdout/stderr": captured.out + captured.err,
        "log records": caplog.text + "\n".join(r.getMessage() for r in caplog.records),
        "daemon log": dagster_daemon[1].read_text(errors="replace"),
    }
    runs = dagster_instance.get_runs()
    assert len(runs) >= 3
    sources["dagster runs"] = "\n".join(serialize_value(run) + "\n".join(
        serialize_value(entry) for entry in dagster_instance.all_logs(run.run_id)) for run in runs)
    # The leads history points and the health check results are runless events.
    sources["dagster runless events"] = "\n".join(serialize_value(entry) for entry in dagster_instance.all_logs(""))
    assert "PIPELINE_SUCCESS" in sources["dagster runs"]
    assert "ASSET_MATERIALIZATION" in sources["dagster runless events"]
    assert "ShopMonkey rejected" in sources["daemon log"] + sources["dagster runs"] + \
        admin.execute("SELECT error FROM inbox_events WHERE tenant_id = %s", (revoked.id,)).fetchone()["error"]
    # The SendGrid client logs its Authorization header at DEBUG: the redactor had work to do.
    assert redaction.MASK in sources["log records"]
    for where, text in sources.items():
        assert text, where
        leaked = [name for name, value in secrets.items() if value in text]
        assert not leaked, f"{where} contains {leaked}"
