-- Tenancy read models: limit overrides per tenant, the workers registry, and who holds each
-- leased job (for the registry's leased_jobs).

ALTER TABLE jobs ADD COLUMN lease_worker_id text;
CREATE INDEX jobs_by_lease_worker ON jobs (lease_worker_id) WHERE status = 'leased';

CREATE TABLE tenant_overrides (
    tenant_id  uuid PRIMARY KEY,
    overrides  jsonb       NOT NULL,
    updated_at timestamptz NOT NULL,
    updated_by jsonb       NOT NULL
);

CREATE TABLE workers (
    worker_id  text PRIMARY KEY,
    first_seen timestamptz NOT NULL,
    last_seen  timestamptz NOT NULL,
    draining   boolean     NOT NULL DEFAULT false
);
