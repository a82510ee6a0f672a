"""Assembles the code location; everything it names lives in its own module.

The deployment's settings are read once, here, when Dagster loads the location; the
parts that depend on them (the windows' first day, the poll's shards, pool sizes,
retention) are built from that object. Secrets and URLs reach the resources as EnvVar,
so Dagster's UI shows their names, never their values.
"""
from __future__ import annotations

import os

from dagster import Definitions, EnvVar

from lead_orchestrator.settings import load_settings
from orchestrator_dagster.alerts import alerts_from_environment, check_alert_sensor, run_failure_alert_sensor
from orchestrator_dagster.assets import leads
from orchestrator_dagster.checks import health_checks_sensor, leads_health_checks
from orchestrator_dagster.jobs import build_touchpoints_job, ingest_job
from orchestrator_dagster.replay import replay_job
from orchestrator_dagster.reports import daily_reports_job, daily_reports_schedule, lead_report
from orchestrator_dagster.resources import DatabaseResource, RetentionPolicy, VendorsResource
from orchestrator_dagster.retention import retention_job, retention_schedule
from orchestrator_dagster.schedules import build_touchpoints_schedule
from orchestrator_dagster.sensors import build_poll_sensors, inbox_sensor
from orchestrator_dagster.touchpoint_windows import touchpoint_windows

settings = load_settings()
touchpoints_job = build_touchpoints_job(touchpoint_windows(settings))

defs = Definitions(
    assets=[leads, lead_report],
    asset_checks=[leads_health_checks],
    jobs=[ingest_job, touchpoints_job, replay_job, daily_reports_job, retention_job],
    sensors=[inbox_sensor, *build_poll_sensors(settings), health_checks_sensor, check_alert_sensor,
             run_failure_alert_sensor],
    schedules=[build_touchpoints_schedule(touchpoints_job), daily_reports_schedule, retention_schedule],
    resources={
        "database": DatabaseResource(database_url=EnvVar("DATABASE_URL"),
                                     encryption_keys=EnvVar("LEAD_ENCRYPTION_KEY"),
                                     pool_size=settings.dagster_db_pool_size),
        "vendors": VendorsResource(
            shopmonkey_base_url=EnvVar("SHOPMONKEY_BASE_URL"),
            twilio_api_base_url=EnvVar("TWILIO_API_BASE_URL"),
            sendgrid_api_base_url=EnvVar("SENDGRID_API_BASE_URL"),
            public_base_url=EnvVar("PUBLIC_BASE_URL"),
            app_secret_key=EnvVar("APP_SECRET_KEY"),
            # Optional, so not an EnvVar (which refuses to load when the variable is unset).
            inbound_parse_domain=os.environ.get("INBOUND_PARSE_DOMAIN", ""),
        ),
        "retention": RetentionPolicy(run_retention_days=settings.run_retention_days,
                                     inbox_retention_days=settings.inbox_retention_days),
        "alerts": alerts_from_environment(),
    },
)
