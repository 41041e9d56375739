-- Periodic jobs (ScheduleCreated/Updated/Paused/Resumed/Deleted on jobs.schedules.<tenant>.<id>):
-- one row per schedule until it is deleted. `doc` is the schedule as events::schedule folds it;
-- `last_run_*` is its latest firing, from the JobEnqueued of a job whose id is the one derived
-- from (tenant, schedule, fire time). next_run_at is computed at read time (time passing is not
-- an event).

CREATE TABLE schedules (
    id                   uuid        PRIMARY KEY,
    tenant_id            uuid        NOT NULL,
    enabled              boolean     NOT NULL,
    created_at           timestamptz NOT NULL,
    updated_at           timestamptz NOT NULL,
    version              bigint      NOT NULL,
    last_event_seq       bigint      NOT NULL,
    doc                  jsonb       NOT NULL,
    last_run_fire_time   timestamptz,
    last_run_job_id      uuid,
    last_run_enqueued_at timestamptz
);

CREATE INDEX schedules_by_tenant ON schedules (tenant_id, created_at DESC, id DESC);
