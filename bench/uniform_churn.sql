-- =============================================================================
-- crmvault benchmark: uniform churn
--
--   psql -X -q -1 -h 127.0.0.1 -U postgres -d bench_crm -v seed=1 -f bench/uniform_churn.sql
--
-- Updates about 1% of contacts, 1% of deals and 1% of activities, chosen
-- uniformly over all ids (no locality: the changed rows are spread over the
-- whole table, unlike bench/crm_day.sql). Each update changes a couple of
-- columns. Deterministic for a given database state and seed (default 1);
-- another seed picks other rows. No inserts, no deletes, no audit rows, no
-- transaction control (works inside a transaction), no foreign key changes.
-- =============================================================================

\set ON_ERROR_STOP on
\if :{?seed}
\else
\set seed 1
\endif
SET client_min_messages = warning;
SET max_parallel_workers_per_gather = 0;

-- A row is picked when hash(id, seed) % 100 = 0; the new values come from
-- other hashes of the same id. Change times: seed 1 = 2025-06-01.
SELECT extract(epoch FROM timestamptz '2025-06-01 00:00:00+00')::bigint + (:seed - 1) * 86400 AS t0,
       :seed * 1000 + 500 AS salt
\gset

UPDATE crm.contacts
   SET phone = regexp_replace(phone, '[0-9]+$', lpad(((hashint8extended(id, :salt + 2) & 9223372036854775807) % 10000000)::text, 7, '0')),
       custom_fields = custom_fields || jsonb_build_object('lead_score', (hashint8extended(id, :salt + 3) & 9223372036854775807) % 101),
       updated_at = to_timestamp(:t0 + (hashint8extended(id, :salt + 4) & 9223372036854775807) % 86400)
 WHERE (hashint8extended(id, :salt + 1) & 9223372036854775807) % 100 = 0;

UPDATE crm.deals
   SET amount = round(amount * (80 + (hashint8extended(id, :salt + 12) & 9223372036854775807) % 41) / 100, 2),
       updated_at = to_timestamp(:t0 + (hashint8extended(id, :salt + 13) & 9223372036854775807) % 86400)
 WHERE (hashint8extended(id, :salt + 11) & 9223372036854775807) % 100 = 0;

UPDATE crm.activities
   SET outcome = (ARRAY['completed','no answer','left voicemail','rescheduled','positive','negative','follow-up needed'])
                   [1 + (hashint8extended(id, :salt + 22) & 9223372036854775807) % 7],
       updated_at = to_timestamp(:t0 + (hashint8extended(id, :salt + 23) & 9223372036854775807) % 86400)
 WHERE (hashint8extended(id, :salt + 21) & 9223372036854775807) % 100 = 0;
