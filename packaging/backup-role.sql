-- A least-privilege PostgreSQL role for crmvault backups (PostgreSQL 14 or newer): it can read
-- every table and sequence and run pg_dump, and change nothing.
--
--   psql -v ON_ERROR_STOP=1 -f backup-role.sql                          # role crmvault_backup, no password
--   psql -v ON_ERROR_STOP=1 -v role=nightly_backup -f backup-role.sql   # another name
--   psql -v ON_ERROR_STOP=1 -v password="$(cat db-password)" -f backup-role.sql   # with a password
--
-- Without a password the role logs in by peer authentication (the backup runs on the database
-- host as the system user crmvault) or a client certificate, never by a password that could be
-- guessed or left at a default. pg_hba.conf, before any broader line:
--   local    all  crmvault_backup                 peer map=crmvault
--   hostssl  all  crmvault_backup  10.0.0.5/32    cert
-- and pg_ident.conf, for peer:
--   crmvault  crmvault  crmvault_backup
-- A server that logs DDL logs the statement with the password (psql's \password ROLE sends it
-- hashed instead). Keep the password in /etc/crmvault/db-password (0600, root), which the
-- systemd units pass to crmvault as a credential (docs/OPERATIONS.md).
\if :{?role}
\else
\set role crmvault_backup
\endif
-- BYPASSRLS: row security applies to pg_read_all_data too, and a backup must hold every row of
-- a table with policies (crmvault, like pg_dump, refuses to save part of one).
CREATE ROLE :"role" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION BYPASSRLS;
\if :{?password}
ALTER ROLE :"role" PASSWORD :'password';
\endif
GRANT pg_read_all_data TO :"role";
-- Large objects are readable by their owner only unless lo_compat_privileges is on;
-- if the CRM stores files as large objects, also: GRANT SELECT ON LARGE OBJECT <oid> TO crmvault_backup;
