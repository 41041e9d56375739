-- When a worker last leased a job of each type: lets `explain` say "no worker seen for this type
-- lately". Built from JobLeased events like every other table here.

CREATE TABLE job_type_activity (
    type           text PRIMARY KEY,
    last_leased_at timestamptz NOT NULL,
    last_worker_id text        NOT NULL
);
