-- depends: 0009_retry_revival_pace
-- A slot is reserved in one statement (INSERT … ON CONFLICT DO UPDATE): whether the
-- caller got its slot is written beside the slot, so that RETURNING can say so.
ALTER TABLE crm_pace ADD COLUMN granted boolean NOT NULL DEFAULT true;
