-- =============================================================================
-- crmvault benchmark: one CRM day of changes
--
--   psql -X -q -1 -h 127.0.0.1 -U postgres -d bench_crm -v day=1 -f bench/crm_day.sql
--
-- Run after bench/crm_generate.sql, as often as you like, with day = 1, 2, ...
-- (default 1). Deterministic: the same database state and the same day give
-- the same changes. Everything is computed from the current contents, and the
-- script has no transaction control, so it works inside a transaction
-- (psql -1) or without one.
--
-- One day:
--   * +0.5% new rows in every table (at least one), same style as the generator,
--     created during the day (2025-01-01 is day 1)
--   * updates 1% of contacts, deals and tickets: 80% of them among the newest
--     10% of ids, 20% among the older ones (updated_at, stage/amount,
--     status/priority, lifecycle stage, phone, a jsonb field)
--   * deletes 0.1% of the activities, with their attachments first (the only
--     foreign key to activities)
--   * +2% rows in audit_log: one per update, delete and insert above, the rest
--     background changes in the style of the generator
--
-- Every percentage is of the current row counts, so days compound (+0.5% a day
-- is 6.2x in a year, +2% is 1377x). For a long history, -v base_scale=S (the
-- scale the database was generated with) takes them of the generator's counts
-- at scale S instead, the database of day 1: every day inserts, updates and
-- deletes as many rows as the first (linear growth), and audit_log keeps the
-- newest 90 days' worth of rows (90 x a day's audit rows), deleting the oldest
-- beyond them, as a CRM trims its audit log. Without it nothing changes.
-- =============================================================================

\set ON_ERROR_STOP on
\if :{?day}
\else
\set day 1
\endif
\if :{?base_scale}
\set history true
\else
\set history false
\endif

-- The generator's functions (pg_temp), without generating anything.
\set crm_defs_only 1
\ir crm_generate.sql
\unset crm_defs_only
SET max_parallel_workers_per_gather = 0;

DROP TABLE IF EXISTS pg_temp.crm_day_pick, pg_temp.crm_day_audit;
CREATE TEMP TABLE crm_day_pick (tbl text NOT NULL, id bigint NOT NULL, PRIMARY KEY (tbl, id));
CREATE TEMP TABLE crm_day_audit (
    occurred_at  timestamptz NOT NULL,
    ord          int NOT NULL,
    actor        text NOT NULL,
    table_name   text NOT NULL,
    row_id       bigint NOT NULL,
    action       text NOT NULL,
    old_values   jsonb,
    new_values   jsonb
);

-- -----------------------------------------------------------------------------
-- The state before today: row counts and highest ids
-- -----------------------------------------------------------------------------
SELECT (SELECT count(*) FROM crm.users)       AS c_users,       (SELECT max(id) FROM crm.users)       AS m_users,
       (SELECT count(*) FROM crm.companies)   AS c_companies,   (SELECT max(id) FROM crm.companies)   AS m_companies,
       (SELECT count(*) FROM crm.contacts)    AS c_contacts,    (SELECT max(id) FROM crm.contacts)    AS m_contacts,
       (SELECT count(*) FROM crm.deals)       AS c_deals,       (SELECT max(id) FROM crm.deals)       AS m_deals,
       (SELECT count(*) FROM crm.activities)  AS c_activities,  (SELECT max(id) FROM crm.activities)  AS m_activities,
       (SELECT count(*) FROM crm.tickets)     AS c_tickets,     (SELECT max(id) FROM crm.tickets)     AS m_tickets,
       (SELECT count(*) FROM crm.attachments) AS c_attachments, (SELECT max(id) FROM crm.attachments) AS m_attachments,
       (SELECT count(*) FROM crm.audit_log)   AS c_audit,       (SELECT max(id) FROM crm.audit_log)   AS m_audit,
       -- the day: seconds since 2021-01-01 (day 1 = 2025-01-01), one day long
       126230400 + (:day - 1) * 86400 AS t0,
       :day * 1000 AS salt
\gset

-- What the percentages are of: the current counts, or (history) the generator's counts at
-- base_scale (crm_generate.sql's formulas).
\if :history
SELECT greatest(10, round(500 * :base_scale))::bigint       AS b_users,
       greatest(20, round(24000 * :base_scale))::bigint     AS b_companies,
       greatest(50, round(240000 * :base_scale))::bigint    AS b_contacts,
       greatest(20, round(96000 * :base_scale))::bigint     AS b_deals,
       greatest(50, round(360000 * :base_scale))::bigint    AS b_activities,
       greatest(20, round(72000 * :base_scale))::bigint     AS b_tickets,
       greatest(10, round(29000 * :base_scale))::bigint     AS b_attachments,
       greatest(200, round(1200000 * :base_scale))::bigint  AS b_audit
\gset
\else
SELECT :c_users AS b_users, :c_companies AS b_companies, :c_contacts AS b_contacts, :c_deals AS b_deals,
       :c_activities AS b_activities, :c_tickets AS b_tickets, :c_attachments AS b_attachments, :c_audit AS b_audit
\gset
\endif

SELECT ceil(:b_users * 0.005)::bigint       AS n_users,
       ceil(:b_companies * 0.005)::bigint   AS n_companies,
       ceil(:b_contacts * 0.005)::bigint    AS n_contacts,
       ceil(:b_deals * 0.005)::bigint       AS n_deals,
       ceil(:b_activities * 0.005)::bigint  AS n_activities,
       ceil(:b_tickets * 0.005)::bigint     AS n_tickets,
       ceil(:b_attachments * 0.005)::bigint AS n_attachments,
       ceil(:b_audit * 0.02)::bigint        AS n_audit,
       ceil(:b_contacts * 0.01)::bigint     AS u_contacts,
       ceil(:b_deals * 0.01)::bigint        AS u_deals,
       ceil(:b_tickets * 0.01)::bigint      AS u_tickets,
       ceil(:b_activities * 0.001)::bigint  AS d_activities,
       -- first id of the newest 10% of each table
       (SELECT id FROM crm.contacts ORDER BY id DESC OFFSET ceil(:c_contacts * 0.1)::bigint - 1 LIMIT 1) AS cut_contacts,
       (SELECT id FROM crm.deals    ORDER BY id DESC OFFSET ceil(:c_deals * 0.1)::bigint - 1 LIMIT 1)    AS cut_deals,
       (SELECT id FROM crm.tickets  ORDER BY id DESC OFFSET ceil(:c_tickets * 0.1)::bigint - 1 LIMIT 1)  AS cut_tickets
\gset

-- -----------------------------------------------------------------------------
-- Which rows change today (80% of the updates among the newest 10% of ids)
-- -----------------------------------------------------------------------------
INSERT INTO crm_day_pick
SELECT 'contacts', id FROM (SELECT id FROM crm.contacts WHERE id >= :cut_contacts
                            ORDER BY hashint8extended(id, :salt + 1), id LIMIT round(:u_contacts * 0.8)) s
UNION ALL
SELECT 'contacts', id FROM (SELECT id FROM crm.contacts WHERE id < :cut_contacts
                            ORDER BY hashint8extended(id, :salt + 2), id LIMIT :u_contacts - round(:u_contacts * 0.8)) s
UNION ALL
SELECT 'deals', id FROM (SELECT id FROM crm.deals WHERE id >= :cut_deals
                         ORDER BY hashint8extended(id, :salt + 3), id LIMIT round(:u_deals * 0.8)) s
UNION ALL
SELECT 'deals', id FROM (SELECT id FROM crm.deals WHERE id < :cut_deals
                         ORDER BY hashint8extended(id, :salt + 4), id LIMIT :u_deals - round(:u_deals * 0.8)) s
UNION ALL
SELECT 'tickets', id FROM (SELECT id FROM crm.tickets WHERE id >= :cut_tickets
                           ORDER BY hashint8extended(id, :salt + 5), id LIMIT round(:u_tickets * 0.8)) s
UNION ALL
SELECT 'tickets', id FROM (SELECT id FROM crm.tickets WHERE id < :cut_tickets
                           ORDER BY hashint8extended(id, :salt + 6), id LIMIT :u_tickets - round(:u_tickets * 0.8)) s
UNION ALL
SELECT 'activities', id FROM (SELECT id FROM crm.activities
                              ORDER BY hashint8extended(id, :salt + 7), id LIMIT :d_activities) s;

-- -----------------------------------------------------------------------------
-- Updates (each with an audit row holding the old and the new values)
-- -----------------------------------------------------------------------------
WITH upd AS (
    UPDATE crm.contacts c
       SET updated_at = o.ts,
           lifecycle_stage = CASE WHEN pg_temp.r(c.id, :salt + 12, 3) = 0 THEN
                                  CASE o.lifecycle_stage WHEN 'lead' THEN 'marketing_qualified'
                                                         WHEN 'marketing_qualified' THEN 'sales_qualified'
                                                         WHEN 'sales_qualified' THEN 'opportunity'
                                                         WHEN 'opportunity' THEN 'customer'
                                                         WHEN 'customer' THEN 'evangelist'
                                                         ELSE o.lifecycle_stage END
                                  ELSE o.lifecycle_stage END,
           phone = CASE WHEN pg_temp.r(c.id, :salt + 13, 4) = 0
                        THEN regexp_replace(o.phone, '[0-9]+$', lpad(pg_temp.r(c.id, :salt + 14, 10000000)::text, 7, '0'))
                        ELSE o.phone END,
           custom_fields = o.custom_fields || jsonb_build_object('lead_score', pg_temp.r(c.id, :salt + 15, 101),
                                                                 'last_contacted', to_char(pg_temp.ts(:t0), 'YYYY-MM-DD'))
      FROM (SELECT x.*, pg_temp.ts(:t0 + pg_temp.r(x.id, :salt + 11, 86400)) AS ts
              FROM crm.contacts x WHERE x.id IN (SELECT id FROM crm_day_pick WHERE tbl = 'contacts')) o
     WHERE c.id = o.id
    RETURNING c.id, c.owner_id, o.updated_at AS o_updated_at, c.updated_at,
              o.lifecycle_stage AS o_stage, c.lifecycle_stage AS stage, o.phone AS o_phone, c.phone,
              o.custom_fields AS o_cf, c.custom_fields AS cf
)
INSERT INTO crm_day_audit
SELECT updated_at, 1, coalesce(pg_temp.user_email(owner_id), 'system'), 'contacts', id, 'UPDATE',
       jsonb_build_object('updated_at', o_updated_at, 'custom_fields', o_cf)
         || CASE WHEN stage <> o_stage THEN jsonb_build_object('lifecycle_stage', o_stage) ELSE '{}' END
         || CASE WHEN phone IS DISTINCT FROM o_phone THEN jsonb_build_object('phone', o_phone) ELSE '{}' END,
       jsonb_build_object('updated_at', updated_at, 'custom_fields', cf)
         || CASE WHEN stage <> o_stage THEN jsonb_build_object('lifecycle_stage', stage) ELSE '{}' END
         || CASE WHEN phone IS DISTINCT FROM o_phone THEN jsonb_build_object('phone', phone) ELSE '{}' END
FROM upd;

-- Deals: advance the stage (closing some), change the amount, or move the close date.
WITH upd AS (
    UPDATE crm.deals d
       SET updated_at = o.ts,
           stage = o.new_stage,
           probability = CASE o.new_stage WHEN 'lead' THEN 10 WHEN 'qualified' THEN 25 WHEN 'proposal' THEN 50
                                          WHEN 'negotiation' THEN 75 WHEN 'closed_won' THEN 100 ELSE 0 END,
           amount = CASE WHEN o.kind IN (1, 2) THEN round(o.amount * (80 + pg_temp.r(d.id, :salt + 22, 41)) / 100, 2)
                         ELSE o.amount END,
           expected_close_date = CASE WHEN o.kind = 3 THEN greatest(o.expected_close_date, (o.ts)::date) + 7 * (1 + pg_temp.r(d.id, :salt + 23, 8))::int
                                      ELSE o.expected_close_date END,
           closed_at = CASE WHEN o.new_stage IN ('closed_won', 'closed_lost') THEN coalesce(o.closed_at, o.ts) END
      FROM (SELECT x.*, pg_temp.ts(:t0 + pg_temp.r(x.id, :salt + 21, 86400)) AS ts, k.kind,
                   CASE WHEN k.kind IN (0, 2) THEN
                        CASE x.stage WHEN 'lead' THEN 'qualified' WHEN 'qualified' THEN 'proposal'
                                     WHEN 'proposal' THEN 'negotiation'
                                     WHEN 'negotiation' THEN CASE WHEN pg_temp.r(x.id, :salt + 25, 3) = 0 THEN 'closed_lost' ELSE 'closed_won' END
                                     ELSE x.stage::text END::crm.deal_stage
                        ELSE x.stage END AS new_stage
              FROM crm.deals x
             CROSS JOIN LATERAL (SELECT pg_temp.r(x.id, :salt + 24, 4)::int AS kind) k
             WHERE x.id IN (SELECT id FROM crm_day_pick WHERE tbl = 'deals')) o
     WHERE d.id = o.id
    RETURNING d.id, d.owner_id, o.updated_at AS o_updated_at, d.updated_at, o.stage AS o_stage, d.stage,
              o.probability AS o_probability, d.probability, o.amount AS o_amount, d.amount,
              o.expected_close_date AS o_close, d.expected_close_date AS close, o.closed_at AS o_closed_at, d.closed_at
)
INSERT INTO crm_day_audit
SELECT updated_at, 1, coalesce(pg_temp.user_email(owner_id), 'system'), 'deals', id, 'UPDATE',
       jsonb_build_object('updated_at', o_updated_at)
         || CASE WHEN stage <> o_stage THEN jsonb_build_object('stage', o_stage, 'probability', o_probability) ELSE '{}' END
         || CASE WHEN amount <> o_amount THEN jsonb_build_object('amount', o_amount) ELSE '{}' END
         || CASE WHEN close IS DISTINCT FROM o_close THEN jsonb_build_object('expected_close_date', o_close) ELSE '{}' END
         || CASE WHEN closed_at IS DISTINCT FROM o_closed_at THEN jsonb_build_object('closed_at', o_closed_at) ELSE '{}' END,
       jsonb_build_object('updated_at', updated_at)
         || CASE WHEN stage <> o_stage THEN jsonb_build_object('stage', stage, 'probability', probability) ELSE '{}' END
         || CASE WHEN amount <> o_amount THEN jsonb_build_object('amount', amount) ELSE '{}' END
         || CASE WHEN close IS DISTINCT FROM o_close THEN jsonb_build_object('expected_close_date', close) ELSE '{}' END
         || CASE WHEN closed_at IS DISTINCT FROM o_closed_at THEN jsonb_build_object('closed_at', closed_at) ELSE '{}' END
FROM upd;

-- Tickets: move the status along, sometimes change priority or assignee.
WITH upd AS (
    UPDATE crm.tickets t
       SET updated_at = o.ts,
           status = o.new_status,
           priority = CASE WHEN pg_temp.r(t.id, :salt + 32, 5) = 0
                           THEN (ARRAY['low','normal','high','urgent'])[1 + pg_temp.r(t.id, :salt + 33, 4)] ELSE o.priority END,
           assignee_id = CASE WHEN pg_temp.r(t.id, :salt + 34, 4) = 0
                              THEN 1 + pg_temp.r(t.id, :salt + 35, :m_users) ELSE o.assignee_id END,
           resolved_at = CASE WHEN o.new_status IN ('solved', 'closed') THEN coalesce(o.resolved_at, o.ts) END
      FROM (SELECT x.*, pg_temp.ts(:t0 + pg_temp.r(x.id, :salt + 31, 86400)) AS ts,
                   CASE x.status WHEN 'new' THEN 'open' WHEN 'open' THEN (ARRAY['pending','solved','on_hold'])[1 + pg_temp.r(x.id, :salt + 36, 3)]
                                 WHEN 'pending' THEN 'solved' WHEN 'on_hold' THEN 'open' WHEN 'solved' THEN 'closed'
                                 ELSE 'open' END AS new_status   -- a closed ticket is re-opened
              FROM crm.tickets x WHERE x.id IN (SELECT id FROM crm_day_pick WHERE tbl = 'tickets')) o
     WHERE t.id = o.id
    RETURNING t.id, t.assignee_id, o.updated_at AS o_updated_at, t.updated_at, o.status AS o_status, t.status,
              o.priority AS o_priority, t.priority, o.assignee_id AS o_assignee_id, o.resolved_at AS o_resolved_at, t.resolved_at
)
INSERT INTO crm_day_audit
SELECT updated_at, 1, coalesce(pg_temp.user_email(assignee_id), 'system'), 'tickets', id, 'UPDATE',
       jsonb_build_object('updated_at', o_updated_at, 'status', o_status)
         || CASE WHEN priority <> o_priority THEN jsonb_build_object('priority', o_priority) ELSE '{}' END
         || CASE WHEN assignee_id IS DISTINCT FROM o_assignee_id THEN jsonb_build_object('assignee_id', o_assignee_id) ELSE '{}' END
         || CASE WHEN resolved_at IS DISTINCT FROM o_resolved_at THEN jsonb_build_object('resolved_at', o_resolved_at) ELSE '{}' END,
       jsonb_build_object('updated_at', updated_at, 'status', status)
         || CASE WHEN priority <> o_priority THEN jsonb_build_object('priority', priority) ELSE '{}' END
         || CASE WHEN assignee_id IS DISTINCT FROM o_assignee_id THEN jsonb_build_object('assignee_id', assignee_id) ELSE '{}' END
         || CASE WHEN resolved_at IS DISTINCT FROM o_resolved_at THEN jsonb_build_object('resolved_at', resolved_at) ELSE '{}' END
FROM upd;

-- -----------------------------------------------------------------------------
-- Deletes: activities, and first the attachments that reference them
-- -----------------------------------------------------------------------------
WITH del AS (
    DELETE FROM crm.attachments a
     WHERE a.activity_id IN (SELECT id FROM crm_day_pick WHERE tbl = 'activities')
    RETURNING a.id, a.activity_id, a.uploaded_by, a.file_name, a.mime_type, a.size_bytes
)
INSERT INTO crm_day_audit
SELECT pg_temp.ts(:t0 + pg_temp.r(activity_id, :salt + 41, 86400)), 2,
       coalesce(pg_temp.user_email(uploaded_by), 'system'), 'attachments', id, 'DELETE',
       jsonb_build_object('id', id, 'activity_id', activity_id, 'file_name', file_name, 'mime_type', mime_type, 'size_bytes', size_bytes),
       NULL
FROM del;

WITH del AS (
    DELETE FROM crm.activities a
     WHERE a.id IN (SELECT id FROM crm_day_pick WHERE tbl = 'activities')
    RETURNING a.id, a.contact_id, a.deal_id, a.user_id, a.kind, a.subject, a.occurred_at
)
INSERT INTO crm_day_audit
SELECT pg_temp.ts(:t0 + pg_temp.r(id, :salt + 41, 86400)), 3,
       coalesce(pg_temp.user_email(user_id), 'system'), 'activities', id, 'DELETE',
       jsonb_build_object('id', id, 'contact_id', contact_id, 'deal_id', deal_id, 'kind', kind,
                          'subject', subject, 'occurred_at', occurred_at),
       NULL
FROM del;

-- -----------------------------------------------------------------------------
-- New rows (ids continue after the highest id; references point to any
-- existing row, attachments to today's new activities or to tickets)
-- -----------------------------------------------------------------------------
WITH ins AS (
    INSERT INTO crm.users OVERRIDING SYSTEM VALUE
    SELECT * FROM pg_temp.gen_users(:m_users + 1, :m_users + :n_users, :t0, 86400)
    RETURNING *
)
INSERT INTO crm_day_audit
SELECT created_at, 4, 'admin', 'users', id, 'INSERT', NULL, to_jsonb(ins) FROM ins;

WITH ins AS (
    INSERT INTO crm.companies OVERRIDING SYSTEM VALUE
    SELECT * FROM pg_temp.gen_companies(:m_companies + 1, :m_companies + :n_companies, :m_users + :n_users, :t0, 86400)
    RETURNING *
)
INSERT INTO crm_day_audit
SELECT created_at, 4, coalesce(pg_temp.user_email(owner_id), 'system'), 'companies', id, 'INSERT', NULL, to_jsonb(ins) FROM ins;

WITH ins AS (
    INSERT INTO crm.contacts OVERRIDING SYSTEM VALUE
    SELECT * FROM pg_temp.gen_contacts(:m_contacts + 1, :m_contacts + :n_contacts, :m_users + :n_users,
                                       :m_companies + :n_companies, :t0, 86400)
    RETURNING *
)
INSERT INTO crm_day_audit
SELECT created_at, 4, coalesce(pg_temp.user_email(owner_id), 'system'), 'contacts', id, 'INSERT', NULL, to_jsonb(ins) FROM ins;

WITH ins AS (
    INSERT INTO crm.deals OVERRIDING SYSTEM VALUE
    SELECT * FROM pg_temp.gen_deals(:m_deals + 1, :m_deals + :n_deals, :m_users + :n_users,
                                    :m_contacts + :n_contacts, :t0, 86400)
    RETURNING *
)
INSERT INTO crm_day_audit
SELECT created_at, 4, coalesce(pg_temp.user_email(owner_id), 'system'), 'deals', id, 'INSERT', NULL, to_jsonb(ins) FROM ins;

WITH ins AS (
    INSERT INTO crm.activities OVERRIDING SYSTEM VALUE
    SELECT * FROM pg_temp.gen_activities(:m_activities + 1, :m_activities + :n_activities, :m_users + :n_users,
                                         :m_contacts + :n_contacts, :m_deals + :n_deals, :t0, 86400)
    RETURNING *
)
INSERT INTO crm_day_audit
SELECT created_at, 4, coalesce(pg_temp.user_email(user_id), 'system'), 'activities', id, 'INSERT', NULL, to_jsonb(ins) FROM ins;

WITH ins AS (
    INSERT INTO crm.tickets OVERRIDING SYSTEM VALUE
    SELECT * FROM pg_temp.gen_tickets(:m_tickets + 1, :m_tickets + :n_tickets, :m_users + :n_users,
                                      :m_contacts + :n_contacts, :t0, 86400)
    RETURNING *
)
INSERT INTO crm_day_audit
SELECT created_at, 4, coalesce(pg_temp.user_email(assignee_id), 'system'), 'tickets', id, 'INSERT', NULL, to_jsonb(ins) FROM ins;

WITH ins AS (
    INSERT INTO crm.attachments OVERRIDING SYSTEM VALUE
    SELECT * FROM pg_temp.gen_attachments(:m_attachments + 1, :m_attachments + :n_attachments, :m_users + :n_users,
                                          :m_activities + 1, :m_activities + :n_activities, :m_tickets + :n_tickets,
                                          :t0, 86400)
    RETURNING id, activity_id, ticket_id, uploaded_by, file_name, mime_type, size_bytes, created_at
)
INSERT INTO crm_day_audit
SELECT created_at, 4, coalesce(pg_temp.user_email(uploaded_by), 'system'), 'attachments', id, 'INSERT', NULL, to_jsonb(ins) FROM ins;

-- -----------------------------------------------------------------------------
-- audit_log: today's rows above plus background changes up to +2%, in time order
-- -----------------------------------------------------------------------------
SELECT greatest(0, :n_audit - count(*)) AS n_fill FROM crm_day_audit \gset

INSERT INTO crm_day_audit
SELECT occurred_at, 5, actor, table_name, row_id, action, old_values, new_values
FROM pg_temp.gen_audit(:m_audit + 1, :m_audit + greatest(:n_fill, 1), :m_users + :n_users, :m_companies + :n_companies,
                       :m_contacts + :n_contacts, :m_deals + :n_deals, :m_activities + :n_activities,
                       :m_tickets + :n_tickets, :t0, 86400, true)
LIMIT :n_fill;

INSERT INTO crm.audit_log (id, occurred_at, actor, table_name, row_id, action, old_values, new_values)
OVERRIDING SYSTEM VALUE
SELECT :m_audit + row_number() OVER (ORDER BY occurred_at, ord, table_name, row_id, action, old_values::text, new_values::text),
       occurred_at, actor, table_name, row_id, action, old_values, new_values
FROM crm_day_audit
ORDER BY occurred_at, ord, table_name, row_id, action, old_values::text, new_values::text;

-- History: audit_log keeps the newest 90 days' worth of rows (its ids are consecutive, in
-- time order), and the oldest beyond them go.
\if :history
WITH trimmed AS (
    DELETE FROM crm.audit_log WHERE id <= (SELECT max(id) FROM crm.audit_log) - 90 * :n_audit RETURNING 1
)
SELECT count(*) AS t_audit FROM trimmed \gset
\else
\set t_audit 0
\endif

-- -----------------------------------------------------------------------------
-- Identity sequences continue after the new ids
-- -----------------------------------------------------------------------------
SELECT setval(pg_get_serial_sequence('crm.' || t, 'id'), n)
FROM (VALUES ('users', :m_users + :n_users), ('companies', :m_companies + :n_companies),
             ('contacts', :m_contacts + :n_contacts), ('deals', :m_deals + :n_deals),
             ('activities', :m_activities + :n_activities), ('tickets', :m_tickets + :n_tickets),
             ('attachments', :m_attachments + :n_attachments),
             ('audit_log', (SELECT max(id) FROM crm.audit_log))) v(t, n)
\g /dev/null

\echo crm_day :day: inserted users :n_users, companies :n_companies, contacts :n_contacts, deals :n_deals, activities :n_activities, tickets :n_tickets, attachments :n_attachments, audit_log :n_audit
\echo crm_day :day: updated contacts :u_contacts, deals :u_deals, tickets :u_tickets; deleted activities :d_activities
SELECT count(*) AS d_attachments FROM crm_day_audit WHERE table_name = 'attachments' AND action = 'DELETE' \gset
\echo crm_day :day: deleted attachments :d_attachments (of the deleted activities); audit_log rows for background changes :n_fill
\if :history
\echo crm_day :day: audit_log rows trimmed (beyond 90 days of them) :t_audit
\endif
DROP TABLE crm_day_pick, crm_day_audit;
