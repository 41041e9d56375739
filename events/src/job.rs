//! A job as every reader sees it: the fold of its events (see `apply`).
//!
//! The JSON form of [`Job`] is the API's job object; the projector stores exactly this, so a
//! rebuilt read model is byte-for-byte the old one.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{EventHash, Json, Name};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Scheduled,
    Pending,
    Leased,
    Completed,
    DeadLettered,
    Cancelled,
    /// Not started by its `expires_at`: discarded (not dead-lettered).
    Expired,
}

impl Status {
    pub const ALL: [Status; 7] = [
        Status::Scheduled,
        Status::Pending,
        Status::Leased,
        Status::Completed,
        Status::DeadLettered,
        Status::Cancelled,
        Status::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Scheduled => "scheduled",
            Status::Pending => "pending",
            Status::Leased => "leased",
            Status::Completed => "completed",
            Status::DeadLettered => "dead_lettered",
            Status::Cancelled => "cancelled",
            Status::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Terminal states: nothing happens to the job unless a person acts.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Status::Completed | Status::DeadLettered | Status::Cancelled | Status::Expired
        )
    }
}

/// Retry backoff: `min(base * 2^(attempt-1), max)` seconds, with jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Backoff {
    pub base_seconds: u32,
    pub max_seconds: u32,
}

impl Backoff {
    pub const DEFAULT: Backoff = Backoff {
        base_seconds: 5,
        max_seconds: 3600,
    };
}

impl Default for Backoff {
    fn default() -> Self {
        Self::DEFAULT
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Lease {
    pub worker_id: String,
    pub lease_id: u64,
    pub expires_at: DateTime<Utc>,
    /// When the lease began: with the job's `timeout_seconds`, caps how long it can be extended.
    pub leased_at: DateTime<Utc>,
    /// The lease length asked for; a heartbeat without `extend_seconds` extends by this.
    pub lease_seconds: u32,
}

/// A job's uniqueness: while a job with the same `key` (per tenant) is in one of `states`, or
/// younger than `ttl_seconds`, enqueueing another answers that job instead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UniqueSpec {
    pub key: String,
    pub states: Vec<Status>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u32>,
}

impl UniqueSpec {
    /// The states a key is held in unless the request names others.
    pub const DEFAULT_STATES: [Status; 3] = [Status::Scheduled, Status::Pending, Status::Leased];

    /// Whether `holder` (the job holding the key) blocks a new job with this spec at `now`.
    pub fn blocks(&self, holder: &Job, now: DateTime<Utc>) -> bool {
        self.states.contains(&holder.status_at(now))
            || self
                .ttl_seconds
                .is_some_and(|t| now < holder.created_at + chrono::Duration::seconds(t as i64))
    }
}

/// Limits on a tenant's jobs with the same `concurrency_key`, checked at lease time on every
/// instance: at most `max_concurrent` leased at once, at most `max_per_second` leases started
/// in any second.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ConcurrencyLimit {
    pub concurrency_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_per_second: Option<u32>,
}

/// What a job does when one of the jobs it depends on ends without completing (dead-lettered,
/// cancelled or expired).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum DependencyFailure {
    /// It is cancelled.
    #[default]
    Cancel,
    /// It runs anyway once every dependency has ended.
    RunAnyway,
}

/// One failed attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobError {
    pub attempt: u32,
    pub at: DateTime<Utc>,
    pub worker_id: Option<String>,
    pub message: String,
    pub code: Option<String>,
}

/// A job's state: the fold of its events. Its JSON form is [`wire::Job`]'s, field for field.
///
/// The parts few waiting jobs have (progress, result, errors, end times, uniqueness, limits,
/// dependencies, an expiry, a backoff other than the default) live in one allocation of their
/// own, [`Extras`], that a job without any of them does without: the write model holds every
/// waiting job, and a million of them paid for 140 bytes of empty fields each
/// (docs/performance.md, "Memory per pending job").
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "wire::Job")]
pub struct Job {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub job_type: Name,
    pub queue: Name,
    pub priority: u8,
    pub payload: Json,
    pub status: Status,
    pub attempts: u32,
    pub max_attempts: u32,
    pub run_at: DateTime<Utc>,
    pub timeout_seconds: u32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub lease: Option<Box<Lease>>,
    pub metadata: Json,
    pub cancel_requested: bool,
    /// Counts the job's events; the job's ETag. 32 bits in memory (four billion events for
    /// one job), 64 in its JSON form: the 4 bytes put the write model's slot in a smaller
    /// allocation class.
    pub version: u32,
    /// Stream sequence of the job's last event: the expected last subject sequence of the
    /// next append.
    pub last_event_seq: u64,
    /// Hash of the job's last event: the `prev_hash` of its next one.
    pub last_event_hash: Option<EventHash>,
    /// Stream sequence of the event that set the payload (its `JobEnqueued`, or a later
    /// `JobUpdated` with a payload), where a holder that dropped the payload from memory reads
    /// it back. Not part of the job's JSON: 0 in a job read from anywhere but a fold.
    pub payload_seq: u64,
    pub(crate) extras: MaybeExtras,
}

/// The parts of a job that most waiting jobs leave empty (see [`Job`]). The larger ones are
/// boxed again, so a job that has only one of them (its limits, say) pays for a small
/// `Extras` (about 150 bytes) and that part.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Extras {
    /// Its retry backoff (most jobs keep the default, which needs no extras).
    pub backoff: Backoff,
    /// A job still scheduled or pending at this instant is discarded (`JobExpired`).
    pub expires_at: Option<DateTime<Utc>>,
    pub progress: Option<Json>,
    pub result: Option<Json>,
    pub last_error: Option<Box<JobError>>,
    pub errors: Vec<JobError>,
    pub dead_lettered_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    /// The uniqueness it was enqueued with.
    pub unique: Option<Box<UniqueSpec>>,
    /// Its concurrency limit.
    pub limits: Option<Box<ConcurrencyLimit>>,
    /// Jobs that must complete before this one runs.
    pub depends_on: Vec<Uuid>,
    /// What happens when one of them ends without completing.
    pub on_dependency_failure: Option<DependencyFailure>,
}

/// What a job without extras reads.
static NO_EXTRAS: Extras = Extras {
    backoff: Backoff::DEFAULT,
    expires_at: None,
    progress: None,
    result: None,
    last_error: None,
    errors: Vec::new(),
    dead_lettered_at: None,
    completed_at: None,
    unique: None,
    limits: None,
    depends_on: Vec::new(),
    on_dependency_failure: None,
};

/// [`Extras`] allocated only once a part is set; equal when the parts are, allocated or not.
#[derive(Debug, Clone, Default)]
pub(crate) struct MaybeExtras(Option<Box<Extras>>);

impl PartialEq for MaybeExtras {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

impl Eq for MaybeExtras {}

impl MaybeExtras {
    fn get(&self) -> &Extras {
        self.0.as_deref().unwrap_or(&NO_EXTRAS)
    }

    pub(crate) fn new(extras: Extras) -> Self {
        if extras == NO_EXTRAS {
            MaybeExtras(None)
        } else {
            MaybeExtras(Some(Box::new(extras)))
        }
    }
}

impl Job {
    /// The parts few jobs have; empty ones for a job without them.
    pub fn extras(&self) -> &Extras {
        self.extras.get()
    }

    /// The parts few jobs have, to change: allocates them for a job without them.
    pub fn extras_mut(&mut self) -> &mut Extras {
        self.extras.0.get_or_insert_with(Box::default)
    }

    /// Gives the allocation of a job's extras back once every part is empty again (`apply`
    /// does, after every event).
    pub(crate) fn shed_extras(&mut self) {
        if self.extras.0.as_deref() == Some(&NO_EXTRAS) {
            self.extras.0 = None;
        }
    }

    /// The status a reader should see at `now`: a scheduled job whose time has come is pending.
    pub fn status_at(&self, now: DateTime<Utc>) -> Status {
        match self.status {
            Status::Scheduled if self.run_at <= now => Status::Pending,
            s => s,
        }
    }
}

/// The JSON form of a [`Job`]: the API's job object, the projector's stored document and the
/// snapshot's record. A job deserializes through it and serializes to it (without a copy).
pub mod wire {
    use chrono::{DateTime, Utc};
    use serde::Deserialize;
    use uuid::Uuid;

    use super::UniqueSpec;
    use super::{Backoff, ConcurrencyLimit, DependencyFailure, JobError, Lease, Status};
    use crate::{EventHash, Json, Name};

    #[derive(Deserialize, utoipa::ToSchema)]
    pub struct Job {
        pub id: Uuid,
        pub tenant_id: Uuid,
        #[serde(rename = "type")]
        #[schema(value_type = String)]
        pub job_type: Name,
        #[schema(value_type = String)]
        pub queue: Name,
        pub priority: u8,
        #[schema(value_type = serde_json::Value)]
        pub payload: Json,
        pub status: Status,
        pub attempts: u32,
        pub max_attempts: u32,
        pub run_at: DateTime<Utc>,
        pub timeout_seconds: u32,
        pub backoff: Backoff,
        pub created_at: DateTime<Utc>,
        pub updated_at: DateTime<Utc>,
        pub lease: Option<Box<Lease>>,
        #[schema(value_type = Option<serde_json::Value>)]
        pub progress: Option<Json>,
        #[schema(value_type = Option<serde_json::Value>)]
        pub result: Option<Json>,
        pub last_error: Option<JobError>,
        pub errors: Vec<JobError>,
        #[schema(value_type = serde_json::Value)]
        pub metadata: Json,
        pub cancel_requested: bool,
        pub dead_lettered_at: Option<DateTime<Utc>>,
        pub completed_at: Option<DateTime<Utc>>,
        /// A job still scheduled or pending at this instant is discarded (`JobExpired`).
        #[serde(default)]
        pub expires_at: Option<DateTime<Utc>>,
        /// The uniqueness it was enqueued with.
        #[serde(default)]
        pub unique: Option<UniqueSpec>,
        /// Its concurrency limit.
        #[serde(default)]
        pub limits: Option<ConcurrencyLimit>,
        /// Jobs that must complete before this one runs.
        #[serde(default)]
        pub depends_on: Vec<Uuid>,
        /// What happens when one of them ends without completing.
        #[serde(default)]
        pub on_dependency_failure: Option<DependencyFailure>,
        /// Counts the job's events; the job's ETag.
        pub version: u64,
        /// Stream sequence of the job's last event: the expected last subject sequence of the
        /// next append.
        pub last_event_seq: u64,
        /// Hash of the job's last event: the `prev_hash` of its next one.
        #[serde(default)]
        #[schema(value_type = Option<String>)]
        pub last_event_hash: Option<EventHash>,
    }

    impl From<Job> for super::Job {
        fn from(w: Job) -> Self {
            super::Job {
                id: w.id,
                tenant_id: w.tenant_id,
                job_type: w.job_type,
                queue: w.queue,
                priority: w.priority,
                payload: w.payload,
                status: w.status,
                attempts: w.attempts,
                max_attempts: w.max_attempts,
                run_at: w.run_at,
                timeout_seconds: w.timeout_seconds,
                created_at: w.created_at,
                updated_at: w.updated_at,
                lease: w.lease,
                metadata: w.metadata,
                cancel_requested: w.cancel_requested,
                // Saturates: no job reaches four billion events.
                version: u32::try_from(w.version).unwrap_or(u32::MAX),
                last_event_seq: w.last_event_seq,
                last_event_hash: w.last_event_hash,
                payload_seq: 0,
                extras: super::MaybeExtras::new(super::Extras {
                    backoff: w.backoff,
                    expires_at: w.expires_at,
                    progress: w.progress,
                    result: w.result,
                    last_error: w.last_error.map(Box::new),
                    errors: w.errors,
                    dead_lettered_at: w.dead_lettered_at,
                    completed_at: w.completed_at,
                    unique: w.unique.map(Box::new),
                    limits: w.limits.map(Box::new),
                    depends_on: w.depends_on,
                    on_dependency_failure: w.on_dependency_failure,
                }),
            }
        }
    }

    /// Writes a job as [`Job`] (the same fields, in the same order, the same ones left out).
    impl serde::Serialize for super::Job {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            use serde::ser::SerializeStruct;
            let x = self.extras();
            let optional = [
                x.expires_at.is_some(),
                x.unique.is_some(),
                x.limits.is_some(),
                !x.depends_on.is_empty(),
                x.on_dependency_failure.is_some(),
            ];
            let len = 26 + optional.iter().filter(|o| **o).count();
            let mut st = s.serialize_struct("Job", len)?;
            st.serialize_field("id", &self.id)?;
            st.serialize_field("tenant_id", &self.tenant_id)?;
            st.serialize_field("type", &self.job_type)?;
            st.serialize_field("queue", &self.queue)?;
            st.serialize_field("priority", &self.priority)?;
            st.serialize_field("payload", &self.payload)?;
            st.serialize_field("status", &self.status)?;
            st.serialize_field("attempts", &self.attempts)?;
            st.serialize_field("max_attempts", &self.max_attempts)?;
            st.serialize_field("run_at", &self.run_at)?;
            st.serialize_field("timeout_seconds", &self.timeout_seconds)?;
            st.serialize_field("backoff", &x.backoff)?;
            st.serialize_field("created_at", &self.created_at)?;
            st.serialize_field("updated_at", &self.updated_at)?;
            st.serialize_field("lease", &self.lease)?;
            st.serialize_field("progress", &x.progress)?;
            st.serialize_field("result", &x.result)?;
            st.serialize_field("last_error", &x.last_error)?;
            st.serialize_field("errors", &x.errors)?;
            st.serialize_field("metadata", &self.metadata)?;
            st.serialize_field("cancel_requested", &self.cancel_requested)?;
            st.serialize_field("dead_lettered_at", &x.dead_lettered_at)?;
            st.serialize_field("completed_at", &x.completed_at)?;
            if optional[0] {
                st.serialize_field("expires_at", &x.expires_at)?;
            }
            if optional[1] {
                st.serialize_field("unique", &x.unique)?;
            }
            if optional[2] {
                st.serialize_field("limits", &x.limits)?;
            }
            if optional[3] {
                st.serialize_field("depends_on", &x.depends_on)?;
            }
            if optional[4] {
                st.serialize_field("on_dependency_failure", &x.on_dependency_failure)?;
            }
            st.serialize_field("version", &u64::from(self.version))?;
            st.serialize_field("last_event_seq", &self.last_event_seq)?;
            st.serialize_field("last_event_hash", &self.last_event_hash)?;
            st.end()
        }
    }

    /// A job's schema is its JSON form's.
    impl utoipa::PartialSchema for super::Job {
        fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
            <Job as utoipa::PartialSchema>::schema()
        }
    }

    impl utoipa::ToSchema for super::Job {
        fn schemas(
            out: &mut Vec<(
                String,
                utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
            )>,
        ) {
            <Job as utoipa::ToSchema>::schemas(out)
        }
    }

    #[cfg(test)]
    mod tests {
        use super::super::{Extras, NO_EXTRAS};

        /// `NO_EXTRAS` is what `Extras::default()` is, so a job that sheds its extras equals
        /// one that never had them.
        #[test]
        fn no_extras_is_the_default() {
            assert_eq!(NO_EXTRAS, Extras::default());
        }

        /// A job holds its extras behind one pointer, and they stay small enough that a job
        /// with only one of them (limits, say) pays about 150 bytes for the rest.
        #[test]
        fn extras_stay_behind_a_pointer_and_small() {
            assert_eq!(std::mem::size_of::<super::super::MaybeExtras>(), 8);
            let size = std::mem::size_of::<Extras>();
            assert!(size <= 160, "Extras is {size} bytes");
        }
    }
}
