-- depends: 0008_event_lifecycle
-- SQL for analysts (docs/analysts.md): read-only views over every shop's leads, messages,
-- first-touch latency and health, in schema `analytics`, and the role `lead_analyst`
-- that may read them and nothing else. Also the one cross-tenant read /readyz needs to
-- say which shops cannot reach their CRM.
--
-- How the views see every shop although the tables have row-level security:
-- they are ordinary (definer-rights) views, `security_invoker = false`, said explicitly
-- so that nobody flips it by accident. PostgreSQL then checks the underlying tables,
-- and applies their RLS policies, as the view's OWNER, which is the migrating user who
-- owns the tables. The policies do not bind a table's owner (RLS is enabled, not FORCEd,
-- see 0004), so the views return every tenant's rows. The analyst role gets SELECT on
-- the views only: the base tables stay out of its reach (permission denied), and the
-- columns a view leaves out (shop credentials, contact details, message bodies, webhook
-- payloads) cannot be read through it. Nothing here is granted to `lead_app`: the
-- application keeps seeing one tenant at a time.
--
-- The alternative, `security_invoker = true` with a policy per table letting
-- lead_analyst read every row, was not chosen: it would add a second policy to every
-- table the hot path writes, and give the analyst role rights on the base tables
-- (every column, secrets included) that column grants would then have to take back.
--
-- No view filters rows to hide them (what is hidden is whole columns), so none needs
-- `security_barrier`: a function an analyst writes can only see what the view shows.
--
-- `security_invoker` needs PostgreSQL 15 or later (the embedded server is 18).

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'lead_analyst') THEN
        -- NOLOGIN: the operator grants it to a login role of their own (docs/analysts.md).
        CREATE ROLE lead_analyst NOLOGIN;
    END IF;
END
$$;
-- The migrating user reads as lead_analyst too (`status` and `sql` do SET ROLE).
GRANT lead_analyst TO CURRENT_USER;

CREATE SCHEMA analytics;
COMMENT ON SCHEMA analytics IS 'Read-only views over every shop, for analysts (role lead_analyst); see docs/analysts.md';

-- Shops without their credentials.
CREATE VIEW analytics.shops WITH (security_invoker = false) AS
SELECT t.id AS shop_id, t.slug AS shop, t.name, t.time_zone, t.active,
       t.send_window_start, t.send_window_end, t.max_lead_age_days, t.created_at
  FROM tenants t;

-- One row per lead, with how far it got. funnel_stage is the furthest step reached:
-- not_qualified | qualified (nothing sent yet) | touched (a message sent) | delivered
-- (a delivery confirmed) | replied | converted (approved, booked, paid...) | opted_out
-- (STOP, unsubscribe, spam report) | bounced (email bounced or dropped). How a lead
-- ended is in status / status_reason; a lead that had already ended is not changed by a
-- later reply or approval.
CREATE VIEW analytics.leads WITH (security_invoker = false) AS
SELECT l.id AS lead_id, t.slug AS shop, l.tenant_id AS shop_id,
       l.order_id, l.order_number,
       nullif(concat_ws(' ', l.first_name, l.last_name), '') AS customer_name,
       l.vehicle_name AS vehicle, l.total_cents AS estimate_total_cents,
       l.source, l.status, l.status_reason,
       CASE
           WHEN l.status = 'disqualified' THEN 'not_qualified'
           WHEN l.status = 'converted' THEN 'converted'
           WHEN l.status = 'stopped' AND l.status_reason = 'replied' THEN 'replied'
           WHEN l.status = 'stopped' AND l.status_reason IN ('opted_out', 'unsubscribed', 'spam_report') THEN 'opted_out'
           WHEN l.status = 'stopped' AND l.status_reason IN ('email_bounced', 'email_dropped') THEN 'bounced'
           WHEN m.delivered > 0 THEN 'delivered'
           WHEN m.sent > 0 THEN 'touched'
           ELSE 'qualified'
       END AS funnel_stage,
       l.status <> 'disqualified' AS qualified,
       coalesce(m.sent, 0) > 0 AS touched,
       coalesce(m.delivered, 0) > 0 AS delivered,
       l.status = 'stopped' AND l.status_reason = 'replied' AS replied,
       l.status = 'converted' AS converted,
       l.status = 'stopped' AND l.status_reason IN ('opted_out', 'unsubscribed', 'spam_report') AS opted_out,
       l.status = 'stopped' AND l.status_reason IN ('email_bounced', 'email_dropped') AS bounced,
       l.phone_e164 IS NOT NULL AS reachable_by_sms,
       l.email IS NOT NULL AS reachable_by_email,
       coalesce(m.sent, 0) AS messages_sent,
       l.order_created_at, l.first_seen_at, m.first_touch_at, l.ended_at, l.created_at, l.updated_at
  FROM leads l
  JOIN tenants t ON t.id = l.tenant_id
  LEFT JOIN LATERAL (
      SELECT count(*) FILTER (WHERE x.status = 'sent') AS sent,
             count(*) FILTER (WHERE x.status = 'sent' AND x.delivery_status IN ('delivered', 'read')) AS delivered,
             min(x.sent_at) FILTER (WHERE x.status = 'sent') AS first_touch_at
        FROM touches x
       WHERE x.tenant_id = l.tenant_id AND x.lead_id = l.id) m ON true;

-- One row per message (a touch: lead, step, channel), planned, sent or not.
-- delivery_outcome: pending (not sent yet) | not_sent (skipped or cancelled, see
-- reason) | failed (the provider refused it) | unknown (the provider may have it; never
-- re-sent) | sent (accepted, no delivery report yet) | delivered | undelivered (SMS) |
-- bounced (email bounced, blocked or dropped).
CREATE VIEW analytics.messages WITH (security_invoker = false) AS
SELECT x.id AS message_id, t.slug AS shop, x.tenant_id AS shop_id, x.lead_id,
       x.step, x.channel, x.status, x.reason,
       CASE
           WHEN x.status IN ('scheduled', 'deferred', 'sending') THEN 'pending'
           WHEN x.status IN ('skipped', 'cancelled') THEN 'not_sent'
           WHEN x.status IN ('failed', 'unknown') THEN x.status
           WHEN x.delivery_status IN ('delivered', 'read') THEN 'delivered'
           WHEN x.delivery_status IN ('undelivered', 'failed', 'canceled') THEN 'undelivered'
           WHEN x.delivery_status IN ('bounce', 'blocked', 'dropped') THEN 'bounced'
           ELSE 'sent'
       END AS delivery_outcome,
       x.delivery_status, x.error_code,
       x.due_at, x.send_after, x.sent_at,
       -- Moved past its due time: quiet hours, spacing, a daily limit, or a retry.
       x.send_after > x.due_at AS deferred,
       round(extract(epoch FROM x.sent_at - x.due_at)::numeric, 3) AS seconds_after_due,
       x.attempts, x.updated_at
  FROM touches x
  JOIN tenants t ON t.id = x.tenant_id;

-- One row per qualified lead: how long the customer waited for the first message,
-- from the estimate's creation in the CRM (what the customer lives) and from our first
-- sight of it (what we control; for poll-found leads the difference is the poll's delay).
-- deferred_by_send_rules: the first step was held back by the shop's send rules (quiet
-- hours, closed day, daily limit), so its latency is not a speed problem; count it apart.
CREATE VIEW analytics.first_touch WITH (security_invoker = false) AS
SELECT l.id AS lead_id, t.slug AS shop, l.tenant_id AS shop_id, l.source, l.status,
       l.order_created_at, l.first_seen_at, f.first_touch_at, f.channel AS first_touch_channel,
       round(extract(epoch FROM f.first_touch_at - l.order_created_at)::numeric, 3) AS seconds_from_created,
       round(extract(epoch FROM f.first_touch_at - l.first_seen_at)::numeric, 3) AS seconds_from_first_seen,
       round(extract(epoch FROM l.first_seen_at - l.order_created_at)::numeric, 3) AS seconds_until_seen,
       f.first_touch_at - l.order_created_at <= interval '30 seconds' AS within_30s_of_created,
       d.reason IS NOT NULL AS deferred_by_send_rules,
       d.reason AS deferral_reason,
       CASE WHEN f.first_touch_at IS NULL THEN s.reasons END AS not_sent_reasons
  FROM leads l
  JOIN tenants t ON t.id = l.tenant_id
  LEFT JOIN LATERAL (
      SELECT x.sent_at AS first_touch_at, x.channel
        FROM touches x
       WHERE x.tenant_id = l.tenant_id AND x.lead_id = l.id AND x.status = 'sent'
       ORDER BY x.sent_at, x.id LIMIT 1) f ON true
  LEFT JOIN LATERAL (
      SELECT e.detail ->> 'reason' AS reason
        FROM lead_events e
       WHERE e.tenant_id = l.tenant_id AND e.lead_id = l.id AND e.kind = 'touch_deferred'
         AND e.detail ->> 'step' = '0'
       ORDER BY e.at, e.id LIMIT 1) d ON true
  LEFT JOIN LATERAL (
      SELECT string_agg(DISTINCT x.channel || ': ' || coalesce(x.reason, x.status), '; ') AS reasons
        FROM touches x
       WHERE x.tenant_id = l.tenant_id AND x.lead_id = l.id AND x.step = 0) s ON true
 WHERE l.status <> 'disqualified';

-- One row per shop: what is waiting, what is stuck, and whether its CRM answers.
CREATE VIEW analytics.shop_health WITH (security_invoker = false) AS
SELECT t.id AS shop_id, t.slug AS shop, t.name, t.time_zone, t.active,
       coalesce(l.active, 0) AS active_leads,
       coalesce(m.scheduled, 0) AS messages_scheduled,
       coalesce(m.deferred, 0) AS messages_deferred,
       m.next_send_at,
       coalesce(m.sending, 0) AS messages_sending,
       coalesce(m.unknown, 0) AS unknown_sends,
       coalesce(e.pending, 0) AS events_pending,
       coalesce(e.processing, 0) AS events_processing,
       coalesce(e.parked, 0) AS events_parked,
       coalesce(e.dead, 0) AS events_dead,
       e.oldest_pending_at, e.parked_since, e.oldest_dead_at,
       e.last_webhook_at, e.last_poll_event_at,
       -- 'not_polled': the poll has not reached this shop yet.
       coalesce(p.health, 'not_polled') AS poll_health,
       p.last_polled_at AS poll_last_polled_at, p.last_success_at AS poll_last_success_at,
       coalesce(p.consecutive_errors, 0) AS poll_consecutive_errors,
       p.last_error AS poll_last_error, p.last_error_at AS poll_last_error_at,
       p.next_poll_at AS poll_next_at
  FROM tenants t
  LEFT JOIN (
      SELECT tenant_id, count(*) AS active FROM leads WHERE status = 'active' GROUP BY tenant_id) l
         ON l.tenant_id = t.id
  LEFT JOIN (
      SELECT tenant_id,
             count(*) FILTER (WHERE status = 'scheduled') AS scheduled,
             count(*) FILTER (WHERE status = 'deferred') AS deferred,
             count(*) FILTER (WHERE status = 'sending') AS sending,
             count(*) FILTER (WHERE status = 'unknown') AS unknown,
             min(send_after) FILTER (WHERE status IN ('scheduled', 'deferred')) AS next_send_at
        FROM touches WHERE status IN ('scheduled', 'deferred', 'sending', 'unknown')
       GROUP BY tenant_id) m ON m.tenant_id = t.id
  LEFT JOIN (
      SELECT tenant_id,
             count(*) FILTER (WHERE status = 'pending') AS pending,
             count(*) FILTER (WHERE status = 'processing') AS processing,
             count(*) FILTER (WHERE status = 'parked') AS parked,
             count(*) FILTER (WHERE status = 'dead') AS dead,
             min(received_at) FILTER (WHERE status = 'pending') AS oldest_pending_at,
             min(status_changed_at) FILTER (WHERE status = 'parked') AS parked_since,
             min(status_changed_at) FILTER (WHERE status = 'dead') AS oldest_dead_at,
             max(received_at) FILTER (WHERE source = 'webhook') AS last_webhook_at,
             max(received_at) FILTER (WHERE source = 'poll') AS last_poll_event_at
        FROM inbox_events GROUP BY tenant_id) e ON e.tenant_id = t.id
  LEFT JOIN poll_state p ON p.tenant_id = t.id;

COMMENT ON VIEW analytics.shops IS 'Shops (tenants) without their credentials';
COMMENT ON VIEW analytics.leads IS 'One row per lead with its funnel stage';
COMMENT ON VIEW analytics.messages IS 'One row per message (touch) with its delivery outcome';
COMMENT ON VIEW analytics.first_touch IS 'Time to first touch per qualified lead, from estimate creation and from first sight';
COMMENT ON VIEW analytics.shop_health IS 'Per shop: active leads, waiting messages, inbox events by status, CRM poll health';

-- Read the views, nothing else. Views that later migrations add here are readable too.
GRANT USAGE ON SCHEMA analytics TO lead_analyst;
GRANT SELECT ON ALL TABLES IN SCHEMA analytics TO lead_analyst;
ALTER DEFAULT PRIVILEGES IN SCHEMA analytics GRANT SELECT ON TABLES TO lead_analyst;
GRANT EXECUTE ON FUNCTION fast_path_alive() TO lead_analyst;

-- /readyz: active shops whose CRM poll is failing or whose key was refused. Runs as the
-- owner (SECURITY DEFINER) for the receiver's tenant-less connection and returns the
-- shop's slug and poll figures only, never an error text.
CREATE FUNCTION crm_health_problems()
RETURNS TABLE (shop text, health text, last_success_at timestamptz, consecutive_errors integer)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT t.slug, p.health, p.last_success_at, p.consecutive_errors
      FROM poll_state p JOIN tenants t ON t.id = p.tenant_id
     WHERE t.active AND p.health <> 'ok'
     ORDER BY t.slug
$$;
REVOKE ALL ON FUNCTION crm_health_problems() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION crm_health_problems() TO lead_app;
