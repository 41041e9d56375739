//! The job events: one variant per fact, past tense, with explicit and stable wire names.
//!
//! Serialized adjacently tagged (`"type": "JobEnqueued", "data": {...}`) so the envelope can
//! flatten it; renaming a Rust identifier never changes the wire form.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::job::Backoff;

/// An error a worker reported, or the system recorded, for one attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorInfo {
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

// JobEnqueued carries the whole job; events are decoded one at a time, not kept in bulk
// (the write model keeps folded `Job`s), so boxing it would only add indirection.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", content = "data")]
pub enum JobEvent {
    #[serde(rename = "JobEnqueued")]
    Enqueued {
        #[serde(rename = "type")]
        job_type: String,
        queue: String,
        priority: u8,
        payload: Value,
        run_at: DateTime<Utc>,
        max_attempts: u32,
        timeout_seconds: u32,
        backoff: Backoff,
        metadata: Value,
        /// The enqueuer's plan tier (from its token), so every instance can enforce the
        /// tenant's lease limits without seeing that token.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        plan_tier: Option<String>,
        /// Discard the job if it is still scheduled or pending then.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_at: Option<DateTime<Utc>>,
        /// The uniqueness the job was enqueued with.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        unique: Option<crate::job::UniqueSpec>,
        /// Its concurrency limit.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limits: Option<crate::job::ConcurrencyLimit>,
        /// Jobs that must complete before this one runs.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        depends_on: Vec<uuid::Uuid>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        on_dependency_failure: Option<crate::job::DependencyFailure>,
    },
    /// The job's `lease_id` is the stream sequence of this event.
    #[serde(rename = "JobLeased")]
    Leased {
        worker_id: String,
        expires_at: DateTime<Utc>,
        /// Absent in the earliest v1 events: 30 s, the protocol's default lease.
        #[serde(default = "default_lease_seconds")]
        lease_seconds: u32,
    },
    #[serde(rename = "JobHeartbeat")]
    Heartbeat {
        lease_id: u64,
        expires_at: DateTime<Utc>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        progress: Option<Value>,
    },
    #[serde(rename = "JobCompleted")]
    Completed {
        lease_id: u64,
        #[serde(default)]
        result: Option<Value>,
    },
    /// A failed attempt with attempts left: the job waits for `next_run_at`.
    #[serde(rename = "JobFailed")]
    Failed {
        lease_id: u64,
        error: ErrorInfo,
        next_run_at: DateTime<Utc>,
    },
    /// A lease ran out with attempts left: counts as a failed attempt (`LEASE_EXPIRED`).
    #[serde(rename = "JobLeaseExpired")]
    LeaseExpired {
        lease_id: u64,
        next_run_at: DateTime<Utc>,
    },
    /// The job will not run again by itself: attempts exhausted or a non-retryable failure.
    #[serde(rename = "JobDeadLettered")]
    DeadLettered {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lease_id: Option<u64>,
        error: ErrorInfo,
    },
    #[serde(rename = "JobCancelRequested")]
    CancelRequested {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// Cancelled; when a worker held it, `error` records how its attempt ended.
    #[serde(rename = "JobCancelled")]
    Cancelled {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<ErrorInfo>,
    },
    #[serde(rename = "JobUpdated")]
    Updated {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        priority: Option<u8>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        run_at: Option<DateTime<Utc>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        payload: Option<Value>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_attempts: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        queue: Option<String>,
    },
    /// Back to pending with attempts reset (retry, DLQ redrive).
    #[serde(rename = "JobRequeued")]
    Requeued {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// The job leaves every read model; its events stay in the stream.
    #[serde(rename = "JobPurged")]
    Purged {},
    /// Still scheduled or pending at its `expires_at`: discarded, not run, not dead-lettered.
    #[serde(rename = "JobExpired")]
    Expired { expires_at: DateTime<Utc> },
}

impl JobEvent {
    /// Every wire type name, in declaration order.
    pub const TYPE_NAMES: [&'static str; 13] = [
        "JobEnqueued",
        "JobLeased",
        "JobHeartbeat",
        "JobCompleted",
        "JobFailed",
        "JobLeaseExpired",
        "JobDeadLettered",
        "JobCancelRequested",
        "JobCancelled",
        "JobUpdated",
        "JobRequeued",
        "JobPurged",
        "JobExpired",
    ];

    pub fn type_name(&self) -> &'static str {
        let i = match self {
            Self::Enqueued { .. } => 0,
            Self::Leased { .. } => 1,
            Self::Heartbeat { .. } => 2,
            Self::Completed { .. } => 3,
            Self::Failed { .. } => 4,
            Self::LeaseExpired { .. } => 5,
            Self::DeadLettered { .. } => 6,
            Self::CancelRequested { .. } => 7,
            Self::Cancelled { .. } => 8,
            Self::Updated { .. } => 9,
            Self::Requeued { .. } => 10,
            Self::Purged {} => 11,
            Self::Expired { .. } => 12,
        };
        Self::TYPE_NAMES[i]
    }

    /// The `data` object of the event, as it appears on the wire.
    pub fn data(&self) -> Value {
        let mut v = serde_json::to_value(self).expect("an event always serializes");
        v.get_mut("data").map(Value::take).unwrap_or(Value::Null)
    }
}

fn default_lease_seconds() -> u32 {
    30
}
