"""Shared by the poll-at-scale tests: a database of their own (so that "every due shop"
means the test's shops) and shops written into it."""
from __future__ import annotations

import base64
import os
import uuid

import psycopg
import pytest
from psycopg.rows import dict_row

from tests.support import session_box
from lead_orchestrator.store.db import Database
from lead_orchestrator.store.shops import ShopChanges, create_shop
from tests.conftest import scratch_database


@pytest.fixture
def poll_db(pg):
    with scratch_database(pg, "pollscale") as url:
        database = Database(url, max_size=8, name="pollscale", box=session_box()).open()
        try:
            yield url, database
        finally:
            database.close()


def add_shops(url: str, count: int) -> dict[int, str]:
    """`count` active shops, each with a ShopMonkey key of its own: tenant id -> key."""
    keys = {}
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        for _ in range(count):
            key = "scale-" + uuid.uuid4().hex
            shop = create_shop(conn, f"scale-{uuid.uuid4().hex[:10]}", "Scale shop", ShopChanges(
                shopmonkey_api_key=key, webhook_secret="whsec_" + base64.b64encode(os.urandom(24)).decode(),
                sendgrid_api_key="SG.scale-key-0123456789abcdef", sendgrid_sender="service@scale.example",
                postal_address="1 Scale St, Austin, TX 78701"), session_box())
            keys[shop.id] = key
    return keys
