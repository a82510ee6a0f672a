-- Is the fast path keeping up? True when a dispatcher claimed an event within the given
-- interval. During a burst the oldest waiting event grows old because the queue is long,
-- not because the dispatcher stopped; an ingest run launched then only takes CPU from it.
CREATE FUNCTION fast_path_progressing(p_within interval) RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT EXISTS (SELECT 1 FROM inbox_events
                    WHERE status IN ('processing', 'done') AND claimed_by LIKE 'dispatcher-%'
                      AND claimed_at > clock_timestamp() - p_within)
$$;
REVOKE ALL ON FUNCTION fast_path_progressing(interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION fast_path_progressing(interval) TO lead_app;
