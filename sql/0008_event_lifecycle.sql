-- The life of an inbox event after a failure (see docs/reliability.md):
--   pending     waiting to be claimed (again, after `available_at`)
--   processing  claimed by a dispatcher or an ingest run
--   done        applied (a lead made, updated, closed, or nothing to do)
--   parked      waiting for something outside our control that an operator or the shop
--               fixes: the shop's CRM credentials were refused (401/403). Released at once
--               when the credentials are updated or the poll sees them work again.
--   dead        given up, with its reason in `error`: an unexpected error repeated past
--               its budget, or the lead could no longer qualify (older than the shop's
--               max lead age). Replayable (`replay` command, replay job); a new sighting
--               of the same change by the poll or a re-delivered webhook revives it.
-- `failed` (the old terminal state, reached after 5 quick tries) is gone: those events
-- are given back to the queue, where the age rule decides whether they can still qualify.
ALTER TABLE inbox_events DROP CONSTRAINT inbox_events_status_check;
UPDATE inbox_events SET status = 'pending', available_at = now(), claimed_by = NULL
 WHERE status = 'failed';
ALTER TABLE inbox_events ADD CONSTRAINT inbox_events_status_check
    CHECK (status IN ('pending', 'processing', 'done', 'parked', 'dead'));

-- Unexpected errors (bugs, malformed CRM answers) have a small budget of their own;
-- CRM outages and rate limits never spend it (they are bounded by the lead's age).
ALTER TABLE inbox_events ADD COLUMN unexpected_errors integer NOT NULL DEFAULT 0;
-- When the event last changed state, for "oldest parked" and "dead since" questions.
ALTER TABLE inbox_events ADD COLUMN status_changed_at timestamptz NOT NULL DEFAULT now();

CREATE INDEX inbox_events_stuck ON inbox_events (tenant_id, status) WHERE status IN ('parked', 'dead');
