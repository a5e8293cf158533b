-- A least-privilege PostgreSQL role for crmvault backups (PostgreSQL 14 or newer).
-- It can read every table and sequence and run pg_dump, and change nothing.
CREATE ROLE crmvault_backup LOGIN PASSWORD 'change me' NOSUPERUSER NOCREATEDB NOCREATEROLE;
GRANT pg_read_all_data TO crmvault_backup;
-- Large objects are readable by their owner only unless lo_compat_privileges is on;
-- if the CRM stores files as large objects, also: GRANT SELECT ON LARGE OBJECT <oid> TO crmvault_backup;
