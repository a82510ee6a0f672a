-- Hardening of the row-level security set up in 0001 (see docs/security.md, "Tenant
-- isolation"). Everything here works for a migrating user that is not a superuser.

-- SECURITY DEFINER functions run as the owner and see past RLS. Their search_path named
-- only `public`, which leaves pg_temp searched FIRST for tables: any session may create
-- temporary tables, so a caller could shadow `tenants` or `inbox_events` with its own.
-- Naming pg_temp last closes that (PostgreSQL docs, "Writing SECURITY DEFINER
-- Functions Safely").
ALTER FUNCTION tenant_id_for_slug(text) SET search_path = public, pg_temp;
ALTER FUNCTION active_tenant_ids() SET search_path = public, pg_temp;
ALTER FUNCTION inbox_backlog() SET search_path = public, pg_temp;
ALTER FUNCTION claim_inbox_events(text, integer, interval) SET search_path = public, pg_temp;

-- The application reads its shop; it never changes one. Shops (their credentials,
-- slug, active flag) are changed by the administrator as the owner (`shops` CLI), so
-- an application connection cannot point a shop's webhooks or keys elsewhere, not even
-- its own tenant's.
REVOKE UPDATE ON tenants FROM lead_app;

-- Shops are created only by the owner: the application has no use for their sequence.
REVOKE ALL ON SEQUENCE tenants_id_seq FROM lead_app;

-- Why not FORCE ROW LEVEL SECURITY: FORCE applies the policies to the table owner
-- too. The owner is who runs migrations, the shops CLI and the SECURITY DEFINER
-- functions above, all of which must see every tenant; the application never acts as
-- the owner (its connections SET ROLE lead_app before any query, and db.py refuses a
-- transaction whose role is not lead_app). With FORCE the definer functions would see
-- no rows unless the owner were a superuser or had BYPASSRLS, so the embedded server
-- (superuser) and an external one (plain owner) would behave differently.
