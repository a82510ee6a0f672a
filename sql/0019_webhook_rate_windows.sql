-- depends: 0015_crm_pace_grant
-- The per-shop webhook rate limit, shared by every receiver process (docs/security.md,
-- "Webhook rate limit"). A receiver does not ask PostgreSQL for each request: it leases
-- a few requests' worth of budget at a time (lease_webhook_budget) and spends them from
-- memory. The budget is a sliding window counter, as the `limits` library keeps it: fixed
-- windows aligned on the epoch, the previous one weighted by how much of it is still in
-- view. Leases are granted under the current window's row lock, so all the processes
-- together never hold more than the limit.

-- One row per (vendor, shop name as written in the path, period, window). The name is
-- not a tenant: the limit is checked before the shop is looked up, for invented names
-- too. No tenant data, so no row-level security: lead_app reaches it only through the
-- function below.
CREATE TABLE webhook_rate_windows (
    vendor     text    NOT NULL,
    shop       text    NOT NULL,
    period_s   integer NOT NULL CHECK (period_s > 0),
    window_no  bigint  NOT NULL,  -- floor(epoch seconds / period_s)
    granted    integer NOT NULL CHECK (granted >= 0),  -- requests leased in this window
    -- Once the next window has ended too, nobody reads the row again.
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (vendor, shop, period_s, window_no)
);
CREATE INDEX webhook_rate_windows_expiry ON webhook_rate_windows (expires_at);

-- Leases up to p_wanted requests of (vendor, shop)'s budget for the current window: at
-- most half of what is left (so that another process still finds some), at least one
-- while anything is left. Returns what was granted, the window it belongs to, how long
-- the window lasts, and, when nothing was granted, how long until a request would be.
-- p_returned requests leased earlier for window p_return_window and not used (their
-- window ended first) go back to that window's count, which weighs on the next window.
-- p_clean also deletes up to p_clean_at_most expired rows (of any shop) that nobody else
-- is deleting, so that cleaning costs no round trip of its own.
CREATE FUNCTION lease_webhook_budget(p_vendor text, p_shop text, p_limit integer, p_period_s integer,
                                     p_wanted integer, p_return_window bigint, p_returned integer,
                                     p_clean_at_most integer)
RETURNS TABLE (granted integer, window_no bigint, window_left_s double precision,
               retry_after_s double precision, cleaned integer)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp AS $$
#variable_conflict use_column
DECLARE
    v_now     double precision := extract(epoch FROM clock_timestamp());
    v_window  bigint := floor(v_now / p_period_s);
    v_elapsed double precision := v_now - v_window * p_period_s;
    v_prev    integer;
    v_cur     integer;
    v_room    integer;
    v_grant   integer := 0;
    v_retry   double precision := 0;
    v_cleaned integer := 0;
BEGIN
    IF p_limit < 1 OR p_period_s < 1 OR p_wanted < 1 THEN
        RAISE EXCEPTION 'lease_webhook_budget: limit, period and wanted must be positive' USING ERRCODE = '22023';
    END IF;
    IF p_returned > 0 THEN
        UPDATE webhook_rate_windows w SET granted = greatest(0, w.granted - p_returned)
         WHERE (w.vendor, w.shop, w.period_s, w.window_no) = (p_vendor, p_shop, p_period_s, p_return_window);
    END IF;
    -- Rows are locked oldest window first (the return, then the current window) and
    -- cleaning skips rows another lease holds: leases wait for one another, never in a cycle.
    IF p_clean_at_most > 0 THEN
        WITH doomed AS (
            SELECT vendor, shop, period_s, window_no FROM webhook_rate_windows
             WHERE expires_at < clock_timestamp()
             LIMIT p_clean_at_most FOR UPDATE SKIP LOCKED
        )
        DELETE FROM webhook_rate_windows w USING doomed d
         WHERE (w.vendor, w.shop, w.period_s, w.window_no) = (d.vendor, d.shop, d.period_s, d.window_no);
        GET DIAGNOSTICS v_cleaned = ROW_COUNT;
    END IF;
    -- Locks the current window's row (creating it) until the lease commits.
    INSERT INTO webhook_rate_windows AS w (vendor, shop, period_s, window_no, granted, expires_at)
    VALUES (p_vendor, p_shop, p_period_s, v_window, 0, to_timestamp((v_window + 2) * p_period_s))
    ON CONFLICT (vendor, shop, period_s, window_no) DO UPDATE SET granted = w.granted
    RETURNING w.granted INTO v_cur;
    SELECT w.granted INTO v_prev FROM webhook_rate_windows w
     WHERE (w.vendor, w.shop, w.period_s, w.window_no) = (p_vendor, p_shop, p_period_s, v_window - 1);
    v_prev := coalesce(v_prev, 0);
    v_room := floor(p_limit - v_prev * (p_period_s - v_elapsed) / p_period_s - v_cur);
    IF v_room >= 1 THEN
        v_grant := least(p_wanted, ceil(v_room / 2.0)::integer);
        UPDATE webhook_rate_windows w SET granted = w.granted + v_grant
         WHERE (w.vendor, w.shop, w.period_s, w.window_no) = (p_vendor, p_shop, p_period_s, v_window);
    ELSIF v_prev > 0 AND p_limit - v_cur - 1 > 0 THEN
        -- Still in this window: when the previous window's weight has shrunk enough.
        v_retry := p_period_s * (1 - (p_limit - v_cur - 1)::double precision / v_prev) - v_elapsed;
    ELSE
        -- In the next window, where this window's count is the one that weighs.
        v_retry := p_period_s - v_elapsed
                   + greatest(0, p_period_s * (1 - (p_limit - 1)::double precision / greatest(v_cur, 1)));
    END IF;
    RETURN QUERY SELECT v_grant, v_window, (v_window + 1) * p_period_s - v_now, greatest(v_retry, 0), v_cleaned;
END
$$;
REVOKE ALL ON FUNCTION lease_webhook_budget(text, text, integer, integer, integer, bigint, integer, integer)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lease_webhook_budget(text, text, integer, integer, integer, bigint, integer, integer)
    TO lead_app;
