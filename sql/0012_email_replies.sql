-- Email replies (docs/replies.md): what a customer wrote to a lead's reply address, as
-- SendGrid Inbound Parse posted it, and the copy forwarded to the shop.
--
-- One row per (lead, message): the Message-ID (or a digest of the message when it has
-- none) is the key, so a post SendGrid repeats changes nothing. A reply stops the lead
-- through the same path as a text reply (lead_state.end_lead, logged in lead_events);
-- this table keeps what the log does not: the whole new text and the forward's outcome.
CREATE TABLE email_replies (
    id                  bigserial PRIMARY KEY,
    tenant_id           bigint NOT NULL REFERENCES tenants(id),
    lead_id             bigint NOT NULL,
    message_key         text NOT NULL,
    -- reply: a person answered (the lead stops); auto_reply: out-of-office, bounce, other
    -- machine-sent mail (recorded, nothing stops), with the reason in auto_reason.
    kind                text NOT NULL CHECK (kind IN ('reply', 'auto_reply')),
    auto_reason         text,
    from_address        text NOT NULL,
    from_name           text,
    subject             text,
    body                text NOT NULL,          -- the new text, quoted history removed
    attachments         jsonb NOT NULL DEFAULT '[]'::jsonb,  -- file names (the files are not kept)
    received_at         timestamptz NOT NULL,
    -- The copy to the shop: pending (to send, or to retry after a transient refusal),
    -- sending (reserved; a crash here leaves it, never re-sent), sent, failed, unknown
    -- (the provider may have it). NULL: not forwarded (auto replies).
    forward_to          text,
    forward_status      text CHECK (forward_status IN ('pending', 'sending', 'sent', 'failed', 'unknown')),
    forward_attempts    integer NOT NULL DEFAULT 0,
    forward_message_id  text,
    forward_error       text,
    forwarded_at        timestamptz,
    UNIQUE (tenant_id, lead_id, message_key),
    FOREIGN KEY (tenant_id, lead_id) REFERENCES leads (tenant_id, id)
);
CREATE INDEX email_replies_lead ON email_replies (tenant_id, lead_id, received_at);

ALTER TABLE email_replies ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON email_replies USING (tenant_id = current_tenant_id())
    WITH CHECK (tenant_id = current_tenant_id());
GRANT SELECT, INSERT, UPDATE ON email_replies TO lead_app;
GRANT USAGE ON SEQUENCE email_replies_id_seq TO lead_app;
