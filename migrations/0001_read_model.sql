-- The read model: current job state (the fold of each job's events, as JSON in `doc`, with the
-- columns queries filter and sort on), each job's event history, and the projector's
-- checkpoint. Everything here can be dropped and rebuilt from JOBS_EVENTS.

CREATE TABLE jobs (
    id               uuid PRIMARY KEY,
    tenant_id        uuid        NOT NULL,
    type             text        NOT NULL,
    queue            text        NOT NULL,
    priority         smallint    NOT NULL,
    status           text        NOT NULL,
    run_at           timestamptz NOT NULL,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL,
    dead_lettered_at timestamptz,
    last_error_code  text,
    version          bigint      NOT NULL,
    last_event_seq   bigint      NOT NULL,
    doc              jsonb       NOT NULL
);

CREATE INDEX jobs_by_tenant_created ON jobs (tenant_id, created_at, id);
CREATE INDEX jobs_by_tenant_status_created ON jobs (tenant_id, status, created_at, id);
CREATE INDEX jobs_by_tenant_type_created ON jobs (tenant_id, type, created_at, id);
CREATE INDEX jobs_dead_lettered ON jobs (tenant_id, dead_lettered_at, id) WHERE status = 'dead_lettered';

CREATE TABLE job_events (
    seq       bigint PRIMARY KEY,
    tenant_id uuid        NOT NULL,
    job_id    uuid        NOT NULL,
    event_id  uuid        NOT NULL,
    type      text        NOT NULL,
    at        timestamptz NOT NULL,
    actor     jsonb       NOT NULL,
    data      jsonb       NOT NULL
);

CREATE INDEX job_events_by_job ON job_events (tenant_id, job_id, seq);

-- The last stream sequence applied; written in the same transaction as the rows it covers.
CREATE TABLE projector_checkpoint (
    id       smallint PRIMARY KEY CHECK (id = 1),
    last_seq bigint NOT NULL
);

INSERT INTO projector_checkpoint (id, last_seq) VALUES (1, 0);
