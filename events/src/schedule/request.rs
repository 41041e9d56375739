//! The bodies of `POST /jobs/v1/schedules` and `PATCH /jobs/v1/schedules/{id}`, and their
//! checks. Every problem is reported with the field it concerns (`cron`, `template.priority`).

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Deserializer, Serialize};

use super::timing::{parse_cron, parse_zone, Timing};
use super::{CatchUp, Template};
use crate::validate::{check_text, check_time, EnqueueRequest, EnqueueSpec, FieldError};

/// The longest interval: a leap year.
pub const MAX_INTERVAL_SECONDS: u64 = 366 * 86_400;
/// The longest name.
pub const MAX_SCHEDULE_NAME: usize = 200;

/// The body of `POST /jobs/v1/schedules`: a cron expression (with its time zone) or a fixed
/// interval, and the job to enqueue at each firing.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleRequest {
    /// A label for people (1–200 characters).
    #[serde(default)]
    #[schema(example = "nightly report")]
    pub name: Option<String>,
    /// Five fields (minute hour day-of-month month day-of-week) or six with seconds first;
    /// `@hourly`, `@daily`, ... too. Not with `interval_seconds`.
    #[serde(default)]
    #[schema(example = "0 3 * * MON-FRI")]
    pub cron: Option<String>,
    /// The IANA time zone the cron expression is read in (default `UTC`); only with `cron`.
    #[serde(default)]
    #[schema(example = "Europe/Paris")]
    pub timezone: Option<String>,
    /// Fire every this many seconds (1 to 31,622,400), counted from `start_at` (default: the
    /// creation time on the second). Not with `cron`.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 31_622_400)]
    pub interval_seconds: Option<i64>,
    /// No firing before this instant.
    #[serde(default)]
    pub start_at: Option<DateTime<Utc>>,
    /// No firing after this instant.
    #[serde(default)]
    pub end_at: Option<DateTime<Utc>>,
    /// What to do with firings missed while no instance ran: `skip` (default), `one` (the
    /// latest), `all` (every one, at most the latest 1000).
    #[serde(default)]
    pub catch_up: Option<CatchUp>,
    /// The job enqueued at each firing: an enqueue body without `run_at` (`delay_seconds`
    /// counts from the firing).
    pub template: EnqueueRequest,
    /// False creates the schedule paused; default true.
    #[serde(default)]
    pub enabled: Option<bool>,
}

/// The body of `PATCH /jobs/v1/schedules/{id}`: any of these; `null` clears `name`,
/// `start_at` and `end_at`. Setting `cron` replaces an interval and the other way round.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleUpdateRequest {
    /// A new label; `null` removes it.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub name: Option<Option<String>>,
    /// A new cron expression (replaces an interval); keeps the time zone unless one is given.
    #[serde(default)]
    pub cron: Option<String>,
    /// A new IANA time zone for the cron expression.
    #[serde(default)]
    pub timezone: Option<String>,
    /// A new interval (replaces a cron expression).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 31_622_400)]
    pub interval_seconds: Option<i64>,
    /// `null` removes it.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<DateTime<Utc>>)]
    pub start_at: Option<Option<DateTime<Utc>>>,
    /// `null` removes it.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<DateTime<Utc>>)]
    pub end_at: Option<Option<DateTime<Utc>>>,
    #[serde(default)]
    pub catch_up: Option<CatchUp>,
    /// Replaces the whole template.
    #[serde(default)]
    pub template: Option<EnqueueRequest>,
}

/// Absent → None, `null` → Some(None), a value → Some(Some(v)).
pub(crate) fn nullable<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// A schedule's definition, checked: what `ScheduleCreated` records.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleSpec {
    pub name: Option<String>,
    pub cron: Option<String>,
    pub timezone: Option<String>,
    pub interval_seconds: Option<u64>,
    pub start_at: Option<DateTime<Utc>>,
    pub end_at: Option<DateTime<Utc>>,
    pub catch_up: CatchUp,
    pub template: Template,
    pub enabled: bool,
    /// Filled in by the service from the caller's token: the limits its firings count against.
    pub plan_tier: Option<String>,
}

/// Checks a name.
fn check_name(v: &Option<String>, errors: &mut Vec<FieldError>) {
    if let Some(n) = v {
        if n.is_empty() || n.chars().count() > MAX_SCHEDULE_NAME {
            errors.push(FieldError::new("name", "must be 1-200 characters"));
        }
        check_text("name", n, errors);
    }
}

fn check_interval(v: i64, errors: &mut Vec<FieldError>) -> u64 {
    if v < 1 || v as u64 > MAX_INTERVAL_SECONDS {
        errors.push(FieldError::new(
            "interval_seconds",
            format!("must be between 1 and {MAX_INTERVAL_SECONDS}"),
        ));
        return 1;
    }
    v as u64
}

/// Checks a template: a valid enqueue body without `run_at`; returns what it would enqueue now.
pub fn check_template(
    template: &EnqueueRequest,
    now: DateTime<Utc>,
    errors: &mut Vec<FieldError>,
) -> Option<EnqueueSpec> {
    if template.run_at.is_some() {
        errors.push(FieldError::new(
            "template.run_at",
            "a template cannot name an instant; use delay_seconds (counted from each firing)",
        ));
    }
    match template.clone().validate(now, "template.") {
        Ok(spec) => Some(spec),
        Err(e) => {
            errors.extend(e);
            None
        }
    }
}

/// Checks the timing of a definition (after a PATCH is laid over it): exactly one of a cron
/// expression and an interval, a known zone, a cron that matches some future instant, a window
/// that is not empty.
pub(crate) fn check_timing(
    cron: Option<&str>,
    timezone: Option<&str>,
    interval: Option<u64>,
    start_at: Option<DateTime<Utc>>,
    end_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    errors: &mut Vec<FieldError>,
) {
    match (cron, interval) {
        (Some(_), Some(_)) => errors.push(FieldError::new(
            "interval_seconds",
            "give either cron or interval_seconds, not both",
        )),
        (None, None) => errors.push(FieldError::new(
            "cron",
            "give either cron (with timezone) or interval_seconds",
        )),
        (None, Some(_)) if timezone.is_some() => errors.push(FieldError::new(
            "timezone",
            "only with cron: an interval does not depend on a time zone",
        )),
        (Some(expr), None) => {
            let zone = match parse_zone(timezone.unwrap_or("UTC")) {
                Ok(z) => Some(z),
                Err(m) => {
                    errors.push(FieldError::new("timezone", m));
                    None
                }
            };
            match parse_cron(expr) {
                Err(m) => errors.push(FieldError::new("cron", m)),
                Ok(cron) => {
                    if let Some(zone) = zone {
                        let timing = Timing::Cron {
                            cron: Box::new(cron),
                            zone,
                        };
                        if timing
                            .next_after(now.max(start_at.unwrap_or(now)))
                            .is_none()
                        {
                            errors.push(FieldError::new("cron", "never matches a future instant"));
                        }
                    }
                }
            }
        }
        (None, Some(_)) => {}
    }
    for (field, t) in [("start_at", start_at), ("end_at", end_at)] {
        if let Some(t) = t {
            check_time(field, t, errors);
        }
    }
    if let (Some(s), Some(e)) = (start_at, end_at) {
        if e < s {
            errors.push(FieldError::new("end_at", "must not be before start_at"));
        }
    }
}

impl ScheduleRequest {
    /// Checks the request at `now`.
    pub fn validate(self, now: DateTime<Utc>) -> Result<ScheduleSpec, Vec<FieldError>> {
        let mut errors = Vec::new();
        check_name(&self.name, &mut errors);
        let interval = self
            .interval_seconds
            .map(|v| check_interval(v, &mut errors));
        // Instants are kept to the millisecond, as events record them.
        let start_at = self.start_at.map(|t| t.trunc_subsecs(3));
        let end_at = self.end_at.map(|t| t.trunc_subsecs(3));
        check_timing(
            self.cron.as_deref(),
            self.timezone.as_deref(),
            interval,
            start_at,
            end_at,
            now,
            &mut errors,
        );
        check_template(&self.template, now, &mut errors);
        if !errors.is_empty() {
            return Err(errors);
        }
        let timezone = self
            .cron
            .as_ref()
            .map(|_| self.timezone.unwrap_or_else(|| "UTC".into()));
        Ok(ScheduleSpec {
            name: self.name,
            cron: self.cron,
            timezone,
            interval_seconds: interval,
            start_at,
            end_at,
            catch_up: self.catch_up.unwrap_or_default(),
            template: Template(self.template),
            enabled: self.enabled.unwrap_or(true),
            plan_tier: None,
        })
    }
}

/// A PATCH, checked field by field (the merged definition is checked by `decide_schedule`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScheduleChanges {
    pub name: Option<Option<String>>,
    pub cron: Option<String>,
    pub timezone: Option<String>,
    pub interval_seconds: Option<u64>,
    pub start_at: Option<Option<DateTime<Utc>>>,
    pub end_at: Option<Option<DateTime<Utc>>>,
    pub catch_up: Option<CatchUp>,
    pub template: Option<Template>,
    /// Filled in by the service from the caller's token.
    pub plan_tier: Option<String>,
}

impl ScheduleChanges {
    /// True when the request asks for nothing.
    pub fn is_empty(&self) -> bool {
        Self {
            plan_tier: None,
            ..self.clone()
        } == Self::default()
    }
}

impl ScheduleUpdateRequest {
    pub fn validate(self, now: DateTime<Utc>) -> Result<ScheduleChanges, Vec<FieldError>> {
        let mut errors = Vec::new();
        if let Some(name) = &self.name {
            check_name(name, &mut errors);
        }
        let interval = self
            .interval_seconds
            .map(|v| check_interval(v, &mut errors));
        if let Some(t) = &self.template {
            check_template(t, now, &mut errors);
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(ScheduleChanges {
            name: self.name,
            cron: self.cron,
            timezone: self.timezone,
            interval_seconds: interval,
            start_at: self.start_at.map(|t| t.map(|t| t.trunc_subsecs(3))),
            end_at: self.end_at.map(|t| t.map(|t| t.trunc_subsecs(3))),
            catch_up: self.catch_up,
            template: self.template.map(Template),
            plan_tier: None,
        })
    }
}
