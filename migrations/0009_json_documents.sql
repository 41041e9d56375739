-- The jobs' documents and the events' actor and data as `json` (the text, checked on the way
-- in) instead of `jsonb` (parsed into a binary form on the way in and printed back on the way
-- out). Nothing looks inside them in SQL: the projector writes each as the text the service
-- serializes and reads a job back as that text; query-svc answers with it. Inserting a job's
-- 700-byte document as jsonb took about twice the CPU of json (docs/performance.md, "Rebuild").
-- On an existing read model this rewrites both tables once, at the projector's start.
ALTER TABLE jobs ALTER COLUMN doc TYPE json USING doc::json;
ALTER TABLE job_events
    ALTER COLUMN actor TYPE json USING actor::json,
    ALTER COLUMN data TYPE json USING data::json;
