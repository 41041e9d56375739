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

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base_seconds: 5,
            max_seconds: 3600,
        }
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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
    pub last_error: Option<Box<JobError>>,
    // A boxed slice, not a `Vec`: 8 bytes less per job in the write model.
    #[schema(value_type = Vec<JobError>)]
    pub errors: Box<[JobError]>,
    #[schema(value_type = serde_json::Value)]
    pub metadata: Json,
    pub cancel_requested: bool,
    pub dead_lettered_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    /// A job still scheduled or pending at this instant is discarded (`JobExpired`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// The uniqueness it was enqueued with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unique: Option<Box<UniqueSpec>>,
    /// Its concurrency limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Box<ConcurrencyLimit>>,
    /// Jobs that must complete before this one runs.
    #[serde(default, skip_serializing_if = "<[Uuid]>::is_empty")]
    #[schema(value_type = Vec<Uuid>)]
    pub depends_on: Box<[Uuid]>,
    /// What happens when one of them ends without completing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
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
    /// Stream sequence of the event that set the payload (its `JobEnqueued`, or a later
    /// `JobUpdated` with a payload), where a holder that dropped the payload from memory reads
    /// it back. Not part of the job's JSON: 0 in a job read from anywhere but a fold.
    #[serde(skip)]
    pub payload_seq: u64,
}

impl Job {
    /// The status a reader should see at `now`: a scheduled job whose time has come is pending.
    pub fn status_at(&self, now: DateTime<Utc>) -> Status {
        match self.status {
            Status::Scheduled if self.run_at <= now => Status::Pending,
            s => s,
        }
    }
}
