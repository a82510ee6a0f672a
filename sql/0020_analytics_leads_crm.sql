-- Analysts see which CRM each lead came from (a new last column; the view's others
-- unchanged, so saved queries keep working).
CREATE OR REPLACE VIEW analytics.leads WITH (security_invoker = false) AS
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
       l.order_created_at, l.first_seen_at, m.first_touch_at, l.ended_at, l.created_at, l.updated_at,
       l.crm
  FROM leads l
  JOIN tenants t ON t.id = l.tenant_id
  LEFT JOIN LATERAL (
      SELECT count(*) FILTER (WHERE x.status = 'sent') AS sent,
             count(*) FILTER (WHERE x.status = 'sent' AND x.delivery_status IN ('delivered', 'read')) AS delivered,
             min(x.sent_at) FILTER (WHERE x.status = 'sent') AS first_touch_at
        FROM touches x
       WHERE x.tenant_id = l.tenant_id AND x.lead_id = l.id) m ON true;

COMMENT ON COLUMN analytics.leads.crm IS 'The CRM the estimate came from: shopmonkey or tekmetric';
