-- Core schema: tenants, webhook inbox, leads, contacts/consent, touches, lead events,
-- poll state. Every tenant-owned table carries tenant_id and is guarded by row-level
-- security: the application runs as role lead_app (not the owner), and each
-- transaction names its tenant with set_config('app.tenant_id', ..., true).

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'lead_app') THEN
        CREATE ROLE lead_app NOLOGIN;
    END IF;
END
$$;
-- The migrating user switches to lead_app with SET ROLE for application work.
GRANT lead_app TO CURRENT_USER;

-- The tenant named by the current transaction; NULL when none is set, so that
-- RLS policies match no row and writes fail.
CREATE OR REPLACE FUNCTION current_tenant_id() RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT nullif(current_setting('app.tenant_id', true), '')::bigint
$$;

CREATE TABLE tenants (
    id                   bigserial PRIMARY KEY,
    slug                 text NOT NULL UNIQUE CHECK (slug ~ '^[a-z0-9][a-z0-9-]{1,62}$'),
    name                 text NOT NULL,
    time_zone            text NOT NULL DEFAULT 'America/Chicago',
    active               boolean NOT NULL DEFAULT true,
    shop_phone           text,
    postal_address       text,
    shopmonkey_api_key   text,
    webhook_secret       text,
    twilio_account_sid   text,
    twilio_auth_token    text,
    twilio_sender        text,
    sendgrid_api_key     text,
    sendgrid_sender      text,
    -- Messages go out only inside this daily window, shop time (US rule: 8:00-21:00).
    send_window_start    time NOT NULL DEFAULT '08:00',
    send_window_end      time NOT NULL DEFAULT '21:00',
    max_lead_age_days    integer NOT NULL DEFAULT 7 CHECK (max_lead_age_days > 0),
    settings             jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now()
);

-- Webhook deliveries and polled orders, stored before anything acts on them.
CREATE TABLE inbox_events (
    id                bigserial PRIMARY KEY,
    tenant_id         bigint NOT NULL REFERENCES tenants(id),
    source            text NOT NULL CHECK (source IN ('webhook', 'poll', 'manual')),
    webhook_id        text,
    -- (table, data.id, data.updatedDate): the same change seen twice is stored once.
    dedup_key         text NOT NULL,
    operation         text NOT NULL,
    table_name        text NOT NULL,
    object_id         text NOT NULL,
    payload           jsonb NOT NULL,
    received_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    status            text NOT NULL DEFAULT 'pending'
                      CHECK (status IN ('pending', 'processing', 'done', 'failed')),
    claimed_by        text,
    claimed_at        timestamptz,
    processed_at      timestamptz,
    attempts          integer NOT NULL DEFAULT 0,
    outcome           text,
    error             text,
    UNIQUE (tenant_id, dedup_key)
);
CREATE UNIQUE INDEX inbox_events_webhook_id ON inbox_events (tenant_id, webhook_id)
    WHERE webhook_id IS NOT NULL;
CREATE INDEX inbox_events_pending ON inbox_events (id) WHERE status IN ('pending', 'processing');

CREATE TABLE leads (
    id                   bigserial PRIMARY KEY,
    tenant_id            bigint NOT NULL REFERENCES tenants(id),
    order_id             text NOT NULL,
    order_number         text,
    customer_id          text,
    vehicle_id           text,
    first_name           text,
    last_name            text,
    vehicle_name         text,
    total_cents          bigint,
    phone_e164           text,
    email                text,
    status               text NOT NULL
                         CHECK (status IN ('active', 'disqualified', 'converted', 'closed', 'stopped', 'completed')),
    status_reason        text,
    source               text NOT NULL,
    order_created_at     timestamptz,
    order_updated_at     timestamptz,
    first_seen_at        timestamptz NOT NULL,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    ended_at             timestamptz,
    UNIQUE (tenant_id, order_id),
    UNIQUE (tenant_id, id)
);

-- Consent per address: an opt-out applies to every lead and sequence of the shop.
CREATE TABLE contacts (
    tenant_id        bigint NOT NULL REFERENCES tenants(id),
    channel          text NOT NULL CHECK (channel IN ('sms', 'email')),
    address          text NOT NULL,
    opted_out        boolean NOT NULL DEFAULT false,
    changed_at       timestamptz NOT NULL DEFAULT now(),
    change_source    text,
    PRIMARY KEY (tenant_id, channel, address)
);

-- One row per (lead, step, channel), reserved before the provider call and completed
-- after it: the unique key is what makes a second send impossible.
CREATE TABLE touches (
    id                   bigserial PRIMARY KEY,
    tenant_id            bigint NOT NULL REFERENCES tenants(id),
    lead_id              bigint NOT NULL,
    step                 integer NOT NULL,
    channel              text NOT NULL CHECK (channel IN ('sms', 'email')),
    status               text NOT NULL
                         CHECK (status IN ('scheduled', 'deferred', 'sending', 'sent', 'failed',
                                           'unknown', 'skipped', 'cancelled')),
    reason               text,
    due_at               timestamptz NOT NULL,
    send_after           timestamptz NOT NULL,
    to_address           text,
    subject              text,
    body                 text,
    provider_message_id  text,
    delivery_status      text,
    error_code           text,
    attempts             integer NOT NULL DEFAULT 0,
    reserved_at          timestamptz,
    sent_at              timestamptz,
    updated_at           timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, lead_id, step, channel),
    FOREIGN KEY (tenant_id, lead_id) REFERENCES leads (tenant_id, id)
);
CREATE INDEX touches_due ON touches (send_after) WHERE status IN ('scheduled', 'deferred');
CREATE INDEX touches_provider_id ON touches (provider_message_id) WHERE provider_message_id IS NOT NULL;

-- Every decision about a lead, so "why didn't this customer get a text?" has an answer.
CREATE TABLE lead_events (
    id           bigserial PRIMARY KEY,
    tenant_id    bigint NOT NULL REFERENCES tenants(id),
    lead_id      bigint,
    order_id     text,
    at           timestamptz NOT NULL DEFAULT clock_timestamp(),
    kind         text NOT NULL,
    detail       jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX lead_events_lead ON lead_events (tenant_id, lead_id, at);

CREATE TABLE poll_state (
    tenant_id          bigint PRIMARY KEY REFERENCES tenants(id),
    watermark          timestamptz,
    last_polled_at     timestamptz,
    last_success_at    timestamptz,
    consecutive_errors integer NOT NULL DEFAULT 0,
    last_error         text,
    health             text NOT NULL DEFAULT 'ok' CHECK (health IN ('ok', 'failing', 'unauthorized'))
);

-- Row-level security on every tenant-owned table.
DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['inbox_events', 'leads', 'contacts', 'touches', 'lead_events', 'poll_state']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY tenant_isolation ON %I USING (tenant_id = current_tenant_id())
                        WITH CHECK (tenant_id = current_tenant_id())', t);
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %I TO lead_app', t);
    END LOOP;
END
$$;
ALTER TABLE tenants ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tenants USING (id = current_tenant_id());
GRANT SELECT, UPDATE ON tenants TO lead_app;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO lead_app;

-- The few cross-tenant reads the system needs, each returning identifiers only.
-- SECURITY DEFINER runs them as the owner, so they see past RLS by design.
CREATE FUNCTION tenant_id_for_slug(p_slug text) RETURNS bigint
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public AS $$
    SELECT id FROM tenants WHERE slug = p_slug AND active
$$;

CREATE FUNCTION active_tenant_ids() RETURNS SETOF bigint
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public AS $$
    SELECT id FROM tenants WHERE active ORDER BY id
$$;

-- Highest pending inbox id and how many are waiting: what the sensor needs to decide.
CREATE FUNCTION inbox_backlog(OUT pending bigint, OUT max_id bigint, OUT oldest timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public AS $$
    SELECT count(*), max(id), min(received_at) FROM inbox_events WHERE status = 'pending'
$$;

-- Claims pending events (and ones whose claim went stale, e.g. a crashed run) for one
-- worker; SKIP LOCKED keeps two workers from claiming the same row.
CREATE FUNCTION claim_inbox_events(p_claimer text, p_limit integer, p_stale_after interval)
RETURNS TABLE (tenant_id bigint, event_id bigint)
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public AS $$
    UPDATE inbox_events e
       SET status = 'processing', claimed_by = p_claimer, claimed_at = clock_timestamp(),
           attempts = e.attempts + 1
     WHERE e.id IN (
           SELECT id FROM inbox_events
            WHERE status = 'pending'
               OR (status = 'processing' AND claimed_at < clock_timestamp() - p_stale_after)
            ORDER BY id
            LIMIT p_limit
            FOR UPDATE SKIP LOCKED)
    RETURNING e.tenant_id, e.id
$$;

-- Wake the fast path as soon as an event is committed.
CREATE FUNCTION notify_inbox() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('inbox_events', NEW.id::text);
    RETURN NULL;
END
$$;
CREATE TRIGGER inbox_events_notify AFTER INSERT ON inbox_events
    FOR EACH ROW EXECUTE FUNCTION notify_inbox();

REVOKE ALL ON FUNCTION tenant_id_for_slug(text), active_tenant_ids(), inbox_backlog(),
    claim_inbox_events(text, integer, interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION tenant_id_for_slug(text), active_tenant_ids(), inbox_backlog(),
    claim_inbox_events(text, integer, interval) TO lead_app;
