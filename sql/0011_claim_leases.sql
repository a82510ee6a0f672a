-- Claims tied to a live session (see docs/reliability.md, "Database restarts and crashed
-- claimers"). Before this, an event claimed by a process that died stayed `processing`
-- until its claim was 5 minutes old. Now every claimer (dispatcher, ingest run) holds a
-- session-level advisory lock, its *claim lease*, for as long as it lives, and names it in
-- `claimed_by` ("dispatcher-123 lease:42"). PostgreSQL releases the lock when the
-- claimer's session ends (process killed, host gone, database restarted), so
-- claim_inbox_events can tell a dead claimer's events from a busy one's and take them
-- back at once. The 5-minute rule stays as the last resort, for claimers without a lease.

-- Lease numbers are never reused while the sequence lasts (2^31), so a new claimer cannot
-- by chance hold the lease of a dead one and keep its events claimed.
CREATE SEQUENCE claim_lease_seq AS integer CYCLE;

-- The lease of the claim, as a number: the claim compares it with the live leases for
-- every row in `processing`, which must stay cheap (parsing claimed_by for each row made
-- a claim 20 times slower with a few thousand rows in flight).
ALTER TABLE inbox_events ADD COLUMN claim_lease integer;

-- The lease named at the end of a claimed_by value, or NULL for claimers without one.
CREATE FUNCTION claim_lease_of(p_claimed_by text) RETURNS integer
LANGUAGE sql IMMUTABLE SET search_path = public, pg_temp AS $$
    SELECT substring(p_claimed_by FROM ' lease:([0-9]{1,10})$')::integer
$$;

-- The leases held by live sessions of this database. The advisory lock is taken with two
-- int4 keys (4242011, lease): pg_locks shows them as classid, objid and objsubid = 2.
CREATE FUNCTION live_claim_leases() RETURNS integer[]
LANGUAGE sql STABLE SET search_path = public, pg_temp AS $$
    SELECT coalesce(array_agg(objid::text::integer), '{}')
      FROM pg_locks
     WHERE locktype = 'advisory' AND classid = 4242011 AND objsubid = 2 AND granted
       AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
$$;

-- Takes a new lease for the calling session and returns its number. The lock is held until
-- the session ends; the caller keeps that connection open for its whole life.
CREATE FUNCTION take_claim_lease() RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_lease integer;
BEGIN
    LOOP
        v_lease := nextval('claim_lease_seq');
        EXIT WHEN pg_try_advisory_lock(4242011, v_lease);
    END LOOP;
    RETURN v_lease;
END
$$;
REVOKE ALL ON FUNCTION take_claim_lease() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION take_claim_lease() TO lead_app;

-- Same signature and result as before (0005). A claimer that names a lease must hold it
-- (else SQLSTATE LO001: the caller takes a new lease and claims again), so that nothing
-- is claimed under a lease that is already gone. Events are claimable when pending and
-- due, when their claimer's lease is gone, or (last resort) when their claim is older
-- than p_stale_after.
CREATE OR REPLACE FUNCTION claim_inbox_events(p_claimer text, p_limit integer, p_stale_after interval)
RETURNS TABLE (tenant_id bigint, event_id bigint)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp AS $$
#variable_conflict use_column
DECLARE
    v_live integer[] := live_claim_leases();
    v_mine integer := claim_lease_of(p_claimer);
BEGIN
    IF v_mine IS NOT NULL AND NOT v_mine = ANY (v_live) THEN
        RAISE EXCEPTION 'claim lease % is not held by any session', v_mine USING ERRCODE = 'LO001';
    END IF;
    RETURN QUERY
    UPDATE inbox_events e
       SET status = 'processing', claimed_by = p_claimer, claim_lease = v_mine, claimed_at = clock_timestamp(),
           attempts = e.attempts + 1
     WHERE e.id IN (
           SELECT i.id FROM inbox_events i
            WHERE (i.status = 'pending' AND i.available_at <= clock_timestamp())
               OR (i.status = 'processing'
                   AND (i.claimed_at < clock_timestamp() - p_stale_after
                        OR (i.claim_lease IS NOT NULL AND i.claim_lease <> ALL (v_live))))
            ORDER BY i.id
            LIMIT p_limit
            FOR UPDATE SKIP LOCKED)
    RETURNING e.tenant_id, e.id;
END
$$;
REVOKE ALL ON FUNCTION claim_inbox_events(text, integer, interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION claim_inbox_events(text, integer, interval) TO lead_app;

-- The inbox sensor's question (0005), now also counting events whose claimer died: with
-- no dispatcher alive, they are what an ingest run must pick up.
CREATE OR REPLACE FUNCTION inbox_backlog_older_than(p_grace interval, OUT pending bigint, OUT max_id bigint,
                                                   OUT oldest timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT count(*), max(id), min(received_at)
      FROM inbox_events
     WHERE (status = 'pending' AND received_at < clock_timestamp() - p_grace
            AND available_at <= clock_timestamp())
        OR (status = 'processing' AND claimed_at < clock_timestamp() - interval '5 minutes')
        OR (status = 'processing' AND claimed_at < clock_timestamp() - p_grace
            AND claim_lease IS NOT NULL AND claim_lease <> ALL (live_claim_leases()))
$$;
REVOKE ALL ON FUNCTION inbox_backlog_older_than(interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION inbox_backlog_older_than(interval) TO lead_app;
