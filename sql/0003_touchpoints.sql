-- Touch-point engine: the per-shop key that verifies SendGrid's signed Event Webhook,
-- a guard on touch status transitions (the database refuses any path that could send a
-- message twice), and the indexes the stop conditions need (leads by phone / email).

-- Public key (base64 DER, as SendGrid's settings page shows it). Not a secret.
ALTER TABLE tenants ADD COLUMN IF NOT EXISTS sendgrid_event_public_key text;

-- A touch only ever moves forward. Once it is `sent`, `failed`, `skipped`, `cancelled`
-- or `unknown` nothing can make it due again; the one way back from `sending` to
-- `scheduled` is a transient error, which means the provider did not take the message.
-- `unknown -> sent` is allowed: a status callback can prove that the provider has it.
CREATE OR REPLACE FUNCTION touches_guard_transition() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
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
    IF OLD.status = 'unknown' AND NEW.status = 'sent' THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'touch %: status % -> % is not allowed', OLD.id, OLD.status, NEW.status
        USING ERRCODE = 'check_violation';
END
$$;

DROP TRIGGER IF EXISTS touches_guard_transition ON touches;
CREATE TRIGGER touches_guard_transition BEFORE UPDATE OF status ON touches
    FOR EACH ROW EXECUTE FUNCTION touches_guard_transition();

-- Stop conditions find every lead of a contact (a STOP, a reply, an unsubscribe).
CREATE INDEX IF NOT EXISTS leads_phone ON leads (tenant_id, phone_e164) WHERE phone_e164 IS NOT NULL;
CREATE INDEX IF NOT EXISTS leads_email ON leads (tenant_id, lower(email)) WHERE email IS NOT NULL;
CREATE INDEX IF NOT EXISTS touches_lead ON touches (tenant_id, lead_id, status);
-- Contact-level decisions (an opt-out from a number with no lead) are found by address.
CREATE INDEX IF NOT EXISTS lead_events_address ON lead_events (tenant_id, (detail->>'address'))
    WHERE detail ? 'address';
