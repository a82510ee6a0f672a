"""The deployment's CRM partner apps (`crm_apps`), managed by `lead-orchestrator crm-app`.

A Tekmetric partner app (one client id and secret) reads every shop that connected it,
so its credentials belong to the deployment, not to a shop. They are kept in the
database, the secret encrypted with the secret box like every shop secret, rather than
in environment variables: every process that talks to Tekmetric (dispatcher, Dagster
runs, the CLI checking a new shop's id) reads them with the shop it serves, without one
more secret to hand to each process and pod; `rotate-encryption-key` covers them; and
replacing them is one command that also releases the events parked while they were
missing or refused. Owner connection only: the application reads them through
`crm_app_credentials()` with its shop (store/shops.py).
"""
from __future__ import annotations

import psycopg
from pydantic import SecretStr

from lead_orchestrator.store.inbox import release_after_new_credentials
from lead_orchestrator.store.secret_box import SecretBox
from lead_orchestrator.store.shops import TekmetricApp

APP_CRMS = ("tekmetric",)


def set_crm_app(conn: psycopg.Connection, crm: str, client_id: str, client_secret: str, box: SecretBox) -> int:
    """Stores (or replaces) the CRM's partner app; the events its shops parked while the
    app was missing or refused go back to the queue. Returns how many were released."""
    if crm not in APP_CRMS:
        raise ValueError(f"only {', '.join(APP_CRMS)} has a partner app")
    client_id, client_secret = client_id.strip(), client_secret.strip()
    if not client_id or not client_secret:
        raise ValueError("a partner app needs a client id and a client secret")
    with conn.transaction():
        conn.execute("""INSERT INTO crm_apps (crm, client_id, client_secret) VALUES (%s, %s, %s)
                        ON CONFLICT (crm) DO UPDATE SET client_id = EXCLUDED.client_id,
                            client_secret = EXCLUDED.client_secret, updated_at = now()""",
                     (crm, client_id, box.encrypt(client_secret)))
        tenants = [r["id"] for r in conn.execute("SELECT id FROM tenants WHERE crm = %s", (crm,)).fetchall()]
        return sum(release_after_new_credentials(conn, tenant_id) for tenant_id in tenants)


def get_crm_app(conn: psycopg.Connection, crm: str, box: SecretBox) -> TekmetricApp | None:
    row = conn.execute("SELECT client_id, client_secret FROM crm_apps WHERE crm = %s", (crm,)).fetchone()
    if row is None:
        return None
    secret = box.decrypt(row["client_secret"], what=f"the {crm} partner app's client secret")
    return TekmetricApp(client_id=row["client_id"], client_secret=SecretStr(secret))
