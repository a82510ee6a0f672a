-- depends: 0001_core
-- Backup poll: when each shop may be polled next (per-shop backoff after errors and
-- after a 429's Retry-After), and the one cross-tenant read the poll needs.

ALTER TABLE poll_state
    ADD COLUMN next_poll_at  timestamptz,
    ADD COLUMN last_error_at timestamptz,
    -- Rows the API returned in the last successful cycle, and how many of them were
    -- inside the window: a large gap means the API ignored our filter.
    ADD COLUMN last_rows_received integer,
    ADD COLUMN last_rows_kept     integer;

-- Active shops whose turn has come, least recently polled first: shops that a cycle
-- did not reach (its time budget ran out) are the first ones of the next cycle.
CREATE FUNCTION poll_due_tenant_ids(p_now timestamptz) RETURNS SETOF bigint
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public AS $$
    SELECT t.id
      FROM tenants t LEFT JOIN poll_state p ON p.tenant_id = t.id
     WHERE t.active AND (p.next_poll_at IS NULL OR p.next_poll_at <= p_now)
     ORDER BY p.last_polled_at NULLS FIRST, t.id
$$;

-- How many active shops wait out a backoff, by health: the poll's report mentions them
-- even in cycles that skip them.
CREATE FUNCTION poll_backoff_counts(p_now timestamptz, OUT health text, OUT shops bigint)
RETURNS SETOF record
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public AS $$
    SELECT p.health, count(*)
      FROM poll_state p JOIN tenants t ON t.id = p.tenant_id
     WHERE t.active AND p.next_poll_at > p_now
     GROUP BY p.health
$$;

REVOKE ALL ON FUNCTION poll_due_tenant_ids(timestamptz), poll_backoff_counts(timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION poll_due_tenant_ids(timestamptz), poll_backoff_counts(timestamptz) TO lead_app;
