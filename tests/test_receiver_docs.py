"""The receiver says what it is at `/`, serves its API docs with no CDN, and `/readyz`
says `degraded` when shops cannot reach their CRM."""
from __future__ import annotations

import re
from urllib.parse import urljoin

import httpx
import psycopg
import pytest
from psycopg.rows import dict_row
from pydantic import SecretStr

from lead_orchestrator.store.db import Database
from tests.analyst_support import add_shop, set_poll_state
from tests.conftest import scratch_database
from tests.support import session_box, ThreadedServer
from webhook_receiver.main import create_app

REFERENCES = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']|(?:url)\s*:\s*["']([^"']+)["']""")


def references(html: str) -> list[str]:
    return [a or b for a, b in REFERENCES.findall(html)]


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_docs_pages_load_everything_from_the_receiver(receiver, page):
    response = httpx.get(receiver.url + page, timeout=10)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    html = response.text
    assert "cdn." not in html and "fonts.googleapis" not in html
    found = references(html)
    assert any(r.endswith(".js") for r in found) and "/openapi.json" in html
    for ref in found:
        assert not re.match(r"^(https?:)?//", ref), f"{page} loads {ref} from elsewhere"
        asset = httpx.get(urljoin(receiver.url + page, ref), timeout=10)
        assert asset.status_code == 200, ref
        if ref.endswith(".js"):
            assert asset.headers["content-type"].split(";")[0] in ("text/javascript", "application/javascript")
            assert len(asset.content) > 100_000  # the real bundle, not a stub
    if page == "/docs":
        assert '"validatorUrl": null' in html  # Swagger UI would otherwise call validator.swagger.io


def test_only_the_docs_files_are_served(receiver):
    for path in ("/docs/assets/nothing.js", "/docs/assets/..%2F..%2Fcore.py", "/docs/assets/%2Fetc%2Fpasswd"):
        response = httpx.get(receiver.url + path, timeout=10)
        assert response.status_code == 404, path
        assert response.json()["error"]["code"] == "not_found"


def test_the_root_says_what_the_service_is(receiver):
    about = httpx.get(receiver.url + "/", timeout=10)
    assert about.status_code == 200
    body = about.json()
    assert body["service"] == "Lead Orchestrator webhook receiver"
    assert "ShopMonkey" in body["about"] and body["links"]["docs"] == "/docs"
    page = httpx.get(receiver.url + "/", headers={"Accept": "text/html"}, timeout=10)
    assert page.headers["content-type"].startswith("text/html")
    assert "<h1>Lead Orchestrator webhook receiver</h1>" in page.text and 'href="/docs"' in page.text


@pytest.fixture(scope="module")
def crm_health_db(pg):
    with scratch_database(pg, "readyz") as url:
        yield url


def test_readyz_is_degraded_while_a_shop_cannot_reach_its_crm(crm_health_db, settings):
    db = Database(crm_health_db, max_size=2, name="readyz", box=session_box()).open()
    try:
        with psycopg.connect(crm_health_db, autocommit=True, row_factory=dict_row) as admin:
            ok, refused, failing = (add_shop(admin, slug) for slug in ("ready-ok", "ready-refused", "ready-failing"))
            set_poll_state(admin, ok.id, health="ok")
            with ThreadedServer(create_app(settings, db)) as server:
                assert httpx.get(server.url + "/readyz", timeout=10).json() == {"status": "ready"}
                set_poll_state(admin, refused.id, health="unauthorized", consecutive_errors=2)
                set_poll_state(admin, failing.id, health="failing", consecutive_errors=5)
                answer = httpx.get(server.url + "/readyz", timeout=10)
                assert answer.status_code == 200  # webhooks are still stored: keep sending them
                body = answer.json()
                assert body["status"] == "degraded"
                assert body["crm_unreachable"] == {"unauthorized": 1, "failing": 1}
                assert [(s["shop"], s["health"], s["consecutive_errors"]) for s in body["shops"]] == [
                    ("ready-failing", "failing", 5), ("ready-refused", "unauthorized", 2)]
                admin.execute("UPDATE tenants SET active = false WHERE id = %s", (failing.id,))
                assert httpx.get(server.url + "/readyz", timeout=10).json()["crm_unreachable"] == {"unauthorized": 1}
            # With METRICS_TOKEN set, which shops is said only to those who hold it.
            guarded = settings.model_copy(update={"metrics_token": SecretStr("readyz-token")})
            with ThreadedServer(create_app(guarded, db)) as server:
                public = httpx.get(server.url + "/readyz", timeout=10).json()
                assert public == {"status": "degraded", "crm_unreachable": {"unauthorized": 1}}
                private = httpx.get(server.url + "/readyz", headers={"Authorization": "Bearer readyz-token"},
                                    timeout=10).json()
                assert [s["shop"] for s in private["shops"]] == ["ready-refused"]
    finally:
        db.close()
