//! A schedule as the API shows it: its definition, when it fires next (computed at the time
//! asked) and its last firing.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{CatchUp, Schedule};
use crate::envelope::Actor;
use crate::validate::EnqueueRequest;

/// The last firing of a schedule, as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LastRun {
    /// The slot that fired.
    pub fire_time: DateTime<Utc>,
    /// The job it enqueued.
    pub job_id: Uuid,
    /// When the job was enqueued (later than `fire_time` for a late or caught-up firing).
    pub enqueued_at: DateTime<Utc>,
}

/// A schedule as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ScheduleView {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub name: Option<String>,
    pub cron: Option<String>,
    pub timezone: Option<String>,
    pub interval_seconds: Option<u64>,
    pub start_at: Option<DateTime<Utc>>,
    pub end_at: Option<DateTime<Utc>>,
    pub catch_up: CatchUp,
    /// The job enqueued at each firing (fields left out take the enqueue defaults).
    #[schema(value_type = EnqueueRequest)]
    pub template: serde_json::Value,
    /// False while paused.
    pub enabled: bool,
    /// The next slot that will fire; null while paused or once `end_at` has passed.
    pub next_run_at: Option<DateTime<Utc>>,
    /// The latest slot fired, if any.
    pub last_run: Option<LastRun>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub created_by: Actor,
    /// How many events the schedule has.
    pub version: u64,
}

impl Schedule {
    /// The API's view at `now`, given its last firing.
    pub fn view(&self, last_run: Option<LastRun>, now: DateTime<Utc>) -> ScheduleView {
        let mut template = serde_json::to_value(&self.template.0).unwrap_or_default();
        if let Some(o) = template.as_object_mut() {
            o.retain(|_, v| !v.is_null());
        }
        ScheduleView {
            id: self.id,
            tenant_id: self.tenant_id,
            name: self.name.clone(),
            cron: self.cron.clone(),
            timezone: self.timezone.clone(),
            interval_seconds: self.interval_seconds,
            start_at: self.start_at,
            end_at: self.end_at,
            catch_up: self.catch_up,
            template,
            enabled: self.enabled,
            next_run_at: self.next_run_at(last_run.as_ref().map(|r| r.fire_time), now),
            last_run,
            created_at: self.created_at,
            updated_at: self.updated_at,
            created_by: self.created_by.clone(),
            version: self.version,
        }
    }
}
