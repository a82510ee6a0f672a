"""The daily per-shop report through the real Dagster job: two PNG charts in markdown
metadata (valid images: PNG signature, decoded by Pillow), and figures that match the
rows of that shop's day."""
from __future__ import annotations

import base64
import datetime as dt
import io
import re
import subprocess
import sys
from pathlib import Path

from dagster import AssetKey, AssetRecordsFilter, build_schedule_context

from orchestrator_dagster.definitions import defs
from orchestrator_dagster.reports import bucket_counts, daily_reports_schedule, previous_day
from tests.health_support import UTC, add_lead

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_of(markdown: str) -> bytes:
    match = re.fullmatch(r"!\[[^\]]*\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", markdown)
    assert match, markdown[:80]
    return base64.b64decode(match.group(1))


def test_buckets_put_each_latency_in_one_bar():
    counts = dict(bucket_counts([0.5, 4.99, 5, 29.9, 30, 61, 4000]))
    assert counts["0–5s"] == 2 and counts["5–10s"] == 1 and counts["20–30s"] == 1
    assert counts["30s–1m"] == 1 and counts["1–2m"] == 1 and counts["≥1h"] == 1
    assert sum(counts.values()) == 7


def test_the_report_day_is_the_shops_previous_day():
    now = dt.datetime(2026, 11, 21, 10, 0, tzinfo=UTC)
    assert previous_day(now, "America/Los_Angeles") == dt.date(2026, 11, 20)
    assert previous_day(dt.datetime(2026, 11, 21, 3, 0, tzinfo=UTC), "America/Chicago") == dt.date(2026, 11, 19)
    request = daily_reports_schedule.evaluate_tick(build_schedule_context(scheduled_execution_time=now))
    assert request.run_requests[0].run_key == "daily_reports_job-20261121"


def test_the_report_draws_the_days_leads(dagster_instance, db, make_shop):
    from PIL import Image

    shop = make_shop(time_zone="America/Chicago")
    tz = shop.tz
    day = dt.date(2026, 11, 18)
    noon = dt.datetime.combine(day, dt.time(12), tz)
    add_lead(db, shop, created=noon, first_seen=noon, sent_after_s=4, delivered=True)
    add_lead(db, shop, created=noon, first_seen=noon, sent_after_s=12, delivered=True, status="stopped",
             reason="replied")
    add_lead(db, shop, created=noon, first_seen=noon, sent_after_s=45, status="converted", reason="authorized")
    add_lead(db, shop, created=noon, first_seen=noon, sent_after_s=20, status="stopped", reason="opted_out")
    add_lead(db, shop, created=noon, first_seen=noon, deferred=True, sent_after_s=10 * 3600)
    add_lead(db, shop, created=noon, first_seen=noon)  # never touched
    late = dt.datetime.combine(day, dt.time(23, 30), tz)
    add_lead(db, shop, created=late, first_seen=late + dt.timedelta(hours=1), sent_after_s=5)  # the next day's

    result = defs.get_job_def("daily_reports_job").execute_in_process(
        instance=dagster_instance,
        run_config={"ops": {"make_daily_reports": {"config": {"shops": [shop.slug], "day": day.isoformat()}}}})
    assert result.success
    [record] = dagster_instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey("lead_report"), asset_partitions=[shop.slug]), limit=5).records
    metadata = {k: v.value for k, v in record.asset_materialization.metadata.items()}

    assert metadata["day"] == "2026-11-18" and metadata["time_zone"] == "America/Chicago"
    assert (metadata["leads_total"], metadata["touched"], metadata["delivered"]) == (6, 5, 2)
    assert (metadata["replied"], metadata["converted"], metadata["opted_out"]) == (1, 1, 1)
    assert metadata["deferred_quiet_hours"] == 1
    assert (metadata["sla_eligible"], metadata["sla_met"]) == (5, 3)  # 4, 12, 20 s; not 45 s, nor never
    assert metadata["first_touch_p50_s"] == 16.0  # median of 4, 12, 20, 45
    assert record.asset_materialization.description == "2026-11-18: 6 leads, 5 touched, 60% within 30 s of the " \
                                                       "estimate's creation"
    for name in ("first_touch_chart", "funnel_chart"):
        png = png_of(metadata[name])
        assert png.startswith(PNG_SIGNATURE)
        image = Image.open(io.BytesIO(png))
        image.load()  # decodes every pixel
        assert image.format == "PNG" and image.width > 300 and image.height > 150


def test_the_code_location_does_not_import_matplotlib():
    # In a fresh interpreter: every run and sensor process imports the code location.
    code = "import sys, orchestrator_dagster.definitions; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).parent.parent)
    assert out.stdout.strip() == "False"
