-- =============================================================================
-- crmvault benchmark: CRM schema
--
-- Schema "crm" for the deterministic benchmark data set (see bench/README.md).
-- Run once on an empty database, then fill it with bench/crm_generate.sql:
--
--   createdb -h 127.0.0.1 -U postgres bench_crm
--   psql -X -q -h 127.0.0.1 -U postgres -d bench_crm -f bench/crm_schema.sql
--
-- Every table has a "bigint GENERATED ALWAYS AS IDENTITY" primary key. The
-- foreign keys and secondary indexes are those of a typical CRM; they are
-- created here (before the load), like in a real system.
-- =============================================================================

\set ON_ERROR_STOP on
SET client_min_messages = warning;

CREATE SCHEMA crm;
COMMENT ON SCHEMA crm IS 'crmvault benchmark CRM: users, companies, contacts, deals, activities, tickets, attachments, audit log';

CREATE TYPE crm.deal_stage AS ENUM
    ('lead', 'qualified', 'proposal', 'negotiation', 'closed_won', 'closed_lost');
CREATE TYPE crm.activity_kind AS ENUM ('call', 'email', 'meeting', 'note', 'task');

-- -----------------------------------------------------------------------------
-- Tables
-- -----------------------------------------------------------------------------
CREATE TABLE crm.users (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email       text NOT NULL UNIQUE,
    full_name   text NOT NULL,
    role        text NOT NULL CHECK (role IN ('admin', 'sales', 'support', 'marketing')),
    team        text NOT NULL,
    timezone    text NOT NULL,
    is_active   boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE crm.companies (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name            text NOT NULL,
    domain          text,
    industry        text,
    employee_count  integer CHECK (employee_count > 0),
    annual_revenue  numeric(14,2),
    phone           text,
    street          text,
    city            text,
    region          text,
    postal_code     text,
    country         char(2) NOT NULL,
    owner_id        bigint REFERENCES crm.users (id),
    custom_fields   jsonb NOT NULL DEFAULT '{}',
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE crm.contacts (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    company_id       bigint REFERENCES crm.companies (id),
    owner_id         bigint REFERENCES crm.users (id),
    first_name       text NOT NULL,
    last_name        text NOT NULL,
    email            text,
    phone            text,
    mobile           text,
    job_title        text,
    street           text,
    city             text,
    region           text,
    postal_code      text,
    country          char(2),
    lifecycle_stage  text NOT NULL DEFAULT 'lead',
    custom_fields    jsonb NOT NULL DEFAULT '{}',
    tags             text[] NOT NULL DEFAULT '{}',
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE crm.deals (
    id                   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    company_id           bigint NOT NULL REFERENCES crm.companies (id),
    contact_id           bigint REFERENCES crm.contacts (id),
    owner_id             bigint REFERENCES crm.users (id),
    name                 text NOT NULL,
    amount               numeric(14,2) NOT NULL CHECK (amount >= 0),
    currency             char(3) NOT NULL DEFAULT 'EUR',
    stage                crm.deal_stage NOT NULL DEFAULT 'lead',
    probability          smallint CHECK (probability BETWEEN 0 AND 100),
    expected_close_date  date,
    description          text,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    closed_at            timestamptz
);

CREATE TABLE crm.activities (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    contact_id        bigint NOT NULL REFERENCES crm.contacts (id),
    deal_id           bigint REFERENCES crm.deals (id),
    user_id           bigint REFERENCES crm.users (id),
    kind              crm.activity_kind NOT NULL,
    subject           text NOT NULL,
    body              text,
    occurred_at       timestamptz NOT NULL,
    duration_minutes  integer,
    outcome           text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);
COMMENT ON COLUMN crm.activities.body IS 'Call notes, meeting minutes or the full e-mail body';

CREATE TABLE crm.tickets (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    company_id   bigint REFERENCES crm.companies (id),
    contact_id   bigint REFERENCES crm.contacts (id),
    assignee_id  bigint REFERENCES crm.users (id),
    subject      text NOT NULL,
    body         text NOT NULL,
    status       text NOT NULL DEFAULT 'new'
                 CHECK (status IN ('new', 'open', 'pending', 'on_hold', 'solved', 'closed')),
    priority     text NOT NULL DEFAULT 'normal'
                 CHECK (priority IN ('low', 'normal', 'high', 'urgent')),
    channel      text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    resolved_at  timestamptz
);

CREATE TABLE crm.attachments (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    activity_id  bigint REFERENCES crm.activities (id),
    ticket_id    bigint REFERENCES crm.tickets (id),
    uploaded_by  bigint REFERENCES crm.users (id),
    file_name    text NOT NULL,
    mime_type    text NOT NULL,
    size_bytes   integer NOT NULL,
    content      bytea NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    CHECK (activity_id IS NOT NULL OR ticket_id IS NOT NULL)
);

-- Append-only: rows are only ever inserted.
CREATE TABLE crm.audit_log (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    occurred_at  timestamptz NOT NULL DEFAULT now(),
    actor        text NOT NULL,
    table_name   text NOT NULL,
    row_id       bigint NOT NULL,
    action       text NOT NULL CHECK (action IN ('INSERT', 'UPDATE', 'DELETE')),
    old_values   jsonb,
    new_values   jsonb
);

-- -----------------------------------------------------------------------------
-- Secondary indexes
-- -----------------------------------------------------------------------------
CREATE INDEX contacts_email_idx         ON crm.contacts (email);
CREATE INDEX contacts_company_id_idx    ON crm.contacts (company_id);
CREATE INDEX deals_company_id_idx       ON crm.deals (company_id);
CREATE INDEX activities_contact_id_idx  ON crm.activities (contact_id);
CREATE INDEX tickets_contact_id_idx     ON crm.tickets (contact_id);
CREATE INDEX attachments_activity_id_idx ON crm.attachments (activity_id);
CREATE INDEX audit_log_occurred_at_idx  ON crm.audit_log (occurred_at);
