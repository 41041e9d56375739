//! The envelope every message on `JOBS_EVENTS` carries, and its decoding.
//!
//! Wire form: `{event_id, type, schema_version, tenant_id, job_id, at, actor: {kind, id}, data}`.
//! Decoding goes through [`Envelope::from_json`], the one place where older schema versions are
//! upcast, so every reader sees the current shape.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::event::JobEvent;

/// The schema version written by this build. History:
/// - 1: the first envelope.
/// - 2: `prev_hash`, the hash of the job's previous event (None for its first): a hash chain
///   per job. A v1 event reads as v2 with `prev_hash` absent (it is outside any chain).
pub const SCHEMA_VERSION: u32 = 2;

/// Who caused an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Actor {
    pub kind: ActorKind,
    pub id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Envelope {
    pub event_id: Uuid,
    pub schema_version: u32,
    pub tenant_id: Uuid,
    pub job_id: Uuid,
    pub at: DateTime<Utc>,
    pub actor: Actor,
    /// Hex SHA-256 of the job's previous event ([`Envelope::hash`]); None for the first (and
    /// for v1 events, which predate the chain).
    #[serde(default)]
    pub prev_hash: Option<String>,
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
        let mut raw = raw;
        // Upcasters, one per version step, on the raw JSON. `schema_version` keeps the version
        // the event was written in (its hash is over what was written).
        if version < 2 {
            raw = upcast_v1_to_v2(raw);
        }
        Ok(serde_json::from_value(raw)?)
    }

    /// The event's hash: hex SHA-256 of its canonical JSON (keys sorted, no whitespace), which
    /// covers `prev_hash` and so the whole chain before it.
    pub fn hash(&self) -> String {
        let v = serde_json::to_value(self).expect("an envelope always serializes");
        let mut out = Vec::new();
        canonical(&v, &mut out);
        let digest = Sha256::digest(&out);
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// v1 → v2: no hash chain yet.
fn upcast_v1_to_v2(mut raw: serde_json::Value) -> serde_json::Value {
    if let Some(o) = raw.as_object_mut() {
        o.entry("prev_hash").or_insert(serde_json::Value::Null);
    }
    raw
}

/// Canonical JSON: object keys sorted, no whitespace, serde_json's number and string forms.
pub fn canonical(v: &serde_json::Value, out: &mut Vec<u8>) {
    use serde_json::Value;
    match v {
        Value::Object(o) => {
            let mut keys: Vec<&String> = o.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend(serde_json::to_vec(k).expect("a string serializes"));
                out.push(b':');
                canonical(&o[*k], out);
            }
            out.push(b'}');
        }
        Value::Array(a) => {
            out.push(b'[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical(x, out);
            }
            out.push(b']');
        }
        other => out.extend(serde_json::to_vec(other).expect("a scalar serializes")),
    }
}

impl Envelope {
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
