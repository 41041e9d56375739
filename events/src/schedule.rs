//! Periodic jobs: a schedule's events (on `jobs.schedules.<tenant>.<schedule>`, appended
//! conditionally on that subject's last sequence), the state they fold into, the command rules,
//! and how a firing is recognised.
//!
//! A firing is not an event of the schedule: it is the `JobEnqueued` of a job whose id is
//! derived from (tenant, schedule, fire time) by [`fire_job_id`], appended with expected last
//! subject sequence 0 — so however many instances fire the same slot, exactly one append wins.
//! Its metadata says `{schedule_id, fire_time}`; [`fired_slot`] accepts it only when the job's id
//! is the one derived from them, so a hand-made enqueue cannot pose as a firing.

mod fold;
mod request;
mod timing;
mod view;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::envelope::{Actor, DecodeError, SCHEMA_VERSION};
use crate::validate::EnqueueRequest;
use crate::{Envelope, JobEvent};

pub use fold::{
    apply_schedule, decide_schedule, Schedule, ScheduleApplyError, ScheduleCommand,
    ScheduleRejection,
};
pub use request::{
    check_template, ScheduleChanges, ScheduleRequest, ScheduleSpec, ScheduleUpdateRequest,
    MAX_INTERVAL_SECONDS,
};
pub use timing::{due, parse_cron, parse_zone, Due, Timing, MAX_CATCH_UP};
pub use view::{LastRun, ScheduleView};

/// The metadata keys a fired job carries.
pub const META_SCHEDULE_ID: &str = "schedule_id";
pub const META_FIRE_TIME: &str = "fire_time";

/// What happens to firings missed while no instance ran (or that could not be appended for
/// long): none fire, the latest one fires, or every one fires (at most the latest 1000).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CatchUp {
    #[default]
    Skip,
    One,
    All,
}

/// The job a schedule enqueues at each firing: an enqueue body (without `run_at`). Two
/// templates are equal when their JSON forms are.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Template(pub EnqueueRequest);

impl PartialEq for Template {
    fn eq(&self, other: &Self) -> bool {
        serde_json::to_value(&self.0).ok() == serde_json::to_value(&other.0).ok()
    }
}

/// The subject of one schedule's events.
pub fn schedule_subject(tenant_id: Uuid, schedule_id: Uuid) -> String {
    format!("jobs.schedules.{tenant_id}.{schedule_id}")
}

/// Reads `(tenant_id, schedule_id)` back from a schedule subject.
pub fn parse_schedule_subject(subject: &str) -> Option<(Uuid, Uuid)> {
    let rest = subject.strip_prefix("jobs.schedules.")?;
    let (tenant, schedule) = rest.split_once('.')?;
    Some((tenant.parse().ok()?, schedule.parse().ok()?))
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", content = "data")]
pub enum ScheduleEvent {
    #[serde(rename = "ScheduleCreated")]
    Created {
        schedule_id: Uuid,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cron: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timezone: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        interval_seconds: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        start_at: Option<DateTime<Utc>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        end_at: Option<DateTime<Utc>>,
        catch_up: CatchUp,
        #[schema(value_type = EnqueueRequest)]
        template: Template,
        enabled: bool,
        /// The creator's plan tier: the limits the firings count against.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        plan_tier: Option<String>,
    },
    /// Only the fields that changed; `null` clears `name`, `start_at` or `end_at`. A change of
    /// timing carries the whole new timing (`cron` with `timezone`, or `interval_seconds`).
    #[serde(rename = "ScheduleUpdated")]
    Updated {
        schedule_id: Uuid,
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            deserialize_with = "request::nullable"
        )]
        #[schema(value_type = Option<String>)]
        name: Option<Option<String>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cron: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timezone: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        interval_seconds: Option<u64>,
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            deserialize_with = "request::nullable"
        )]
        #[schema(value_type = Option<DateTime<Utc>>)]
        start_at: Option<Option<DateTime<Utc>>>,
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            deserialize_with = "request::nullable"
        )]
        #[schema(value_type = Option<DateTime<Utc>>)]
        end_at: Option<Option<DateTime<Utc>>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        catch_up: Option<CatchUp>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schema(value_type = Option<EnqueueRequest>)]
        template: Option<Template>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        plan_tier: Option<String>,
    },
    /// No firing until resumed; slots that pass meanwhile are not missed, they do not exist.
    #[serde(rename = "SchedulePaused")]
    Paused { schedule_id: Uuid },
    /// Fires again from the resume on.
    #[serde(rename = "ScheduleResumed")]
    Resumed { schedule_id: Uuid },
    /// Gone: no more firings; the jobs it enqueued stay.
    #[serde(rename = "ScheduleDeleted")]
    Deleted { schedule_id: Uuid },
}

impl ScheduleEvent {
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Created { .. } => "ScheduleCreated",
            Self::Updated { .. } => "ScheduleUpdated",
            Self::Paused { .. } => "SchedulePaused",
            Self::Resumed { .. } => "ScheduleResumed",
            Self::Deleted { .. } => "ScheduleDeleted",
        }
    }

    pub fn schedule_id(&self) -> Uuid {
        match self {
            Self::Created { schedule_id, .. }
            | Self::Updated { schedule_id, .. }
            | Self::Paused { schedule_id }
            | Self::Resumed { schedule_id }
            | Self::Deleted { schedule_id } => *schedule_id,
        }
    }
}

/// A schedule event as written to the stream: the platform envelope's shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ScheduleEnvelope {
    pub event_id: Uuid,
    pub schema_version: u32,
    pub tenant_id: Uuid,
    pub at: DateTime<Utc>,
    pub actor: Actor,
    #[serde(flatten)]
    pub event: ScheduleEvent,
}

impl ScheduleEnvelope {
    pub fn subject(&self) -> String {
        schedule_subject(self.tenant_id, self.event.schedule_id())
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

/// A schedule event with the stream sequence it was stored at.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleRecorded {
    pub seq: u64,
    pub envelope: ScheduleEnvelope,
}

/// The id of the job a schedule enqueues for the slot `fire_time`: a UUIDv7 whose time is the
/// slot and whose other bits are a hash of (tenant, schedule, slot). Every instance derives the
/// same one, so the slot's job subject admits one `JobEnqueued` only.
pub fn fire_job_id(tenant_id: Uuid, schedule_id: Uuid, fire_time: DateTime<Utc>) -> Uuid {
    let millis = fire_time.timestamp_millis();
    let h = Sha256::new()
        .chain_update(b"jobs.schedule.fire")
        .chain_update(tenant_id.as_bytes())
        .chain_update(schedule_id.as_bytes())
        .chain_update(millis.to_le_bytes())
        .finalize();
    let mut rand = [0u8; 10];
    rand.copy_from_slice(&h[..10]);
    uuid::Builder::from_unix_timestamp_millis(millis.max(0) as u64, &rand).into_uuid()
}

/// A slot as a fired job's metadata records it (RFC 3339, milliseconds, `Z`).
pub fn format_fire_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// If `env` is the `JobEnqueued` of a schedule's firing: the schedule and the slot. Only a job
/// whose id is [`fire_job_id`] of its metadata counts.
pub fn fired_slot(env: &Envelope) -> Option<(Uuid, DateTime<Utc>)> {
    let JobEvent::Enqueued { metadata, .. } = &env.event else {
        return None;
    };
    let schedule_id: Uuid = metadata.get(META_SCHEDULE_ID)?.as_str()?.parse().ok()?;
    let fire_time: DateTime<Utc> = metadata
        .get(META_FIRE_TIME)?
        .as_str()?
        .parse::<DateTime<Utc>>()
        .ok()?;
    (fire_job_id(env.tenant_id, schedule_id, fire_time) == env.job_id)
        .then_some((schedule_id, fire_time))
}

#[cfg(test)]
mod tests;
