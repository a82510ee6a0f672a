-- depends: 0015_crm_pace_grant
-- A shop's CRM and its credentials in a per-CRM shape (docs/tekmetric.md, "Shops").
--
-- tenants.crm says which CRM the shop runs; each CRM keeps what it needs in a table of
-- its own, one row per shop, whose (tenant_id, crm) must name a shop of that CRM:
--   shopmonkey_credentials  the API key and the webhook signing secret (both encrypted
--                           with the secret box, carried over from tenants unchanged)
--   tekmetric_credentials   the Tekmetric shop id and the SHA-256 of the shop's webhook
--                           URL token (only what checks a token: the token itself is
--                           shown once, by the CLI, and never stored)
-- The Tekmetric partner app (client id and secret) belongs to the deployment, not to a
-- shop: crm_apps, one row per CRM, the secret encrypted like every other.

ALTER TABLE tenants ADD COLUMN crm text NOT NULL DEFAULT 'shopmonkey'
    CHECK (crm IN ('shopmonkey', 'tekmetric'));
-- What the credentials tables' foreign keys point at: a shop *of that CRM*.
ALTER TABLE tenants ADD CONSTRAINT tenants_id_crm UNIQUE (id, crm);

CREATE TABLE shopmonkey_credentials (
    tenant_id       bigint PRIMARY KEY,
    crm             text NOT NULL DEFAULT 'shopmonkey' CHECK (crm = 'shopmonkey'),
    api_key         text,  -- secret box ciphertext ("fernet:…")
    webhook_secret  text,  -- secret box ciphertext ("fernet:…")
    updated_at      timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (tenant_id, crm) REFERENCES tenants (id, crm)
);

-- Carried over as stored: ciphertext stays ciphertext (same keys), and a value still in
-- plain text is encrypted by the migration step that runs after every migration.
INSERT INTO shopmonkey_credentials (tenant_id, api_key, webhook_secret)
SELECT id, shopmonkey_api_key, webhook_secret
  FROM tenants
 WHERE shopmonkey_api_key IS NOT NULL OR webhook_secret IS NOT NULL;

ALTER TABLE tenants DROP COLUMN shopmonkey_api_key, DROP COLUMN webhook_secret;

CREATE TABLE tekmetric_credentials (
    tenant_id             bigint PRIMARY KEY,
    crm                   text NOT NULL DEFAULT 'tekmetric' CHECK (crm = 'tekmetric'),
    shop_id               bigint NOT NULL CHECK (shop_id > 0),
    -- hex SHA-256 of the URL token; unique, so a token names one shop.
    webhook_token_sha256  text UNIQUE CHECK (webhook_token_sha256 ~ '^[0-9a-f]{64}$'),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (tenant_id, crm) REFERENCES tenants (id, crm)
);

ALTER TABLE shopmonkey_credentials ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON shopmonkey_credentials USING (tenant_id = current_tenant_id());
ALTER TABLE tekmetric_credentials ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tekmetric_credentials USING (tenant_id = current_tenant_id());
-- The application reads its shop's credentials; only the administrator (the owner, as
-- with tenants since 0004) writes them.
GRANT SELECT ON shopmonkey_credentials, tekmetric_credentials TO lead_app;

CREATE TABLE crm_apps (
    crm            text PRIMARY KEY CHECK (crm IN ('tekmetric')),
    client_id      text NOT NULL CHECK (client_id <> ''),
    client_secret  text NOT NULL,  -- secret box ciphertext ("fernet:…")
    updated_at     timestamptz NOT NULL DEFAULT now()
);
-- No grant to lead_app: a shop's transaction reads its CRM's app through this one function.
CREATE FUNCTION crm_app_credentials(p_crm text, OUT client_id text, OUT client_secret text)
RETURNS SETOF record
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT client_id, client_secret FROM crm_apps WHERE crm = p_crm
$$;

-- Which active Tekmetric shop a webhook URL token names (by its SHA-256): the receiver's
-- one cross-tenant read for that route, returning an identifier only.
CREATE FUNCTION tenant_id_for_tekmetric_token(p_token_sha256 text) RETURNS bigint
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT t.id
      FROM tekmetric_credentials c JOIN tenants t ON t.id = c.tenant_id
     WHERE c.webhook_token_sha256 = p_token_sha256 AND t.active AND t.crm = 'tekmetric'
$$;

REVOKE ALL ON FUNCTION crm_app_credentials(text), tenant_id_for_tekmetric_token(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION crm_app_credentials(text), tenant_id_for_tekmetric_token(text) TO lead_app;

-- Analysts see which CRM each shop runs (a new last column; the view's others unchanged).
CREATE OR REPLACE VIEW analytics.shops WITH (security_invoker = false) AS
SELECT t.id AS shop_id, t.slug AS shop, t.name, t.time_zone, t.active,
       t.send_window_start, t.send_window_end, t.max_lead_age_days, t.created_at, t.crm
  FROM tenants t;
