//! A schedule's state and rules: [`apply_schedule`] folds its events, [`decide_schedule`] turns
//! a command into events (or refuses it). Pure: the time comes in with the event or command.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::request::{self, ScheduleChanges, ScheduleSpec};
use super::{CatchUp, ScheduleEvent, ScheduleRecorded, Template};
use crate::envelope::Actor;
use crate::validate::FieldError;

/// A schedule as its events fold (what the read model stores).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub name: Option<String>,
    pub cron: Option<String>,
    pub timezone: Option<String>,
    pub interval_seconds: Option<u64>,
    pub start_at: Option<DateTime<Utc>>,
    pub end_at: Option<DateTime<Utc>>,
    pub catch_up: CatchUp,
    pub template: Template,
    pub enabled: bool,
    pub plan_tier: Option<String>,
    /// Slots at or before this instant never fire: the creation, the last resume, or the last
    /// change of timing.
    pub counting_from: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub created_by: Actor,
    /// How many events the schedule has.
    pub version: u64,
    /// The stream sequence of its last event (what the next append expects).
    pub last_seq: u64,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScheduleApplyError {
    #[error("{0} does not follow the schedule's history")]
    OutOfOrder(&'static str),
    #[error("the event names schedule {0}, not the one folded")]
    WrongSchedule(Uuid),
}

/// Folds one event into a schedule (None before its creation). Returns None once deleted.
pub fn apply_schedule(
    state: Option<&Schedule>,
    rec: &ScheduleRecorded,
) -> Result<Option<Schedule>, ScheduleApplyError> {
    let env = &rec.envelope;
    let at = env.at;
    let mut s = match (state, &env.event) {
        (
            None,
            ScheduleEvent::Created {
                schedule_id,
                name,
                cron,
                timezone,
                interval_seconds,
                start_at,
                end_at,
                catch_up,
                template,
                enabled,
                plan_tier,
            },
        ) => {
            return Ok(Some(Schedule {
                id: *schedule_id,
                tenant_id: env.tenant_id,
                name: name.clone(),
                cron: cron.clone(),
                timezone: timezone.clone(),
                interval_seconds: *interval_seconds,
                start_at: *start_at,
                end_at: *end_at,
                catch_up: *catch_up,
                template: template.clone(),
                enabled: *enabled,
                plan_tier: plan_tier.clone(),
                counting_from: at,
                created_at: at,
                updated_at: at,
                created_by: env.actor.clone(),
                version: 1,
                last_seq: rec.seq,
            }))
        }
        (Some(_), ScheduleEvent::Created { .. }) | (None, _) => {
            return Err(ScheduleApplyError::OutOfOrder(env.event.type_name()))
        }
        (Some(s), e) if s.id != e.schedule_id() || s.tenant_id != env.tenant_id => {
            return Err(ScheduleApplyError::WrongSchedule(e.schedule_id()))
        }
        (Some(s), _) => s.clone(),
    };
    match &env.event {
        ScheduleEvent::Created { .. } => unreachable!("handled above"),
        ScheduleEvent::Updated {
            name,
            cron,
            timezone,
            interval_seconds,
            start_at,
            end_at,
            catch_up,
            template,
            plan_tier,
            ..
        } => {
            if let Some(n) = name {
                s.name = n.clone();
            }
            if let Some(every) = interval_seconds {
                s.interval_seconds = Some(*every);
                s.cron = None;
                s.timezone = None;
            }
            if let Some(c) = cron {
                s.cron = Some(c.clone());
                s.interval_seconds = None;
            }
            if let Some(z) = timezone {
                s.timezone = Some(z.clone());
            }
            if let Some(t) = start_at {
                s.start_at = *t;
            }
            if let Some(t) = end_at {
                s.end_at = *t;
            }
            if let Some(c) = catch_up {
                s.catch_up = *c;
            }
            if let Some(t) = template {
                s.template = t.clone();
            }
            if plan_tier.is_some() {
                s.plan_tier = plan_tier.clone();
            }
            let retimed = cron.is_some()
                || timezone.is_some()
                || interval_seconds.is_some()
                || start_at.is_some()
                || end_at.is_some();
            if retimed {
                s.counting_from = at;
            }
        }
        ScheduleEvent::Paused { .. } => s.enabled = false,
        ScheduleEvent::Resumed { .. } => {
            s.enabled = true;
            s.counting_from = at;
        }
        ScheduleEvent::Deleted { .. } => return Ok(None),
    }
    s.updated_at = at;
    s.version += 1;
    s.last_seq = rec.seq;
    Ok(Some(s))
}

#[derive(Debug, Clone, PartialEq)]
pub enum ScheduleCommand {
    Create(Box<ScheduleSpec>),
    Update(Box<ScheduleChanges>),
    Pause,
    Resume,
    Delete,
}

/// Why a schedule command was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScheduleRejection {
    /// 404 NOT_FOUND
    #[error("schedule not found")]
    NotFound,
    /// 409 INVALID_STATE
    #[error("the schedule already exists")]
    AlreadyExists,
    /// 400 VALIDATION_FAILED
    #[error("validation failed")]
    Validation(Vec<FieldError>),
}

/// The command rules. An empty list means the command is already satisfied (pausing a paused
/// schedule). Pure: `now` is the command's time.
pub fn decide_schedule(
    state: Option<&Schedule>,
    id: Uuid,
    command: &ScheduleCommand,
    now: DateTime<Utc>,
) -> Result<Vec<ScheduleEvent>, ScheduleRejection> {
    let s = match (state, command) {
        (None, ScheduleCommand::Create(spec)) => {
            let spec = spec.as_ref().clone();
            return Ok(vec![ScheduleEvent::Created {
                schedule_id: id,
                name: spec.name,
                cron: spec.cron,
                timezone: spec.timezone,
                interval_seconds: spec.interval_seconds,
                start_at: spec.start_at,
                end_at: spec.end_at,
                catch_up: spec.catch_up,
                template: spec.template,
                enabled: spec.enabled,
                plan_tier: spec.plan_tier,
            }]);
        }
        (Some(_), ScheduleCommand::Create(_)) => return Err(ScheduleRejection::AlreadyExists),
        (None, _) => return Err(ScheduleRejection::NotFound),
        (Some(s), _) => s,
    };
    let event = match command {
        ScheduleCommand::Create(_) => unreachable!("handled above"),
        ScheduleCommand::Pause if !s.enabled => return Ok(vec![]),
        ScheduleCommand::Pause => ScheduleEvent::Paused { schedule_id: s.id },
        ScheduleCommand::Resume if s.enabled => return Ok(vec![]),
        ScheduleCommand::Resume => ScheduleEvent::Resumed { schedule_id: s.id },
        ScheduleCommand::Delete => ScheduleEvent::Deleted { schedule_id: s.id },
        ScheduleCommand::Update(c) => update(s, c, now)?,
    };
    Ok(vec![event])
}

/// A PATCH laid over the schedule: the merged timing must hold together.
fn update(
    s: &Schedule,
    c: &ScheduleChanges,
    now: DateTime<Utc>,
) -> Result<ScheduleEvent, ScheduleRejection> {
    if c.is_empty() {
        return Err(ScheduleRejection::Validation(vec![FieldError::new(
            "body",
            "give at least one of name, cron, timezone, interval_seconds, start_at, end_at, catch_up, template",
        )]));
    }
    let mut errors = Vec::new();
    if c.cron.is_some() && c.interval_seconds.is_some() {
        errors.push(FieldError::new(
            "interval_seconds",
            "give either cron or interval_seconds, not both",
        ));
        return Err(ScheduleRejection::Validation(errors));
    }
    // The whole timing after the change.
    let (cron, timezone, interval) = match (&c.cron, c.interval_seconds) {
        (Some(expr), _) => (
            Some(expr.clone()),
            c.timezone
                .clone()
                .or_else(|| s.timezone.clone())
                .or_else(|| Some("UTC".into())),
            None,
        ),
        (None, Some(every)) => (None, c.timezone.clone(), Some(every)),
        (None, None) if s.cron.is_some() => (
            s.cron.clone(),
            c.timezone.clone().or_else(|| s.timezone.clone()),
            None,
        ),
        (None, None) => (None, c.timezone.clone(), s.interval_seconds),
    };
    let start_at = c.start_at.unwrap_or(s.start_at);
    let end_at = c.end_at.unwrap_or(s.end_at);
    request::check_timing(
        cron.as_deref(),
        timezone.as_deref(),
        interval,
        start_at,
        end_at,
        now,
        &mut errors,
    );
    if !errors.is_empty() {
        return Err(ScheduleRejection::Validation(errors));
    }
    let timing_changed = c.cron.is_some() || c.interval_seconds.is_some();
    Ok(ScheduleEvent::Updated {
        schedule_id: s.id,
        name: c.name.clone(),
        cron: if timing_changed { cron } else { None },
        timezone: if timing_changed || c.timezone.is_some() {
            timezone
        } else {
            None
        },
        interval_seconds: if timing_changed { interval } else { None },
        start_at: c.start_at,
        end_at: c.end_at,
        catch_up: c.catch_up,
        template: c.template.clone(),
        plan_tier: c.plan_tier.clone(),
    })
}
