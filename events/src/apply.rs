//! `apply`: the fold of one event into a job. Pure; rejects an event that cannot follow the
//! job's current state, so a corrupt or reordered stream is noticed instead of papered over.

use crate::envelope::Recorded;
use crate::event::JobEvent;
use crate::job::{Extras, Job, JobError, Lease, MaybeExtras, Status};
use crate::{Json, Name};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{event} cannot apply to a job that is {state}: {reason}")]
pub struct ApplyError {
    pub event: &'static str,
    pub state: String,
    pub reason: &'static str,
}

fn reject(event: &JobEvent, job: Option<&Job>, reason: &'static str) -> ApplyError {
    ApplyError {
        event: event.type_name(),
        state: job.map_or("absent".to_string(), |j| j.status.as_str().to_string()),
        reason,
    }
}

/// Folds `rec` into `job` (None for a job with no events yet) and returns the new state.
pub fn apply(job: Option<&Job>, rec: &Recorded) -> Result<Job, ApplyError> {
    let env = &rec.envelope;
    let at = env.at;
    let ev = &env.event;
    // From v2 on, each event names the hash of the job's previous one.
    let chained = match (
        env.prev_hash.as_deref(),
        job.and_then(|j| j.last_event_hash),
    ) {
        (None, None) => true,
        (Some(prev), Some(last)) => last.is(prev),
        _ => false,
    };
    if env.schema_version >= 2 && !chained {
        return Err(reject(
            ev,
            job,
            "its prev_hash is not the hash of the job's last event",
        ));
    }
    let Some(current) = job else {
        let JobEvent::Enqueued {
            job_type,
            queue,
            priority,
            payload,
            run_at,
            max_attempts,
            timeout_seconds,
            backoff,
            metadata,
            plan_tier: _,
            expires_at,
            unique,
            limits,
            depends_on,
            on_dependency_failure,
        } = ev
        else {
            return Err(reject(ev, None, "the job has no JobEnqueued event"));
        };
        return Ok(Job {
            id: env.job_id,
            tenant_id: env.tenant_id,
            job_type: Name::new(job_type),
            queue: Name::new(queue),
            priority: *priority,
            payload: payload.into(),
            status: if *run_at <= at {
                Status::Pending
            } else {
                Status::Scheduled
            },
            attempts: 0,
            max_attempts: *max_attempts,
            run_at: *run_at,
            timeout_seconds: *timeout_seconds,
            created_at: at,
            updated_at: at,
            lease: None,
            metadata: metadata.into(),
            cancel_requested: false,
            version: 1,
            last_event_seq: rec.seq,
            last_event_hash: Some(env.digest()),
            payload_seq: rec.seq,
            extras: MaybeExtras::new(Extras {
                backoff: *backoff,
                expires_at: *expires_at,
                unique: unique.clone().map(Box::new),
                limits: limits.clone().map(Box::new),
                depends_on: depends_on.clone(),
                on_dependency_failure: *on_dependency_failure,
                ..Extras::default()
            }),
        });
    };
    if rec.seq <= current.last_event_seq {
        return Err(reject(
            ev,
            job,
            "its sequence is not after the job's last event",
        ));
    }
    let mut j = current.clone();
    let lease_matches = |lease_id: u64| j.lease.as_ref().is_some_and(|l| l.lease_id == lease_id);
    let worker = j.lease.as_ref().map(|l| l.worker_id.clone());
    match ev {
        JobEvent::Enqueued { .. } => return Err(reject(ev, job, "the job already exists")),
        JobEvent::Leased {
            worker_id,
            expires_at,
            lease_seconds,
        } => {
            if j.status_at(at) != Status::Pending || j.cancel_requested {
                return Err(reject(ev, job, "only a ready job can be leased"));
            }
            j.status = Status::Leased;
            j.attempts += 1;
            if j.extras().progress.is_some() {
                j.extras_mut().progress = None;
            }
            j.lease = Some(Box::new(Lease {
                worker_id: worker_id.clone(),
                lease_id: rec.seq,
                expires_at: *expires_at,
                leased_at: at,
                lease_seconds: *lease_seconds,
            }));
        }
        JobEvent::Heartbeat {
            lease_id,
            expires_at,
            progress,
        } => {
            if j.status != Status::Leased || !lease_matches(*lease_id) {
                return Err(reject(ev, job, "the lease is not the job's current lease"));
            }
            if let Some(l) = j.lease.as_mut() {
                l.expires_at = *expires_at;
            }
            if progress.is_some() {
                j.extras_mut().progress = progress.as_ref().map(Json::from);
            }
        }
        JobEvent::Completed { lease_id, result } => {
            if j.status != Status::Leased || !lease_matches(*lease_id) || j.cancel_requested {
                return Err(reject(ev, job, "the lease is not the job's current lease"));
            }
            j.status = Status::Completed;
            let x = j.extras_mut();
            x.result = result.as_ref().map(Json::from);
            x.completed_at = Some(at);
            j.lease = None;
        }
        JobEvent::Failed {
            lease_id,
            error,
            next_run_at,
        } => {
            if j.status != Status::Leased || !lease_matches(*lease_id) {
                return Err(reject(ev, job, "the lease is not the job's current lease"));
            }
            if j.attempts >= j.max_attempts {
                return Err(reject(
                    ev,
                    job,
                    "no attempts are left: the job must dead-letter",
                ));
            }
            record_error(&mut j, at, worker, &error.message, error.code.as_deref());
            j.status = Status::Scheduled;
            j.run_at = *next_run_at;
            j.lease = None;
        }
        JobEvent::LeaseExpired {
            lease_id,
            next_run_at,
        } => {
            if j.status != Status::Leased || !lease_matches(*lease_id) {
                return Err(reject(ev, job, "the lease is not the job's current lease"));
            }
            if j.attempts >= j.max_attempts {
                return Err(reject(
                    ev,
                    job,
                    "no attempts are left: the job must dead-letter",
                ));
            }
            record_error(&mut j, at, worker, "lease expired", Some("LEASE_EXPIRED"));
            j.status = Status::Scheduled;
            j.run_at = *next_run_at;
            j.lease = None;
        }
        JobEvent::DeadLettered { lease_id, error } => {
            let ok = match lease_id {
                Some(id) => j.status == Status::Leased && lease_matches(*id),
                None => matches!(j.status, Status::Scheduled | Status::Pending),
            };
            if !ok {
                return Err(reject(
                    ev,
                    job,
                    "only a leased or waiting job can dead-letter",
                ));
            }
            record_error(&mut j, at, worker, &error.message, error.code.as_deref());
            j.status = Status::DeadLettered;
            j.lease = None;
            j.extras_mut().dead_lettered_at = Some(at);
        }
        JobEvent::CancelRequested { .. } => {
            if j.status != Status::Leased || j.cancel_requested {
                return Err(reject(
                    ev,
                    job,
                    "only a leased job can have a cancel requested",
                ));
            }
            j.cancel_requested = true;
        }
        JobEvent::Cancelled { error, .. } => {
            if !matches!(
                j.status,
                Status::Scheduled | Status::Pending | Status::Leased
            ) {
                return Err(reject(ev, job, "a finished job cannot be cancelled"));
            }
            if let Some(e) = error {
                record_error(&mut j, at, worker, &e.message, e.code.as_deref());
            }
            j.status = Status::Cancelled;
            j.lease = None;
        }
        JobEvent::Updated {
            priority,
            run_at,
            payload,
            max_attempts,
            queue,
        } => {
            if !matches!(j.status, Status::Scheduled | Status::Pending) {
                return Err(reject(ev, job, "only a waiting job can be updated"));
            }
            if let Some(p) = priority {
                j.priority = *p;
            }
            if let Some(r) = run_at {
                j.run_at = *r;
            }
            if let Some(p) = payload {
                j.payload = p.into();
                j.payload_seq = rec.seq;
            }
            if let Some(m) = max_attempts {
                j.max_attempts = *m;
            }
            if let Some(q) = queue {
                j.queue = Name::new(q);
            }
            j.status = if j.run_at <= at {
                Status::Pending
            } else {
                Status::Scheduled
            };
        }
        JobEvent::Expired { expires_at } => {
            if !matches!(j.status, Status::Scheduled | Status::Pending) || *expires_at > at {
                return Err(reject(
                    ev,
                    job,
                    "only a waiting job past its expiry can expire",
                ));
            }
            j.status = Status::Expired;
            j.cancel_requested = false;
        }
        JobEvent::Requeued { .. } => {
            if !matches!(
                j.status,
                Status::DeadLettered | Status::Cancelled | Status::Completed | Status::Expired
            ) {
                return Err(reject(ev, job, "only a finished job can be requeued"));
            }
            j.status = Status::Pending;
            j.attempts = 0;
            j.run_at = at;
            j.lease = None;
            j.cancel_requested = false;
            let x = j.extras_mut();
            x.progress = None;
            x.result = None;
            x.dead_lettered_at = None;
            x.completed_at = None;
            // Retried by a person: it runs whenever a worker takes it.
            x.expires_at = None;
        }
        JobEvent::Purged {} => {
            if !j.status.is_terminal() {
                return Err(reject(ev, job, "only a finished job can be purged"));
            }
        }
    }
    j.version = j.version.saturating_add(1);
    j.last_event_seq = rec.seq;
    j.last_event_hash = Some(env.digest());
    j.updated_at = at;
    j.shed_extras();
    Ok(j)
}

fn record_error(
    j: &mut Job,
    at: chrono::DateTime<chrono::Utc>,
    worker_id: Option<String>,
    message: &str,
    code: Option<&str>,
) {
    let e = JobError {
        attempt: j.attempts,
        at,
        worker_id,
        message: message.to_string(),
        code: code.map(str::to_string),
    };
    let x = j.extras_mut();
    x.last_error = Some(Box::new(e.clone()));
    x.errors.push(e);
}
