-- Rollups for GET /jobs/v1/metrics, maintained by the projector in the same transaction as the
-- jobs they summarise, so a request never scans every job. Like everything here, a pure
-- function of the stream: a rebuild gives the same rows.

-- Jobs per tenant, type and stored status (a scheduled job whose run_at has passed is counted
-- as pending at query time, from the partial index below).
CREATE TABLE tenant_type_counts (
    tenant_id uuid   NOT NULL,
    type      text   NOT NULL,
    status    text   NOT NULL,
    n         bigint NOT NULL,
    PRIMARY KEY (tenant_id, type, status)
);

-- Events per tenant per second.
CREATE TABLE tenant_throughput (
    tenant_id     uuid        NOT NULL,
    second        timestamptz NOT NULL,
    enqueued      bigint      NOT NULL DEFAULT 0,
    completed     bigint      NOT NULL DEFAULT 0,
    failed        bigint      NOT NULL DEFAULT 0,
    dead_lettered bigint      NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, second)
);

-- Latency histograms per tenant per second: kind 'wait' (run_at to lease) or 'run' (lease to
-- completion); le_ms is the bucket's upper bound (NULL: above the last bound).
CREATE TABLE tenant_latency (
    tenant_id uuid        NOT NULL,
    second    timestamptz NOT NULL,
    kind      text        NOT NULL,
    le_ms     bigint      NOT NULL,
    n         bigint      NOT NULL,
    PRIMARY KEY (tenant_id, second, kind, le_ms)
);

CREATE INDEX jobs_scheduled_by_run_at ON jobs (tenant_id, run_at) WHERE status = 'scheduled';
