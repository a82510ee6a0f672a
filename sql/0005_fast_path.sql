-- The fast path (the dispatcher) takes events the moment they are committed; the inbox
-- sensor is the safety net and only asks for a run when events have waited longer than
-- a grace period, so the two do not compete for fresh events (a run costs ~1 s of CPU).

-- An event given back after a failure (e.g. ShopMonkey unreachable) waits before it is
-- claimed again, so a vendor outage does not become a busy loop.
ALTER TABLE inbox_events ADD COLUMN available_at timestamptz NOT NULL DEFAULT now();

CREATE OR REPLACE FUNCTION claim_inbox_events(p_claimer text, p_limit integer, p_stale_after interval)
RETURNS TABLE (tenant_id bigint, event_id bigint)
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    UPDATE inbox_events e
       SET status = 'processing', claimed_by = p_claimer, claimed_at = clock_timestamp(),
           attempts = e.attempts + 1
     WHERE e.id IN (
           SELECT id FROM inbox_events
            WHERE (status = 'pending' AND available_at <= clock_timestamp())
               OR (status = 'processing' AND claimed_at < clock_timestamp() - p_stale_after)
            ORDER BY id
            LIMIT p_limit
            FOR UPDATE SKIP LOCKED)
    RETURNING e.tenant_id, e.id
$$;

CREATE FUNCTION inbox_backlog_older_than(p_grace interval, OUT pending bigint, OUT max_id bigint,
                                         OUT oldest timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT count(*), max(id), min(received_at)
      FROM inbox_events
     WHERE (status = 'pending' AND received_at < clock_timestamp() - p_grace
            AND available_at <= clock_timestamp())
        OR (status = 'processing' AND claimed_at < clock_timestamp() - interval '5 minutes')
$$;
REVOKE ALL ON FUNCTION inbox_backlog_older_than(interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION inbox_backlog_older_than(interval) TO lead_app;

-- Stores a batch of events (group commit) in one statement: one round trip whatever
-- the batch size. It runs as the caller (lead_app), not as the owner: each tenant's
-- rows are inserted with that tenant set, so row-level security still checks every row.
-- Returns the position of each stored event in the batch and its id; a position
-- missing from the result was a duplicate.
CREATE FUNCTION store_inbox_events(p_events jsonb) RETURNS TABLE (pos integer, event_id bigint)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
    t bigint;
BEGIN
    FOR t IN SELECT DISTINCT (e ->> 'tenant_id')::bigint FROM jsonb_array_elements(p_events) e LOOP
        PERFORM set_config('app.tenant_id', t::text, true);
        RETURN QUERY
        WITH batch AS (
            SELECT (e ->> 'pos')::integer AS pos, e
              FROM jsonb_array_elements(p_events) e
             WHERE (e ->> 'tenant_id')::bigint = t
        ), inserted AS (
            INSERT INTO inbox_events (tenant_id, source, webhook_id, dedup_key, operation, table_name,
                                      object_id, payload)
            SELECT t, e ->> 'source', e ->> 'webhook_id', e ->> 'dedup_key', e ->> 'operation',
                   e ->> 'table_name', e ->> 'object_id', e -> 'payload'
              FROM batch ORDER BY pos
            ON CONFLICT DO NOTHING
            RETURNING id, dedup_key
        )
        SELECT min(b.pos), i.id
          FROM inserted i JOIN batch b ON b.e ->> 'dedup_key' = i.dedup_key
         GROUP BY i.id;
    END LOOP;
END
$$;
REVOKE ALL ON FUNCTION store_inbox_events(jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION store_inbox_events(jsonb) TO lead_app;

-- One wake-up per transaction is enough for the dispatcher (it claims whatever is
-- pending): an empty payload lets PostgreSQL fold a batch's notifications into one.
CREATE OR REPLACE FUNCTION notify_inbox() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('inbox_events', '');
    RETURN NULL;
END
$$;

-- A running dispatcher holds this advisory lock on its listening connection for its
-- whole life; when the process dies the lock goes with its connection. The inbox sensor
-- waits out its grace period only while a dispatcher is alive.
CREATE FUNCTION fast_path_alive() RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT 1 FROM pg_locks
                    WHERE locktype = 'advisory' AND classid = 0 AND objid = 4242001 AND granted
                      AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))
$$;
GRANT EXECUTE ON FUNCTION fast_path_alive() TO lead_app;
