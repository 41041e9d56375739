//! The envelope every message on `JOBS_EVENTS` carries, and its decoding.
//!
//! Wire form: `{event_id, type, schema_version, tenant_id, job_id, at, actor: {kind, id}, data}`.
//! Decoding goes through [`Envelope::from_json`], the one place where older schema versions are
//! upcast, so every reader sees the current shape.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::event::JobEvent;

/// The schema version written by this build.
pub const SCHEMA_VERSION: u32 = 1;

/// Who caused an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    pub kind: ActorKind,
    pub id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActorKind {
    User,
    Worker,
    System,
}

impl Actor {
    pub fn user(id: impl Into<String>) -> Self {
        Self {
            kind: ActorKind::User,
            id: id.into(),
        }
    }
    pub fn worker(id: impl Into<String>) -> Self {
        Self {
            kind: ActorKind::Worker,
            id: id.into(),
        }
    }
    pub fn system(id: impl Into<String>) -> Self {
        Self {
            kind: ActorKind::System,
            id: id.into(),
        }
    }
}

/// One event as written to the stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub event_id: Uuid,
    pub schema_version: u32,
    pub tenant_id: Uuid,
    pub job_id: Uuid,
    pub at: DateTime<Utc>,
    pub actor: Actor,
    #[serde(flatten)]
    pub event: JobEvent,
}

/// Why a message could not be read as an event.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not a JSON event envelope: {0}")]
    Json(#[from] serde_json::Error),
    #[error("schema_version {0} is newer than this build understands ({SCHEMA_VERSION})")]
    TooNew(u32),
}

impl Envelope {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an envelope always serializes")
    }

    /// Decodes an envelope of any known schema version, upcasting older ones.
    pub fn from_json(bytes: &[u8]) -> Result<Self, DecodeError> {
        let raw: serde_json::Value = serde_json::from_slice(bytes)?;
        let version = raw
            .get("schema_version")
            .and_then(|v| v.as_u64())
            .unwrap_or(1) as u32;
        if version > SCHEMA_VERSION {
            return Err(DecodeError::TooNew(version));
        }
        // Version 1 is the current version: nothing to upcast yet. Future upcasters go here,
        // each turning version n into n + 1 on the raw JSON.
        Ok(serde_json::from_value(raw)?)
    }

    /// The event's wire type name, e.g. `JobEnqueued`.
    pub fn type_name(&self) -> &'static str {
        self.event.type_name()
    }
}

/// An envelope together with the stream sequence it was stored at.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    pub seq: u64,
    pub envelope: Envelope,
}
