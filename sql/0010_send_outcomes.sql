-- At-most-once sending when answers are lost (docs/touchpoints.md, "Sending at most once").
--
-- 1. A reservation (`sending`) names the database session of the process that made it:
--    each sending process keeps one session holding the advisory lock
--    (4242010, its backend pid) for as long as it lives. When that lock is gone the
--    process is gone, and its reservations are turned `unknown` within seconds instead
--    of waiting out the 2-minute staleness rule (which stays as a backstop).
-- 2. An `unknown` touch is asked about at the vendor (Twilio's message list, SendGrid's
--    Email Activity) until it is confirmed `sent`, proven never taken, or given up on;
--    `resolve_after` is when to ask next (NULL: nothing more to ask).
-- 3. A touch the vendor proves it never took may be owed again exactly once
--    (`replanned`); the guard below is what makes "once" hold whatever the code does.

ALTER TABLE touches
    ADD COLUMN reserved_by integer,              -- backend pid of the reserving process's sender session
    ADD COLUMN reserved_wall_at timestamptz,     -- the database clock at reservation (vendor dates compare with it)
    ADD COLUMN send_key text,                    -- per reservation; sent as a SendGrid custom arg to find the mail again
    ADD COLUMN resolve_after timestamptz,
    ADD COLUMN resolve_attempts integer NOT NULL DEFAULT 0,
    ADD COLUMN replanned boolean NOT NULL DEFAULT false;

CREATE INDEX touches_in_flight ON touches (tenant_id) WHERE status = 'sending';
CREATE INDEX touches_to_resolve ON touches (resolve_after) WHERE status = 'unknown' AND resolve_after IS NOT NULL;

-- Outcomes that were already unknown are asked about too.
UPDATE touches SET resolve_after = now() WHERE status = 'unknown';

-- Backend pids of the live sender sessions (see lead_orchestrator/sender_session.py).
-- pg_locks is readable by every role; only this database's locks count.
CREATE FUNCTION live_sender_pids() RETURNS SETOF integer
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT objid::integer FROM pg_locks
     WHERE locktype = 'advisory' AND classid = 4242010 AND objsubid = 2 AND granted
       AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
$$;

-- Shops with send outcomes to reconcile: reservations whose sender is gone (or that are
-- older than p_stale), and unknown outcomes due to be asked about. Identifiers only; the
-- work itself is done per shop, under row-level security.
CREATE FUNCTION tenants_with_sends_to_reconcile(p_now timestamptz, p_stale interval) RETURNS SETOF bigint
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    WITH live AS MATERIALIZED (SELECT live_sender_pids() AS pid)
    SELECT DISTINCT t.tenant_id
      FROM touches t JOIN tenants s ON s.id = t.tenant_id AND s.active
     WHERE (t.status = 'sending'
            AND (t.reserved_at < p_now - p_stale
                 OR (t.reserved_by IS NOT NULL AND t.reserved_by NOT IN (SELECT pid FROM live))))
        OR (t.status = 'unknown' AND t.resolve_after IS NOT NULL AND t.resolve_after <= p_now)
$$;
REVOKE ALL ON FUNCTION live_sender_pids(), tenants_with_sends_to_reconcile(timestamptz, interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION live_sender_pids(), tenants_with_sends_to_reconcile(timestamptz, interval) TO lead_app;

-- The transitions of sql/0003, plus what resolving an unknown outcome needs:
--   unknown -> sent       the vendor has it (a callback, its message list, Email Activity);
--   unknown -> scheduled  the vendor proved it never took it: once per touch (`replanned`
--                         false -> true in the same update; it can never go back to false);
--   unknown -> failed     proven never taken, but it may not be owed again (re-planned
--                         once already, or the lead has ended).
CREATE OR REPLACE FUNCTION touches_guard_transition() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.replanned AND NOT NEW.replanned THEN
        RAISE EXCEPTION 'touch %: replanned cannot be undone', OLD.id USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.status = OLD.status THEN
        RETURN NEW;
    END IF;
    IF OLD.status IN ('scheduled', 'deferred')
       AND NEW.status IN ('scheduled', 'deferred', 'sending', 'cancelled', 'skipped') THEN
        RETURN NEW;
    END IF;
    IF OLD.status = 'sending' AND NEW.status IN ('sent', 'failed', 'unknown', 'scheduled') THEN
        RETURN NEW;
    END IF;
    IF OLD.status = 'unknown' AND NEW.status IN ('sent', 'failed') THEN
        RETURN NEW;
    END IF;
    IF OLD.status = 'unknown' AND NEW.status = 'scheduled' AND NOT OLD.replanned AND NEW.replanned THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'touch %: status % -> % is not allowed', OLD.id, OLD.status, NEW.status
        USING ERRCODE = 'check_violation';
END
$$;

DROP TRIGGER IF EXISTS touches_guard_transition ON touches;
CREATE TRIGGER touches_guard_transition BEFORE UPDATE OF status, replanned ON touches
    FOR EACH ROW EXECUTE FUNCTION touches_guard_transition();
