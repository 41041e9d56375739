//! `decide`: the command rules. Given a job's state and a command, either the events to append
//! or the reason it is refused. Pure: the time comes in as `now`, jitter is derived from the
//! job id and attempt, so the same inputs always give the same answer.

use chrono::{DateTime, Duration, Utc};
use serde_json::Value;

use crate::event::{ErrorInfo, JobEvent};
use crate::job::{Backoff, Job, Lease, Status};
pub use crate::validate::EnqueueSpec;
use crate::validate::FieldError;

/// The changes a PATCH may ask for, already checked.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UpdateSpec {
    pub priority: Option<u8>,
    pub run_at: Option<DateTime<Utc>>,
    pub payload: Option<Value>,
    pub max_attempts: Option<u32>,
    pub queue: Option<String>,
}

// Enqueue carries the whole job; commands are short-lived values, not stored in bulk.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Enqueue(EnqueueSpec),
    Lease {
        worker_id: String,
        lease_seconds: u32,
    },
    /// Extends the lease by `extend_seconds` (default: the lease's own length), never past
    /// the job's `timeout_seconds` from when the lease began.
    Heartbeat {
        worker_id: String,
        lease_id: u64,
        progress: Option<Value>,
        extend_seconds: Option<u32>,
    },
    Complete {
        worker_id: String,
        lease_id: u64,
        result: Option<Value>,
    },
    Fail {
        worker_id: String,
        lease_id: u64,
        error: ErrorInfo,
        retryable: bool,
        retry_after_seconds: Option<u32>,
    },
    ExpireLease {
        lease_id: u64,
    },
    /// Discards a job still scheduled or pending at its `expires_at`.
    Expire,
    Cancel {
        reason: Option<String>,
    },
    Update(UpdateSpec),
    /// Back to pending from dead_lettered, cancelled, completed or expired.
    Retry,
    /// Back to pending from the dead-letter queue only.
    Redrive,
    /// Out of every read model (from the dead-letter queue only); the events stay.
    Purge,
}

/// Why a command was refused. Each maps to one API error code.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Rejection {
    /// 404 NOT_FOUND
    #[error("job not found")]
    NotFound,
    /// 409 INVALID_STATE
    #[error("the job already exists")]
    AlreadyExists,
    /// 409 INVALID_STATE, naming the current status
    #[error("the job is {}", .0.as_str())]
    InvalidState(Status),
    /// 409 LEASE_LOST
    #[error("the lease expired, was cancelled, or belongs to another worker")]
    LeaseLost,
    /// 400 VALIDATION_FAILED
    #[error("validation failed")]
    Validation(Vec<FieldError>),
}

/// Retry delay for `attempt` (1-based): `min(base * 2^(attempt-1), max)`, with "equal jitter"
/// (between half and all of it) drawn deterministically from the job id and attempt.
pub fn backoff_delay(backoff: Backoff, job: &Job, attempt: u32) -> Duration {
    let exp = attempt.saturating_sub(1).min(30);
    let full = (backoff.base_seconds as u64 * (1u64 << exp)).min(backoff.max_seconds as u64);
    let ms = full * 1000;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in job.id.as_bytes().iter().chain(attempt.to_le_bytes().iter()) {
        h = (h ^ *b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    let jittered = ms / 2 + h % (ms / 2 + 1);
    Duration::milliseconds(jittered as i64)
}

/// The job's lease, if it is `lease_id`, held by `worker_id`, and not yet expired at `now`.
fn current_lease<'a>(
    job: &'a Job,
    worker_id: &str,
    lease_id: u64,
    now: DateTime<Utc>,
) -> Result<&'a Lease, Rejection> {
    match &job.lease {
        Some(l)
            if job.status == Status::Leased
                && l.lease_id == lease_id
                && l.worker_id == worker_id
                && l.expires_at > now =>
        {
            Ok(l)
        }
        _ => Err(Rejection::LeaseLost),
    }
}

/// Decides what `command` does to `job` (None when the job has no events) at `now`.
/// An empty list means the command is already satisfied and nothing needs appending.
pub fn decide(
    job: Option<&Job>,
    command: &Command,
    now: DateTime<Utc>,
) -> Result<Vec<JobEvent>, Rejection> {
    let job = match (job, command) {
        (None, Command::Enqueue(spec)) => {
            return Ok(vec![JobEvent::Enqueued {
                job_type: spec.job_type.clone(),
                queue: spec.queue.clone(),
                priority: spec.priority,
                payload: spec.payload.clone(),
                run_at: spec.run_at,
                max_attempts: spec.max_attempts,
                timeout_seconds: spec.timeout_seconds,
                backoff: spec.backoff,
                metadata: spec.metadata.clone(),
                plan_tier: spec.plan_tier.clone(),
                expires_at: spec.expires_at,
                unique: spec.unique.clone(),
                limits: spec.limits.clone(),
                depends_on: spec.depends_on.clone(),
                on_dependency_failure: spec.on_dependency_failure,
            }])
        }
        (Some(_), Command::Enqueue(_)) => return Err(Rejection::AlreadyExists),
        (None, _) => return Err(Rejection::NotFound),
        (Some(job), _) => job,
    };
    let status = job.status_at(now);
    let event = match command {
        Command::Enqueue(_) => unreachable!("handled above"),
        Command::Lease {
            worker_id,
            lease_seconds,
        } => {
            if status != Status::Pending || job.cancel_requested {
                return Err(Rejection::InvalidState(status));
            }
            if job.extras().expires_at.is_some_and(|e| e <= now) {
                // Its expiry is due: `Expire` discards it.
                return Err(Rejection::InvalidState(status));
            }
            let seconds = (*lease_seconds).min(job.timeout_seconds).max(1);
            JobEvent::Leased {
                worker_id: worker_id.clone(),
                expires_at: now + Duration::seconds(seconds as i64),
                lease_seconds: seconds,
            }
        }
        Command::Heartbeat {
            worker_id,
            lease_id,
            progress,
            extend_seconds,
        } => {
            let lease = current_lease(job, worker_id, *lease_id, now)?;
            let wanted =
                now + Duration::seconds(extend_seconds.unwrap_or(lease.lease_seconds) as i64);
            let cap = lease.leased_at + Duration::seconds(job.timeout_seconds as i64);
            JobEvent::Heartbeat {
                lease_id: *lease_id,
                expires_at: wanted.min(cap),
                progress: progress.clone(),
            }
        }
        Command::Complete {
            worker_id,
            lease_id,
            result,
        } => {
            current_lease(job, worker_id, *lease_id, now)?;
            if job.cancel_requested {
                return Err(Rejection::LeaseLost);
            }
            JobEvent::Completed {
                lease_id: *lease_id,
                result: result.clone(),
            }
        }
        Command::Fail {
            worker_id,
            lease_id,
            error,
            retryable,
            retry_after_seconds,
        } => {
            current_lease(job, worker_id, *lease_id, now)?;
            if job.cancel_requested {
                JobEvent::Cancelled {
                    reason: Some("cancel requested; the worker stopped".into()),
                    error: Some(error.clone()),
                }
            } else if !retryable || job.attempts >= job.max_attempts {
                JobEvent::DeadLettered {
                    lease_id: Some(*lease_id),
                    error: error.clone(),
                }
            } else {
                let delay = retry_after_seconds
                    .map(|s| Duration::seconds(s as i64))
                    .unwrap_or_else(|| backoff_delay(job.extras().backoff, job, job.attempts));
                JobEvent::Failed {
                    lease_id: *lease_id,
                    error: error.clone(),
                    next_run_at: now + delay,
                }
            }
        }
        Command::ExpireLease { lease_id } => {
            let lease = job
                .lease
                .as_ref()
                .filter(|l| job.status == Status::Leased && l.lease_id == *lease_id);
            match lease {
                None => return Err(Rejection::LeaseLost),
                Some(l) if l.expires_at > now => return Err(Rejection::InvalidState(status)),
                Some(_) if job.cancel_requested => JobEvent::Cancelled {
                    reason: Some("cancel requested; the lease ended".into()),
                    error: Some(ErrorInfo {
                        message: "lease expired".into(),
                        code: Some("LEASE_EXPIRED".into()),
                    }),
                },
                Some(_) if job.attempts >= job.max_attempts => JobEvent::DeadLettered {
                    lease_id: Some(*lease_id),
                    error: ErrorInfo {
                        message: "lease expired".into(),
                        code: Some("LEASE_EXPIRED".into()),
                    },
                },
                Some(_) => JobEvent::LeaseExpired {
                    lease_id: *lease_id,
                    next_run_at: now + backoff_delay(job.extras().backoff, job, job.attempts),
                },
            }
        }
        Command::Cancel { reason } => match status {
            Status::Scheduled | Status::Pending => JobEvent::Cancelled {
                reason: reason.clone(),
                error: None,
            },
            Status::Leased if job.cancel_requested => return Ok(vec![]),
            Status::Leased => JobEvent::CancelRequested {
                reason: reason.clone(),
            },
            s => return Err(Rejection::InvalidState(s)),
        },
        Command::Update(spec) => {
            if !matches!(status, Status::Scheduled | Status::Pending) {
                return Err(Rejection::InvalidState(status));
            }
            if spec.max_attempts.is_some_and(|m| m <= job.attempts) {
                return Err(Rejection::Validation(vec![FieldError::new(
                    "max_attempts",
                    format!(
                        "must be more than the {} attempts already made",
                        job.attempts
                    ),
                )]));
            }
            if *spec == UpdateSpec::default() {
                return Err(Rejection::Validation(vec![FieldError::new(
                    "body",
                    "give at least one of priority, run_at, payload, max_attempts, queue",
                )]));
            }
            JobEvent::Updated {
                priority: spec.priority,
                run_at: spec.run_at,
                payload: spec.payload.clone(),
                max_attempts: spec.max_attempts,
                queue: spec.queue.clone(),
            }
        }
        Command::Expire => match (status, job.extras().expires_at) {
            (Status::Scheduled | Status::Pending, Some(at)) if at <= now => {
                JobEvent::Expired { expires_at: at }
            }
            (s, _) => return Err(Rejection::InvalidState(s)),
        },
        Command::Retry => match status {
            Status::DeadLettered | Status::Cancelled | Status::Completed | Status::Expired => {
                JobEvent::Requeued {
                    reason: Some("retry".into()),
                }
            }
            s => return Err(Rejection::InvalidState(s)),
        },
        Command::Redrive => match status {
            Status::DeadLettered => JobEvent::Requeued {
                reason: Some("redrive".into()),
            },
            s => return Err(Rejection::InvalidState(s)),
        },
        Command::Purge => match status {
            Status::DeadLettered => JobEvent::Purged {},
            s => return Err(Rejection::InvalidState(s)),
        },
    };
    Ok(vec![event])
}

#[cfg(test)]
mod tests;
