-- Keep one most-common tenant in `jobs`' statistics, not a hundred. With every tenant in the
-- most-common-values list, the planner estimates a tenant missing from it (one that began
-- after the last ANALYZE) at 1 row, so every plan looks cheap: a `status=pending` list then
-- walked the tenant's (tenant_id, created_at) index over 58-62 k completed jobs to find one
-- pending job, 112-197 ms, where the status index answers in 0.1 ms. With one kept, any
-- other tenant is estimated as a typical one (docs/performance.md).
ALTER TABLE jobs ALTER COLUMN tenant_id SET STATISTICS 1;
