-- Paused queues and job types per tenant (QueuePaused/QueueResumed, JobTypePaused/JobTypeResumed
-- on jobs.tenants.<tenant>): a row while paused, none once resumed.

CREATE TABLE paused (
    tenant_id uuid        NOT NULL,
    kind      text        NOT NULL CHECK (kind IN ('queue', 'type')),
    name      text        NOT NULL,
    paused_at timestamptz NOT NULL,
    paused_by jsonb       NOT NULL,
    PRIMARY KEY (tenant_id, kind, name)
);
