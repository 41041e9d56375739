//! Events that are not about one job: a tenant's limit overrides (`jobs.tenants.<tenant>`) and a
//! worker's draining (`jobs.workers.<hash of its id>`). Same envelope shape as job events, without
//! `job_id`, so an auditor reads them the same way.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::envelope::{Actor, DecodeError, SCHEMA_VERSION};

/// Any subset of a tenant's limits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitOverrides {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_active_jobs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enqueue_per_second: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_payload_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent_leases: Option<u64>,
}

impl LimitOverrides {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", content = "data")]
pub enum PlatformEvent {
    /// The tenant's overrides are now exactly `overrides` (replacing earlier ones).
    #[serde(rename = "TenantLimitsOverridden")]
    LimitsOverridden {
        tenant_id: Uuid,
        overrides: LimitOverrides,
    },
    /// The tenant is back to its plan tier's defaults.
    #[serde(rename = "TenantOverridesCleared")]
    OverridesCleared { tenant_id: Uuid },
    /// The worker gets no new leases; it may finish what it holds.
    #[serde(rename = "WorkerDrained")]
    WorkerDrained { worker_id: String },
    #[serde(rename = "WorkerUndrained")]
    WorkerUndrained { worker_id: String },
    /// The tenant's jobs in `queue` are not leased until the queue is resumed.
    #[serde(rename = "QueuePaused")]
    QueuePaused { tenant_id: Uuid, queue: String },
    #[serde(rename = "QueueResumed")]
    QueueResumed { tenant_id: Uuid, queue: String },
    /// The tenant's jobs of `job_type` are not leased until the type is resumed.
    #[serde(rename = "JobTypePaused")]
    JobTypePaused { tenant_id: Uuid, job_type: String },
    #[serde(rename = "JobTypeResumed")]
    JobTypeResumed { tenant_id: Uuid, job_type: String },
    /// Appended atomically with the `JobLeased` of a job with a concurrency key, on the key's
    /// own subject and conditional on its last sequence: leases of one key are serialized
    /// across instances, each decided on a model that has seen every earlier one.
    #[serde(rename = "ConcurrencySlotTaken")]
    ConcurrencySlotTaken {
        tenant_id: Uuid,
        concurrency_key: String,
        job_id: Uuid,
    },
}

/// The subject of a tenant's concurrency key's slot events.
pub fn concurrency_subject(tenant_id: Uuid, key: &str) -> String {
    format!("jobs.tenants.{tenant_id}.limits.{}", hash_token(key))
}

/// What a pause applies to: a queue or a job type, of one tenant.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum PauseTarget {
    Queue(String),
    JobType(String),
}

impl PauseTarget {
    /// `queue` or `type`, as the read model and the API name the kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Queue(_) => "queue",
            Self::JobType(_) => "type",
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Self::Queue(n) | Self::JobType(n) => n,
        }
    }
}

impl PlatformEvent {
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::LimitsOverridden { .. } => "TenantLimitsOverridden",
            Self::OverridesCleared { .. } => "TenantOverridesCleared",
            Self::WorkerDrained { .. } => "WorkerDrained",
            Self::WorkerUndrained { .. } => "WorkerUndrained",
            Self::QueuePaused { .. } => "QueuePaused",
            Self::QueueResumed { .. } => "QueueResumed",
            Self::JobTypePaused { .. } => "JobTypePaused",
            Self::JobTypeResumed { .. } => "JobTypeResumed",
            Self::ConcurrencySlotTaken { .. } => "ConcurrencySlotTaken",
        }
    }

    /// For a pause or resume: the tenant, what it applies to, and whether it pauses.
    pub fn pause(&self) -> Option<(Uuid, PauseTarget, bool)> {
        match self {
            Self::QueuePaused { tenant_id, queue } => {
                Some((*tenant_id, PauseTarget::Queue(queue.clone()), true))
            }
            Self::QueueResumed { tenant_id, queue } => {
                Some((*tenant_id, PauseTarget::Queue(queue.clone()), false))
            }
            Self::JobTypePaused {
                tenant_id,
                job_type,
            } => Some((*tenant_id, PauseTarget::JobType(job_type.clone()), true)),
            Self::JobTypeResumed {
                tenant_id,
                job_type,
            } => Some((*tenant_id, PauseTarget::JobType(job_type.clone()), false)),
            _ => None,
        }
    }

    /// The subject the event lives on.
    pub fn subject(&self) -> String {
        match self {
            Self::LimitsOverridden { tenant_id, .. }
            | Self::OverridesCleared { tenant_id }
            | Self::QueuePaused { tenant_id, .. }
            | Self::QueueResumed { tenant_id, .. }
            | Self::JobTypePaused { tenant_id, .. }
            | Self::JobTypeResumed { tenant_id, .. } => format!("jobs.tenants.{tenant_id}"),
            Self::WorkerDrained { worker_id } | Self::WorkerUndrained { worker_id } => {
                format!("jobs.workers.{}", worker_token(worker_id))
            }
            Self::ConcurrencySlotTaken {
                tenant_id,
                concurrency_key,
                ..
            } => concurrency_subject(*tenant_id, concurrency_key),
        }
    }
}

/// A subject-safe token for any text (worker ids are URIs, keys are free text): the hex of the
/// first 16 bytes of its SHA-256.
pub fn hash_token(text: &str) -> String {
    let h = Sha256::digest(text.as_bytes());
    h[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// A subject-safe token for a worker id.
pub fn worker_token(worker_id: &str) -> String {
    hash_token(worker_id)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PlatformEnvelope {
    pub event_id: Uuid,
    pub schema_version: u32,
    /// The tenant acted on (overrides) or the acting admin's tenant (workers).
    pub tenant_id: Uuid,
    pub at: DateTime<Utc>,
    pub actor: Actor,
    #[serde(flatten)]
    pub event: PlatformEvent,
}

impl PlatformEnvelope {
    pub fn new(tenant_id: Uuid, at: DateTime<Utc>, actor: Actor, event: PlatformEvent) -> Self {
        Self {
            event_id: Uuid::now_v7(),
            schema_version: SCHEMA_VERSION,
            tenant_id,
            at,
            actor,
            event,
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an envelope always serializes")
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, DecodeError> {
        let raw: serde_json::Value = serde_json::from_slice(bytes)?;
        let version = raw
            .get("schema_version")
            .and_then(|v| v.as_u64())
            .unwrap_or(1) as u32;
        if version > SCHEMA_VERSION {
            return Err(DecodeError::TooNew(version));
        }
        Ok(serde_json::from_value(raw)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_events_round_trip_on_their_own_subjects() {
        let t = Uuid::new_v4();
        let e = PlatformEnvelope::new(
            t,
            Utc::now(),
            Actor::user("admin"),
            PlatformEvent::LimitsOverridden {
                tenant_id: t,
                overrides: LimitOverrides {
                    max_active_jobs: Some(7),
                    ..Default::default()
                },
            },
        );
        assert_eq!(PlatformEnvelope::from_json(&e.to_json()).unwrap(), e);
        assert_eq!(e.event.subject(), format!("jobs.tenants.{t}"));
        let w = PlatformEvent::WorkerDrained {
            worker_id: "spiffe://x/worker/a.b".into(),
        };
        let subject = w.subject();
        assert!(
            subject.starts_with("jobs.workers.") && subject.split('.').count() == 3,
            "{subject}"
        );
    }
}
