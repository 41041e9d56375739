-- Least privilege on Postgres for the read model (deploy/up runs this as the superuser):
-- the projector's role owns the database, its schema and every table it migrates; query-svc's
-- role may only read (default privileges grant it SELECT on what the projector creates,
-- including a rebuilt schema). Login is by the cluster's pg_hba rules (trust on loopback in
-- deploy/up's Postgres; use passwords or certificates elsewhere).
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'jobs_projector') THEN CREATE ROLE jobs_projector LOGIN; END IF;
END $$;
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'jobs_query') THEN CREATE ROLE jobs_query LOGIN; END IF;
END $$;
-- Then, in the jobs database (owned by jobs_projector):
--   ALTER DEFAULT PRIVILEGES FOR ROLE jobs_projector GRANT SELECT ON TABLES TO jobs_query;
