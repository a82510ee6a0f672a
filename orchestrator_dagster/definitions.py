"""Assembles the code location; everything it names lives in its own module."""
from __future__ import annotations

import os

from dagster import Definitions, EnvVar

from orchestrator_dagster.alerts import alerts_from_environment, check_alert_sensor, run_failure_alert_sensor
from orchestrator_dagster.assets import leads
from orchestrator_dagster.checks import health_checks_sensor, leads_health_checks
from orchestrator_dagster.jobs import ingest_job, touchpoints_job
from orchestrator_dagster.replay import replay_job
from orchestrator_dagster.reports import daily_reports_job, daily_reports_schedule, lead_report
from orchestrator_dagster.resources import DatabaseResource, VendorsResource
from orchestrator_dagster.retention import retention_job, retention_schedule
from orchestrator_dagster.schedules import touchpoints_schedule
from orchestrator_dagster.sensors import inbox_sensor, poll_sensors

defs = Definitions(
    assets=[leads, lead_report],
    asset_checks=[leads_health_checks],
    jobs=[ingest_job, touchpoints_job, replay_job, daily_reports_job, retention_job],
    sensors=[inbox_sensor, *poll_sensors, health_checks_sensor, check_alert_sensor, run_failure_alert_sensor],
    schedules=[touchpoints_schedule, daily_reports_schedule, retention_schedule],
    resources={
        "database": DatabaseResource(database_url=EnvVar("DATABASE_URL")),
        "vendors": VendorsResource(
            shopmonkey_base_url=EnvVar("SHOPMONKEY_BASE_URL"),
            twilio_api_base_url=EnvVar("TWILIO_API_BASE_URL"),
            sendgrid_api_base_url=EnvVar("SENDGRID_API_BASE_URL"),
            public_base_url=EnvVar("PUBLIC_BASE_URL"),
            app_secret_key=EnvVar("APP_SECRET_KEY"),
            # Optional, so not an EnvVar (which refuses to load when the variable is unset).
            inbound_parse_domain=os.environ.get("INBOUND_PARSE_DOMAIN", ""),
        ),
        "alerts": alerts_from_environment(),
    },
)
