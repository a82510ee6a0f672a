-- Health checks, lead history and retention (orchestrator_dagster/checks.py, history.py,
-- retention.py; docs/operations.md).

-- The first-touch SLA check reads each shop's leads of the last hour every minute, and
-- the daily report a shop's leads of one day: both by first sight.
CREATE INDEX IF NOT EXISTS leads_first_seen ON leads (tenant_id, first_seen_at);

-- Sends with an unknown outcome are rare and looked for every minute.
CREATE INDEX IF NOT EXISTS touches_unknown ON touches (tenant_id, updated_at) WHERE status = 'unknown';

-- Every shop, deactivated ones included: the retention job removes old done inbox events
-- of all of them (active_tenant_ids() names only the active ones). Identifiers only, like
-- the other cross-tenant functions.
CREATE FUNCTION all_tenant_ids() RETURNS SETOF bigint
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT id FROM tenants ORDER BY id
$$;
REVOKE ALL ON FUNCTION all_tenant_ids() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION all_tenant_ids() TO lead_app;
