-- The poll's SECURITY DEFINER functions (0002) were written beside 0004, which pins the
-- search_path of such functions with pg_temp last; pin these two the same way.
ALTER FUNCTION poll_due_tenant_ids(timestamptz) SET search_path = public, pg_temp;
ALTER FUNCTION poll_backoff_counts(timestamptz) SET search_path = public, pg_temp;
