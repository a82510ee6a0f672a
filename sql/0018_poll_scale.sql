-- depends: 0017_crm_credentials
-- The backup poll at scale (docs/poll.md):
--  1. Each shop has a slot in the cycle (`next_poll_at`, also after a success), so the
--     shops' requests are spread over the 30 seconds instead of bursting at its start.
--  2. Pollers claim shops with a lease (`claimed_by`, `claimed_until`) taken with
--     FOR UPDATE SKIP LOCKED, each in its own shard (tenant id modulo the number of
--     shards): two replicas or two partitions never poll the same shop at once, and a
--     poller that died gives its shops back when the lease runs out.
--  3. A request budget shared by every shop of a CRM partner app, in every process
--     (`crm_app_budget`, Tekmetric: 600 requests a minute per app), and what the poll
--     needs to plan each shop's cadence inside it.

ALTER TABLE poll_state
    ADD COLUMN claimed_by    text,
    ADD COLUMN claimed_until timestamptz,
    -- Why the shop waits until next_poll_at: its slot in the cycle, a backoff after
    -- errors, or a rate limit. NULL (rows from before) counts as a backoff.
    ADD COLUMN wait_reason   text CHECK (wait_reason IN ('cadence', 'backoff', 'rate_limited')),
    ADD COLUMN cadence_s     integer,  -- the cadence the shop was given at its last poll
    -- The shared request budget the shop's polls draw on (e.g. 'tekmetric:<app>'); NULL
    -- when its CRM budgets each shop on its own (ShopMonkey, paced by crm_pace).
    ADD COLUMN budget_app    text,
    -- An open lead or a change seen lately: keeps its 30-s cadence when a shared budget
    -- cannot give every shop that.
    ADD COLUMN busy          boolean NOT NULL DEFAULT false,
    ADD COLUMN last_change_at timestamptz,
    -- CRMs whose deletions need their own query (Tekmetric): when it last ran completely.
    ADD COLUMN deletions_checked_at timestamptz;

-- Never polled (NULL) sorts first: the due shops are a prefix of this index.
CREATE INDEX poll_state_due ON poll_state ((coalesce(next_poll_at, '-infinity'::timestamptz)));
CREATE INDEX poll_state_budget_app ON poll_state (budget_app) WHERE budget_app IS NOT NULL;

-- Shops whose turn has come and that no poller holds, most overdue first (read only:
-- reports and tests; pollers claim with poll_claim_due).
CREATE OR REPLACE FUNCTION poll_due_tenant_ids(p_now timestamptz) RETURNS SETOF bigint
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT t.id
      FROM tenants t LEFT JOIN poll_state p ON p.tenant_id = t.id
     WHERE t.active AND (p.next_poll_at IS NULL OR p.next_poll_at <= p_now)
       AND (p.claimed_until IS NULL OR p.claimed_until <= p_now)
     ORDER BY p.next_poll_at NULLS FIRST, p.last_polled_at NULLS FIRST, t.id
$$;

-- Every active shop of a shard gets its poll_state row, where its claim lives. Called
-- once per tick, not per claim.
CREATE FUNCTION poll_prepare_shard(p_shard integer, p_shards integer) RETURNS integer
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    WITH added AS (
        INSERT INTO poll_state (tenant_id)
        SELECT t.id FROM tenants t
         WHERE t.active AND t.id % p_shards = p_shard
           AND NOT EXISTS (SELECT 1 FROM poll_state p WHERE p.tenant_id = t.id)
        ON CONFLICT DO NOTHING
        RETURNING 1
    )
    SELECT count(*)::integer FROM added
$$;

-- Claims up to p_limit due shops of the shard for p_claimer until p_now + p_lease.
-- SKIP LOCKED: a concurrent claimer passes over rows another is claiming instead of
-- waiting for them, and the lease keeps them out of every other claim afterwards.
-- enable_sort off: the planner takes the shard filter (a modulo) for far more selective
-- than it is and would join and sort every due shop (4,000 at 20,000 shops: 10-40 ms a
-- claim) instead of reading poll_state_due in order and stopping at p_limit (~1 ms).
CREATE FUNCTION poll_claim_due(p_shard integer, p_shards integer, p_now timestamptz, p_limit integer,
                               p_lease interval, p_claimer text) RETURNS SETOF bigint
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp SET enable_sort = off AS $$
    WITH due AS (
        SELECT p.tenant_id, p.next_poll_at
          FROM poll_state p JOIN tenants t ON t.id = p.tenant_id
         WHERE t.active AND p.tenant_id % p_shards = p_shard
           AND coalesce(p.next_poll_at, '-infinity'::timestamptz) <= p_now
           AND (p.claimed_until IS NULL OR p.claimed_until <= p_now)
         -- The order of poll_state_due: the scan stops after p_limit rows instead of
         -- sorting every due shop (thousands at once after an outage).
         ORDER BY coalesce(p.next_poll_at, '-infinity'::timestamptz)
         LIMIT p_limit
           FOR UPDATE OF p SKIP LOCKED
    ), claimed AS (
        UPDATE poll_state p SET claimed_by = p_claimer, claimed_until = p_now + p_lease
          FROM due WHERE p.tenant_id = due.tenant_id
        RETURNING p.tenant_id
    )
    SELECT c.tenant_id FROM claimed c JOIN due d USING (tenant_id)
     ORDER BY coalesce(d.next_poll_at, '-infinity'::timestamptz)
$$;

-- Claims exactly these active shops, due or not (an operator's or a test's poll of named
-- shops), except those another poller holds.
CREATE FUNCTION poll_claim_tenants(p_ids bigint[], p_now timestamptz, p_lease interval, p_claimer text)
RETURNS SETOF bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    INSERT INTO poll_state (tenant_id)
    SELECT t.id FROM tenants t WHERE t.id = ANY(p_ids) AND t.active
    ON CONFLICT DO NOTHING;
    RETURN QUERY
    UPDATE poll_state p SET claimed_by = p_claimer, claimed_until = p_now + p_lease
      FROM (SELECT p2.tenant_id FROM poll_state p2
             WHERE p2.tenant_id = ANY(p_ids)
               AND (p2.claimed_until IS NULL OR p2.claimed_until <= p_now OR p2.claimed_by = p_claimer)
               FOR UPDATE SKIP LOCKED) free
     WHERE p.tenant_id = free.tenant_id
    RETURNING p.tenant_id;
END
$$;

-- Gives back claims a poller took but did not use (its tick ran out of time).
CREATE FUNCTION poll_release(p_ids bigint[], p_claimer text) RETURNS integer
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    WITH released AS (
        UPDATE poll_state SET claimed_by = NULL, claimed_until = NULL
         WHERE tenant_id = ANY(p_ids) AND claimed_by = p_claimer
        RETURNING 1
    )
    SELECT count(*)::integer FROM released
$$;

-- Shops of the shard sitting out a backoff or a rate limit (not merely waiting for
-- their slot), by health; rate-limited ones under 'rate_limited'.
DROP FUNCTION poll_backoff_counts(timestamptz);
CREATE FUNCTION poll_backoff_counts(p_now timestamptz, p_shard integer, p_shards integer,
                                    OUT health text, OUT shops bigint)
RETURNS SETOF record
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT CASE WHEN p.wait_reason = 'rate_limited' THEN 'rate_limited' ELSE p.health END, count(*)
      FROM poll_state p JOIN tenants t ON t.id = p.tenant_id
     WHERE t.active AND p.next_poll_at > p_now AND coalesce(p.wait_reason, 'backoff') <> 'cadence'
       AND p.tenant_id % p_shards = p_shard
     GROUP BY 1
$$;

-- How many active shops draw on a shared budget, and how many of them are busy: the
-- inputs of the poll plan (crm/tekmetric/budget.py), over every shard.
CREATE FUNCTION poll_budget_counts(p_app text, OUT shops bigint, OUT busy bigint)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT count(*), count(*) FILTER (WHERE p.busy)
      FROM poll_state p JOIN tenants t ON t.id = p.tenant_id
     WHERE t.active AND p.budget_app = p_app
$$;

-- (3) One row per partner app: a GCRA ("virtual scheduling") limiter. `next_slot` is the
-- theoretical arrival time of the next request; a request may go at
-- max(now, next_slot - tolerance) and moves next_slot on by one interval, so the app
-- never sends more than (window + tolerance) / interval + 1 requests in any window.
-- After a 429 nobody sends before `held_until`. Not tenant data (no tenant_id, no RLS):
-- lead_app reaches it only through the two functions below.
CREATE TABLE crm_app_budget (
    app              text PRIMARY KEY,
    next_slot        timestamptz NOT NULL DEFAULT clock_timestamp(),
    held_until       timestamptz,
    limited_count    bigint NOT NULL DEFAULT 0,  -- 429s seen, ever
    granted          bigint NOT NULL DEFAULT 0,  -- requests let through, ever
    refused          bigint NOT NULL DEFAULT 0   -- callers sent away (slot too far, or held back)
);

-- Takes the app's next request slot if it is within p_max_wait_s: granted, and how long
-- to wait for it; else not granted, and how long until one would be (nothing changes
-- but the refusal count).
CREATE FUNCTION crm_app_reserve(p_app text, p_interval_ms double precision, p_tolerance_ms double precision,
                                p_max_wait_s double precision,
                                OUT granted boolean, OUT wait_s double precision, OUT held boolean)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    b crm_app_budget;
    now_ts timestamptz := clock_timestamp();
    slot timestamptz;
BEGIN
    INSERT INTO crm_app_budget (app, next_slot) VALUES (p_app, now_ts) ON CONFLICT (app) DO NOTHING;
    SELECT * INTO b FROM crm_app_budget WHERE app = p_app FOR UPDATE;
    IF b.held_until > now_ts THEN
        UPDATE crm_app_budget SET refused = refused + 1 WHERE app = p_app;
        granted := false; held := true;
        wait_s := extract(epoch FROM b.held_until - now_ts);
        RETURN;
    END IF;
    held := false;
    slot := greatest(now_ts, b.next_slot - p_tolerance_ms * interval '1 millisecond');
    wait_s := extract(epoch FROM slot - now_ts);
    IF wait_s > p_max_wait_s THEN
        UPDATE crm_app_budget SET refused = refused + 1 WHERE app = p_app;
        granted := false;
        RETURN;
    END IF;
    UPDATE crm_app_budget
       SET next_slot = greatest(b.next_slot, now_ts) + p_interval_ms * interval '1 millisecond',
           granted = crm_app_budget.granted + 1
     WHERE app = p_app;
    granted := true;
END
$$;

-- The CRM answered 429: every process of the app holds back for p_wait_s (the client
-- that met it chose the wait: its backoff, or the CRM's Retry-After).
CREATE FUNCTION crm_app_limited(p_app text, p_wait_s double precision) RETURNS void
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    INSERT INTO crm_app_budget AS b (app, held_until, limited_count)
    VALUES (p_app, clock_timestamp() + p_wait_s * interval '1 second', 1)
    ON CONFLICT (app) DO UPDATE
       SET held_until = greatest(b.held_until, clock_timestamp() + p_wait_s * interval '1 second'),
           limited_count = b.limited_count + 1
$$;

-- Callable by the application role only.
DO $$
DECLARE f text;
BEGIN
    FOREACH f IN ARRAY ARRAY[
        'poll_prepare_shard(integer, integer)',
        'poll_claim_due(integer, integer, timestamptz, integer, interval, text)',
        'poll_claim_tenants(bigint[], timestamptz, interval, text)', 'poll_release(bigint[], text)',
        'poll_backoff_counts(timestamptz, integer, integer)', 'poll_budget_counts(text)',
        'crm_app_reserve(text, double precision, double precision, double precision)',
        'crm_app_limited(text, double precision)']
    LOOP
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', f);
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO lead_app', f);
    END LOOP;
END
$$;
