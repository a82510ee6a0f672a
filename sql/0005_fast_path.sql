-- The fast path (the dispatcher) takes events the moment they are committed; the inbox
-- sensor is the safety net and only asks for a run when events have waited longer than
-- a grace period, so the two do not compete for fresh events (a run costs ~1 s of CPU).

-- An event given back after a failure (e.g. ShopMonkey unreachable) waits before it is
-- claimed again, so a vendor outage does not become a busy loop.
ALTER TABLE inbox_events ADD COLUMN available_at timestamptz NOT NULL DEFAULT now();

CREATE OR REPLACE FUNCTION claim_inbox_events(p_claimer text, p_limit integer, p_stale_after interval)
RETURNS TABLE (tenant_id bigint, event_id bigint)
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public AS $$
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
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public AS $$
    SELECT count(*), max(id), min(received_at)
      FROM inbox_events
     WHERE (status = 'pending' AND received_at < clock_timestamp() - p_grace
            AND available_at <= clock_timestamp())
        OR (status = 'processing' AND claimed_at < clock_timestamp() - interval '5 minutes')
$$;
REVOKE ALL ON FUNCTION inbox_backlog_older_than(interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION inbox_backlog_older_than(interval) TO lead_app;
