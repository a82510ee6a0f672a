-- depends: 0015_crm_pace_grant
-- The inbox learns which CRM an event came from (a second CRM, Tekmetric, is coming):
-- a `crm` column, and a de-duplication key that names it:
--     <crm>:<table>:<object id>:<version stamp>[:DELETE]
-- with the stamp in one spelling (UTC, milliseconds, Z: domain.estimates.stamp_key), so
-- that the webhook's text and the poll's parsed moment of one change give one key.
-- Existing keys (<table>:<object id>:<stamp as sent>[:DELETE], all ShopMonkey's) are
-- rewritten the same way, so an old pending, parked or dead event and a new sighting
-- of the same change still meet (and the sighting revives a parked or dead one).
-- Leads record their CRM too.

ALTER TABLE inbox_events ADD COLUMN crm text NOT NULL DEFAULT 'shopmonkey';
ALTER TABLE leads ADD COLUMN crm text NOT NULL DEFAULT 'shopmonkey';

-- stamp_key() of lead_orchestrator/domain/estimates.py, in SQL: the same pattern, no
-- offset meaning UTC, digits past the microsecond dropped, milliseconds truncated; any
-- other text is kept as it is.
CREATE FUNCTION pg_temp.inbox_stamp_key(p_stamp text) RETURNS text LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    s text := btrim(p_stamp);
BEGIN
    IF s !~ '^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})?$' THEN
        RETURN p_stamp;
    END IF;
    s := regexp_replace(s, '(\.\d{6})\d+', '\1');
    IF s !~ '(Z|[+-]\d{2}:\d{2})$' THEN
        s := s || 'Z';
    END IF;
    RETURN to_char(s::timestamptz AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"');
EXCEPTION WHEN others THEN  -- e.g. month 13: not a date-time, kept as text
    RETURN p_stamp;
END
$$;

WITH old AS (
    SELECT id, tenant_id, operation = 'DELETE' AND dedup_key LIKE '%:DELETE' AS deleted,
           table_name || ':' || object_id || ':' AS head, dedup_key
      FROM inbox_events
), rewritten AS (
    SELECT id, tenant_id,
           CASE WHEN left(dedup_key, length(head)) = head
                THEN 'shopmonkey:' || head
                     || pg_temp.inbox_stamp_key(substr(dedup_key, length(head) + 1,
                                                       length(dedup_key) - length(head)
                                                       - CASE WHEN deleted THEN 7 ELSE 0 END))
                     || CASE WHEN deleted THEN ':DELETE' ELSE '' END
                ELSE 'shopmonkey:' || dedup_key
           END AS new_key
      FROM old
), ranked AS (
    -- Two spellings of one moment were two events; they stay two (the later one keeps
    -- a key of its own) rather than fail the upgrade.
    SELECT id, new_key, row_number() OVER (PARTITION BY tenant_id, new_key ORDER BY id) AS nth
      FROM rewritten
)
UPDATE inbox_events e
   SET dedup_key = r.new_key || CASE WHEN r.nth > 1 THEN ':duplicate-' || e.id ELSE '' END
  FROM ranked r
 WHERE r.id = e.id;

-- The group-commit insert of 0009, storing the CRM as well (revival unchanged).
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
                                      object_id, payload, crm)
            SELECT t, e ->> 'source', e ->> 'webhook_id', e ->> 'dedup_key', e ->> 'operation',
                   e ->> 'table_name', e ->> 'object_id', e -> 'payload', coalesce(e ->> 'crm', 'shopmonkey')
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
