"""Tekmetric shops for tests: the deployment's partner app (in the stand-in and in
`crm_apps`), and shops connected to it whose webhooks reach the session's receiver."""
from __future__ import annotations

import uuid

import psycopg

from tests.support import session_box
from lead_orchestrator.store.crm_apps import get_crm_app, set_crm_app
from lead_orchestrator.store.shops import get_shop, new_tekmetric_webhook_token

APP_CLIENT_ID = "lead-orchestrator-tests"
APP_SECRET = "tm-secret-" + uuid.uuid4().hex  # one for the session


def configure_app(standins, database_url: str) -> tuple[str, str]:
    """Again for every test that needs it: other tests reset the session's stand-in."""
    standins.tekmetric.add_app(APP_CLIENT_ID, APP_SECRET)
    with psycopg.connect(database_url, autocommit=True, row_factory=psycopg.rows.dict_row) as conn:
        stored = get_crm_app(conn, "tekmetric", session_box())
        if stored is None or (stored.client_id, stored.client_secret.get_secret_value()) != (APP_CLIENT_ID, APP_SECRET):
            set_crm_app(conn, "tekmetric", APP_CLIENT_ID, APP_SECRET, session_box())
    return APP_CLIENT_ID, APP_SECRET


def webhook_url(receiver_url: str, token: str) -> str:
    return f"{receiver_url}/webhooks/tekmetric/{token}"


def connect_tekmetric_shop(make_shop, standins, receiver_url: str, database_url: str, **overrides):
    """A shop of the app in the stand-in, created in the database as a Tekmetric shop
    with a fresh webhook URL token that the stand-in posts to. Returns (shop, token)."""
    stand_in_shop = standins.tekmetric.add_shop(client_id=APP_CLIENT_ID)
    shop = make_shop(crm="tekmetric", tekmetric_shop_id=stand_in_shop.id, **overrides)
    with psycopg.connect(database_url, autocommit=True, row_factory=psycopg.rows.dict_row) as conn:
        token = new_tekmetric_webhook_token(conn, shop.slug, session_box())
        shop = get_shop(conn, shop.slug, session_box())
    standins.tekmetric.add_shop(stand_in_shop.id, webhook_url=webhook_url(receiver_url, token))
    return shop, token
