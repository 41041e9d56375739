//! Input rules for job fields, shared by every writer (HTTP, CLI, bench).
//!
//! A request body is parsed into [`EnqueueRequest`] (unknown fields rejected) and then checked
//! here into an [`EnqueueSpec`]; every problem is reported with the field it concerns.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::job::{Backoff, ConcurrencyLimit, DependencyFailure, Status, UniqueSpec};

pub const MAX_NAME_LEN: usize = 128;
pub const MAX_PRIORITY: i64 = 10;
pub const DEFAULT_PRIORITY: u8 = 5;
pub const DEFAULT_QUEUE: &str = "default";
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
pub const MAX_ATTEMPTS_LIMIT: i64 = 100;
pub const DEFAULT_TIMEOUT_SECONDS: u32 = 300;
pub const MAX_TIMEOUT_SECONDS: i64 = 86_400;
pub const MAX_DELAY_SECONDS: i64 = 366 * 86_400;
pub const MAX_BACKOFF_SECONDS: i64 = 7 * 86_400;
pub const MAX_DEPENDENCIES: usize = 100;

/// A problem with one field of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BackoffRequest {
    pub base_seconds: Option<i64>,
    pub max_seconds: Option<i64>,
}

/// `unique` at enqueue.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UniqueRequest {
    /// Any text (1–255 characters), per tenant: e.g. `report:customer-42:2026-12-01`.
    #[schema(min_length = 1, max_length = 255)]
    pub key: String,
    /// The states in which the holder blocks a new job; default scheduled, pending, leased.
    #[serde(default)]
    pub states: Option<Vec<Status>>,
    /// Also block while the holder is younger than this, whatever its state.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 31_622_400)]
    pub ttl_seconds: Option<i64>,
}

/// The body of `POST /jobs/v1/enqueue` (and each element of a batch).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnqueueRequest {
    /// What kind of job this is; workers lease by type.
    #[serde(rename = "type")]
    #[schema(pattern = "^[A-Za-z0-9._:-]{1,128}$", example = "email.send")]
    pub job_type: String,
    /// Any JSON but null, handed to the worker as it is (at most the plan's `max_payload_bytes`).
    pub payload: Value,
    /// 0 (lowest) to 10 (highest); default 5.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 10)]
    pub priority: Option<i64>,
    /// Default `default`.
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9._:-]{1,128}$")]
    pub queue: Option<String>,
    /// Run no earlier than this (at most a year ahead); not with `delay_seconds`.
    #[serde(default)]
    pub run_at: Option<DateTime<Utc>>,
    /// Run no earlier than this many seconds from now; not with `run_at`.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 31_622_400)]
    pub delay_seconds: Option<i64>,
    /// Attempts before the job is dead-lettered; default 3.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 100)]
    pub max_attempts: Option<i64>,
    /// How long one attempt may hold its lease in all (heartbeats included); default 300.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 86_400)]
    pub timeout_seconds: Option<i64>,
    #[serde(default)]
    pub backoff: Option<BackoffRequest>,
    /// Free-form JSON object kept with the job.
    #[serde(default)]
    pub metadata: Option<Value>,
    /// Discard the job (`JobExpired`, status `expired`) if no worker has started it by then;
    /// after `run_at`. Not with `ttl_seconds`.
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
    /// As `expires_at`, counted from now.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 31_622_400)]
    pub ttl_seconds: Option<i64>,
    /// Enqueue only if no job with this key is in the given states: else the answer is that job
    /// (200, `deduplicated: true`). Single enqueues only (not in a batch).
    #[serde(default)]
    pub unique: Option<UniqueRequest>,
    /// At most `max_concurrent` of the tenant's jobs with this `concurrency_key` run at once,
    /// and at most `max_per_second` start in any second (e.g. per customer, or per job type with
    /// the type as the key); other keys are served meanwhile.
    #[serde(default)]
    pub limits: Option<LimitsRequest>,
    /// Up to 100 of the tenant's jobs that must complete before this one runs.
    #[serde(default)]
    pub depends_on: Option<Vec<uuid::Uuid>>,
    /// When a dependency ends without completing: `cancel` (default) or `run_anyway`.
    #[serde(default)]
    pub on_dependency_failure: Option<DependencyFailure>,
}

/// `limits` at enqueue.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsRequest {
    /// Any text (1–255 characters), per tenant.
    #[schema(min_length = 1, max_length = 255, example = "customer-42")]
    pub concurrency_key: String,
    /// At most this many leased at once.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 10_000)]
    pub max_concurrent: Option<i64>,
    /// At most this many leases started in any one second (a sliding window).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 10_000)]
    pub max_per_second: Option<i64>,
}

/// A checked enqueue: every value in range, defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct EnqueueSpec {
    pub job_type: String,
    pub queue: String,
    pub priority: u8,
    pub payload: Value,
    pub run_at: DateTime<Utc>,
    pub max_attempts: u32,
    pub timeout_seconds: u32,
    pub backoff: Backoff,
    pub metadata: Value,
    /// Filled in by the service from the caller's token, not from the request.
    pub plan_tier: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub unique: Option<UniqueSpec>,
    pub limits: Option<ConcurrencyLimit>,
    pub depends_on: Vec<uuid::Uuid>,
    pub on_dependency_failure: Option<DependencyFailure>,
}

/// `type` and `queue`: 1–128 characters of `[A-Za-z0-9._:-]`.
pub fn check_name(field: &str, value: &str, errors: &mut Vec<FieldError>) {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-');
    if value.is_empty() || value.len() > MAX_NAME_LEN || !value.chars().all(ok_char) {
        errors.push(FieldError::new(
            field,
            "must be 1-128 characters of letters, digits, '.', '_', ':' or '-'",
        ));
    }
}

fn in_range(field: &str, v: i64, lo: i64, hi: i64, errors: &mut Vec<FieldError>) -> bool {
    if v < lo || v > hi {
        errors.push(FieldError::new(
            field,
            format!("must be between {lo} and {hi}"),
        ));
        return false;
    }
    true
}

pub fn check_priority(field: &str, v: i64, errors: &mut Vec<FieldError>) -> u8 {
    if in_range(field, v, 0, MAX_PRIORITY, errors) {
        v as u8
    } else {
        0
    }
}

pub fn check_max_attempts(field: &str, v: i64, errors: &mut Vec<FieldError>) -> u32 {
    if in_range(field, v, 1, MAX_ATTEMPTS_LIMIT, errors) {
        v as u32
    } else {
        1
    }
}

impl EnqueueRequest {
    /// Checks the request; `prefix` names the element in a batch (e.g. `jobs[3].`).
    pub fn validate(
        self,
        now: DateTime<Utc>,
        prefix: &str,
    ) -> Result<EnqueueSpec, Vec<FieldError>> {
        let mut errors = Vec::new();
        let f = |name: &str| format!("{prefix}{name}");
        check_name(&f("type"), &self.job_type, &mut errors);
        let queue = self.queue.unwrap_or_else(|| DEFAULT_QUEUE.to_string());
        check_name(&f("queue"), &queue, &mut errors);
        let priority = self.priority.map_or(DEFAULT_PRIORITY, |p| {
            check_priority(&f("priority"), p, &mut errors)
        });
        if self.payload.is_null() {
            errors.push(FieldError::new(
                f("payload"),
                "is required and must not be null",
            ));
        }
        let max_attempts = self.max_attempts.map_or(DEFAULT_MAX_ATTEMPTS, |m| {
            check_max_attempts(&f("max_attempts"), m, &mut errors)
        });
        let timeout_seconds = match self.timeout_seconds {
            None => DEFAULT_TIMEOUT_SECONDS,
            Some(t)
                if in_range(
                    &f("timeout_seconds"),
                    t,
                    1,
                    MAX_TIMEOUT_SECONDS,
                    &mut errors,
                ) =>
            {
                t as u32
            }
            Some(_) => 0,
        };
        let run_at = match (self.run_at, self.delay_seconds) {
            (Some(_), Some(_)) => {
                errors.push(FieldError::new(
                    f("delay_seconds"),
                    "give either run_at or delay_seconds, not both",
                ));
                now
            }
            (Some(at), None) => at,
            (None, Some(d))
                if in_range(&f("delay_seconds"), d, 0, MAX_DELAY_SECONDS, &mut errors) =>
            {
                now + Duration::seconds(d)
            }
            _ => now,
        };
        let mut backoff = Backoff::default();
        if let Some(b) = self.backoff {
            if let Some(base) = b.base_seconds {
                if in_range(
                    &f("backoff.base_seconds"),
                    base,
                    1,
                    MAX_BACKOFF_SECONDS,
                    &mut errors,
                ) {
                    backoff.base_seconds = base as u32;
                }
            }
            if let Some(max) = b.max_seconds {
                if in_range(
                    &f("backoff.max_seconds"),
                    max,
                    1,
                    MAX_BACKOFF_SECONDS,
                    &mut errors,
                ) {
                    backoff.max_seconds = max as u32;
                }
            }
            if backoff.max_seconds < backoff.base_seconds {
                errors.push(FieldError::new(
                    f("backoff.max_seconds"),
                    "must not be less than backoff.base_seconds",
                ));
            }
        }
        let metadata = self
            .metadata
            .unwrap_or_else(|| Value::Object(Default::default()));
        if !metadata.is_object() {
            errors.push(FieldError::new(f("metadata"), "must be a JSON object"));
        }
        check_json(&f("payload"), &self.payload, &mut errors);
        check_json(&f("metadata"), &metadata, &mut errors);
        check_time(&f("run_at"), run_at, &mut errors);
        let expires_at = match (self.expires_at, self.ttl_seconds) {
            (Some(_), Some(_)) => {
                errors.push(FieldError::new(
                    f("ttl_seconds"),
                    "give either expires_at or ttl_seconds, not both",
                ));
                None
            }
            (Some(at), None) => Some(at),
            (None, Some(ttl))
                if in_range(&f("ttl_seconds"), ttl, 1, MAX_DELAY_SECONDS, &mut errors) =>
            {
                Some(now + Duration::seconds(ttl))
            }
            _ => None,
        };
        if let Some(at) = expires_at {
            check_time(&f("expires_at"), at, &mut errors);
            if at <= run_at {
                errors.push(FieldError::new(
                    f(if self.ttl_seconds.is_some() {
                        "ttl_seconds"
                    } else {
                        "expires_at"
                    }),
                    "must end after the job's run_at (and after now)",
                ));
            }
        }
        let unique = self.unique.map(|u| {
            let k = u.key.chars().count();
            if k == 0 || k > 255 || u.key.chars().any(char::is_control) {
                errors.push(FieldError::new(
                    f("unique.key"),
                    "must be 1-255 characters, none of them control characters",
                ));
            }
            let states = u
                .states
                .unwrap_or_else(|| UniqueSpec::DEFAULT_STATES.to_vec());
            if states.is_empty() {
                errors.push(FieldError::new(
                    f("unique.states"),
                    "must name at least one state",
                ));
            }
            let ttl_seconds = match u.ttl_seconds {
                Some(t)
                    if in_range(
                        &f("unique.ttl_seconds"),
                        t,
                        1,
                        MAX_DELAY_SECONDS,
                        &mut errors,
                    ) =>
                {
                    Some(t as u32)
                }
                _ => None,
            };
            UniqueSpec {
                key: u.key,
                states,
                ttl_seconds,
            }
        });
        let limits = self.limits.map(|l| {
            let k = l.concurrency_key.chars().count();
            if k == 0 || k > 255 || l.concurrency_key.chars().any(char::is_control) {
                errors.push(FieldError::new(
                    f("limits.concurrency_key"),
                    "must be 1-255 characters, none of them control characters",
                ));
            }
            let mut bounded = |field: &str, v: Option<i64>| {
                v.filter(|v| in_range(&f(field), *v, 1, 10_000, &mut errors))
                    .map(|v| v as u32)
            };
            let max_concurrent = bounded("limits.max_concurrent", l.max_concurrent);
            let max_per_second = bounded("limits.max_per_second", l.max_per_second);
            if l.max_concurrent.is_none() && l.max_per_second.is_none() {
                errors.push(FieldError::new(
                    f("limits"),
                    "give max_concurrent, max_per_second or both",
                ));
            }
            ConcurrencyLimit {
                concurrency_key: l.concurrency_key,
                max_concurrent,
                max_per_second,
            }
        });
        let mut depends_on = self.depends_on.unwrap_or_default();
        if depends_on.len() > MAX_DEPENDENCIES {
            errors.push(FieldError::new(
                f("depends_on"),
                format!("must name at most {MAX_DEPENDENCIES} jobs"),
            ));
        }
        depends_on.sort();
        depends_on.dedup();
        if self.on_dependency_failure.is_some() && depends_on.is_empty() {
            errors.push(FieldError::new(
                f("on_dependency_failure"),
                "only with depends_on",
            ));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(EnqueueSpec {
            job_type: self.job_type,
            queue,
            priority,
            payload: self.payload,
            run_at,
            max_attempts,
            timeout_seconds,
            backoff,
            metadata,
            plan_tier: None,
            expires_at,
            unique,
            limits,
            on_dependency_failure: self
                .on_dependency_failure
                .filter(|_| !depends_on.is_empty()),
            depends_on,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(v: Value) -> EnqueueRequest {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn defaults_fill_in_what_the_request_leaves_out() {
        let now = Utc::now();
        let spec = req(serde_json::json!({"type": "email.send", "payload": {}}))
            .validate(now, "")
            .unwrap();
        assert_eq!(spec.queue, "default");
        assert_eq!(spec.priority, 5);
        assert_eq!(spec.max_attempts, 3);
        assert_eq!(spec.timeout_seconds, 300);
        assert_eq!(spec.run_at, now);
        assert_eq!(spec.backoff, Backoff::default());
    }

    #[test]
    fn every_bad_field_is_named() {
        let errs = req(serde_json::json!({
            "type": "bad type!", "payload": null, "priority": 11, "queue": "",
            "max_attempts": 0, "timeout_seconds": -1, "metadata": [1],
            "run_at": "2030-01-01T00:00:00Z", "delay_seconds": 5
        }))
        .validate(Utc::now(), "jobs[2].")
        .unwrap_err();
        let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
        for f in [
            "jobs[2].type",
            "jobs[2].queue",
            "jobs[2].priority",
            "jobs[2].payload",
            "jobs[2].max_attempts",
            "jobs[2].timeout_seconds",
            "jobs[2].delay_seconds",
            "jobs[2].metadata",
        ] {
            assert!(fields.contains(&f), "{f} missing from {fields:?}");
        }
    }

    #[test]
    fn unknown_fields_are_refused() {
        let r: Result<EnqueueRequest, _> =
            serde_json::from_value(serde_json::json!({"type": "a", "payload": {}, "colour": 1}));
        assert!(r.is_err());
    }
}

/// The body of `PATCH /jobs/v1/jobs/{id}`: any of these fields.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateRequest {
    #[serde(default)]
    pub priority: Option<i64>,
    #[serde(default)]
    pub run_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub payload: Option<Value>,
    #[serde(default)]
    pub max_attempts: Option<i64>,
    #[serde(default)]
    pub queue: Option<String>,
}

impl UpdateRequest {
    pub fn validate(self) -> Result<crate::decide::UpdateSpec, Vec<FieldError>> {
        let mut errors = Vec::new();
        let priority = self
            .priority
            .map(|p| check_priority("priority", p, &mut errors));
        let max_attempts = self
            .max_attempts
            .map(|m| check_max_attempts("max_attempts", m, &mut errors));
        if let Some(q) = &self.queue {
            check_name("queue", q, &mut errors);
        }
        if self.payload.as_ref().is_some_and(Value::is_null) {
            errors.push(FieldError::new("payload", "must not be null"));
        }
        if let Some(p) = &self.payload {
            check_json("payload", p, &mut errors);
        }
        if let Some(t) = self.run_at {
            check_time("run_at", t, &mut errors);
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(crate::decide::UpdateSpec {
            priority,
            run_at: self.run_at,
            payload: self.payload,
            max_attempts,
            queue: self.queue,
        })
    }
}

/// The earliest and latest instants a job may be scheduled at.
pub fn time_bounds() -> (DateTime<Utc>, DateTime<Utc>) {
    let lo = DateTime::<Utc>::from_timestamp(0, 0).expect("the epoch");
    let hi = DateTime::<Utc>::from_timestamp(253_402_300_799, 0).expect("9999-12-31T23:59:59Z");
    (lo, hi)
}

/// A time within [`time_bounds`].
pub fn check_time(field: &str, t: DateTime<Utc>, errors: &mut Vec<FieldError>) {
    let (lo, hi) = time_bounds();
    if t < lo || t > hi {
        errors.push(FieldError::new(
            field,
            "must be between 1970-01-01T00:00:00Z and 9999-12-31T23:59:59Z",
        ));
    }
}

/// JSON the read model can store: no NUL character in any string or key.
pub fn check_json(field: &str, v: &Value, errors: &mut Vec<FieldError>) {
    fn has_nul(v: &Value) -> bool {
        match v {
            Value::String(s) => s.contains('\0'),
            Value::Array(a) => a.iter().any(has_nul),
            Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
            _ => false,
        }
    }
    if has_nul(v) {
        errors.push(FieldError::new(
            field,
            "must not contain the NUL character (\\u0000)",
        ));
    }
}

/// Text the read model can store: no NUL character.
pub fn check_text(field: &str, s: &str, errors: &mut Vec<FieldError>) {
    if s.contains('\0') {
        errors.push(FieldError::new(
            field,
            "must not contain the NUL character (\\u0000)",
        ));
    }
}
