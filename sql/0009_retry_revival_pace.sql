-- depends: 0008_event_lifecycle
-- Three rules of "no lead lost" (docs/reliability.md):
--  1. A new sighting of a change whose event was parked or dead (a re-delivered webhook,
--     the poll listing the order again) revives that event instead of being swallowed by
--     de-duplication.
--  2. An event given back to the queue wakes the fast path like a new one.
--  3. Calls to one shop's CRM are paced across every process (dispatcher workers, ingest
--     runs, the poll) by one row per shop: the next free request slot.

-- (1) for the group-commit path: revive first, then insert what is new. A revived event
-- reports its position like a stored one (the sender sees it accepted either way).
CREATE OR REPLACE FUNCTION store_inbox_events(p_events jsonb) RETURNS TABLE (pos integer, event_id bigint)
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
        ), revived AS (
            UPDATE inbox_events ie
               SET status = 'pending', available_at = clock_timestamp(), claimed_by = NULL,
                   attempts = 0, unexpected_errors = 0, status_changed_at = clock_timestamp(),
                   error = 'revived by a new ' || (b.e ->> 'source') || ' sighting after: ' || coalesce(ie.error, ie.status)
              FROM batch b
             WHERE ie.tenant_id = t AND ie.dedup_key = b.e ->> 'dedup_key' AND ie.status IN ('parked', 'dead')
            RETURNING ie.id, ie.dedup_key
        ), inserted AS (
            INSERT INTO inbox_events (tenant_id, source, webhook_id, dedup_key, operation, table_name,
                                      object_id, payload)
            SELECT t, e ->> 'source', e ->> 'webhook_id', e ->> 'dedup_key', e ->> 'operation',
                   e ->> 'table_name', e ->> 'object_id', e -> 'payload'
              FROM batch
             WHERE NOT EXISTS (SELECT 1 FROM revived r WHERE r.dedup_key = batch.e ->> 'dedup_key')
             ORDER BY pos
            ON CONFLICT DO NOTHING
            RETURNING id, dedup_key
        ), accepted AS (
            SELECT id, dedup_key FROM revived UNION ALL SELECT id, dedup_key FROM inserted
        )
        SELECT min(b.pos), a.id
          FROM accepted a JOIN batch b ON b.e ->> 'dedup_key' = a.dedup_key
         GROUP BY a.id;
    END LOOP;
END
$$;
REVOKE ALL ON FUNCTION store_inbox_events(jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION store_inbox_events(jsonb) TO lead_app;

-- (2) Released, revived or replayed events wake the dispatcher too.
CREATE FUNCTION notify_inbox_requeued() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('inbox_events', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER inbox_events_requeued AFTER UPDATE OF status ON inbox_events
    FOR EACH ROW WHEN (NEW.status = 'pending' AND OLD.status IN ('parked', 'dead'))
    EXECUTE FUNCTION notify_inbox_requeued();

-- (3) One row per shop. `interval_ms` is the current spacing between requests: it
-- doubles on a 429 (up to 5 s) and creeps back towards the shop's base spacing with
-- each granted slot, so a shop's calls settle just under whatever limit the CRM enforces.
CREATE TABLE crm_pace (
    tenant_id    bigint PRIMARY KEY REFERENCES tenants(id),
    next_slot    timestamptz NOT NULL DEFAULT clock_timestamp(),
    interval_ms  double precision NOT NULL,
    limited_at   timestamptz,  -- the last 429
    limited_count bigint NOT NULL DEFAULT 0
);
ALTER TABLE crm_pace ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON crm_pace USING (tenant_id = current_tenant_id())
    WITH CHECK (tenant_id = current_tenant_id());
GRANT SELECT, INSERT, UPDATE, DELETE ON crm_pace TO lead_app;
