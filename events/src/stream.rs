//! Stream and subject names: where events live on NATS.
//!
//! One subject per job (`jobs.events.<tenant>.<job>`), so an append can be made conditional on
//! the job's last sequence; what is not a job lives under its own prefix.

use uuid::Uuid;

/// The stream holding every event.
pub const STREAM_NAME: &str = "JOBS_EVENTS";
/// Subjects bound to the stream.
pub const STREAM_SUBJECTS: [&str; 4] = [
    "jobs.events.>",
    "jobs.tenants.>",
    "jobs.workers.>",
    "jobs.schedules.>",
];
/// The durable consumer the projector reads with.
pub const PROJECTOR_CONSUMER: &str = "projector";
/// Header carrying the event type, so readers can filter without decoding the body.
pub const EVENT_TYPE_HEADER: &str = "Jobs-Event-Type";
/// The oldest NATS server the services run against.
pub const MIN_NATS_VERSION: (u64, u64, u64) = (2, 12, 0);

/// The subject of one job's events.
pub fn job_subject(tenant_id: Uuid, job_id: Uuid) -> String {
    format!("jobs.events.{tenant_id}.{job_id}")
}

/// The wildcard subject of all of a tenant's job events.
pub fn tenant_jobs_subject(tenant_id: Uuid) -> String {
    format!("jobs.events.{tenant_id}.*")
}

/// Reads `(tenant_id, job_id)` back from a job subject.
pub fn parse_job_subject(subject: &str) -> Option<(Uuid, Uuid)> {
    let rest = subject.strip_prefix("jobs.events.")?;
    let (tenant, job) = rest.split_once('.')?;
    Some((tenant.parse().ok()?, job.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_subject_parses_back_to_its_ids() {
        let (t, j) = (Uuid::now_v7(), Uuid::now_v7());
        assert_eq!(parse_job_subject(&job_subject(t, j)), Some((t, j)));
        assert_eq!(parse_job_subject("jobs.tenants.x"), None);
    }
}
