//! The engine: the write model behind its lock, and the operations that decide against it and
//! append. Every append is conditional on the job's last sequence; on a conflict the engine
//! waits until the follower has seen the job's latest event and decides again — it never
//! overwrites. Appended events are folded in at once (the follower then skips them), so a
//! worker's next call sees its own lease even before the stream echoes it back.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_nats::jetstream;
use chrono::{DateTime, Utc};
use common::ApiError;
use events::stream::{job_subject, STREAM_NAME};
use events::{
    decide, Actor, Command, Envelope, Job, JobEvent, Recorded, Rejection, SCHEMA_VERSION,
};
use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntGaugeVec, Opts};
use tokio::sync::{watch, Notify};
use uuid::Uuid;

use crate::model::WriteModel;
use crate::store::{AppendError, EventStore};

/// How many times a command is re-decided after losing a race before answering 409.
const MAX_RETRIES: usize = 5;

#[derive(Clone)]
pub struct EngineMetrics {
    pub ready_depth: IntGaugeVec,
    pub lease_wait: HistogramVec,
    pub lease_expiries: IntCounter,
}

impl EngineMetrics {
    pub fn new(m: &common::metrics::Metrics) -> Self {
        let s = Self {
            ready_depth: IntGaugeVec::new(
                Opts::new(
                    "jobs_ready_jobs",
                    "Jobs ready to lease in this instance's index, by job type.",
                ),
                &["job_type"],
            )
            .expect("valid"),
            lease_wait: HistogramVec::new(
                HistogramOpts::new(
                    "jobs_lease_wait_seconds",
                    "Time from a job's run_at to its lease, by job type.",
                )
                .buckets(vec![
                    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0,
                ]),
                &["job_type"],
            )
            .expect("valid"),
            lease_expiries: IntCounter::new("jobs_lease_expiries_total", "Leases that ran out.")
                .expect("valid"),
        };
        m.register(&s.ready_depth);
        m.register(&s.lease_wait);
        m.register(&s.lease_expiries);
        s
    }
}

pub struct Engine {
    model: Mutex<WriteModel>,
    /// Fired when jobs become ready: long-polling leases wait on it.
    pub ready: Notify,
    /// Fired when a timer may have moved earlier.
    pub timers: Notify,
    /// The stream sequence the model reflects (advanced by the follower).
    pub position: watch::Sender<u64>,
    /// True once the follower has caught up with the stream at start.
    pub caught_up: AtomicBool,
    pub store: EventStore,
    pub js: jetstream::Context,
    pub metrics: EngineMetrics,
}

impl Engine {
    pub fn new(store: EventStore, js: jetstream::Context, metrics: EngineMetrics) -> Arc<Self> {
        Arc::new(Self {
            model: Mutex::new(WriteModel::default()),
            ready: Notify::new(),
            timers: Notify::new(),
            position: watch::channel(0).0,
            caught_up: AtomicBool::new(false),
            store,
            js,
            metrics,
        })
    }

    pub fn model(&self) -> MutexGuard<'_, WriteModel> {
        self.model
            .lock()
            .expect("the write model lock is never poisoned")
    }

    pub fn is_caught_up(&self) -> bool {
        self.caught_up.load(Ordering::Relaxed)
    }

    /// Folds an event in (from the follower or after our own append).
    pub fn fold(&self, rec: &Recorded) {
        let folded = self.model().fold(rec, common::now());
        match folded {
            Ok(crate::model::Folded::Applied { ready }) => {
                if ready {
                    self.ready.notify_waiters();
                }
                self.timers.notify_one();
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(seq = rec.seq, error = %e, "the write model refused an event")
            }
        }
    }

    /// Waits until the follower has folded in everything up to `seq` (at most 5 s).
    pub async fn wait_for(&self, seq: u64) -> bool {
        let mut rx = self.position.subscribe();
        tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|p| *p >= seq))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Catches the model up with the job's latest event in the stream.
    async fn catch_up(&self, tenant: Uuid, job: Uuid) -> Result<(), ApiError> {
        let stream = self
            .js
            .get_stream(STREAM_NAME)
            .await
            .map_err(|e| ApiError::Unavailable(format!("event store: {e}")))?;
        match stream
            .get_last_raw_message_by_subject(&job_subject(tenant, job))
            .await
        {
            Ok(m) => {
                if !self.wait_for(m.sequence).await {
                    return Err(ApiError::Unavailable(
                        "the write model is behind the event store".into(),
                    ));
                }
                Ok(())
            }
            Err(_) => Ok(()),
        }
    }

    fn envelope(job: &Job, event: JobEvent, actor: &Actor, at: DateTime<Utc>) -> Envelope {
        Envelope {
            event_id: Uuid::now_v7(),
            schema_version: SCHEMA_VERSION,
            tenant_id: job.tenant_id,
            job_id: job.id,
            at,
            actor: actor.clone(),
            event,
        }
    }

    /// Appends `events` for `job` one after the other, each conditional on the previous, and
    /// folds them in. Returns the job's new state.
    async fn append(
        &self,
        job: &Job,
        events: Vec<JobEvent>,
        actor: &Actor,
        at: DateTime<Utc>,
    ) -> Result<Job, AppendError> {
        let traceparent = common::context::current().child_traceparent();
        let mut current = job.clone();
        for event in events {
            let env = Self::envelope(job, event, actor, at);
            let seq = self
                .store
                .append(&env, &traceparent, current.last_event_seq)
                .await?;
            let rec = Recorded { seq, envelope: env };
            current = events::apply(Some(&current), &rec)
                .map_err(|e| AppendError::Other(e.to_string()))?;
            self.fold(&rec);
        }
        Ok(current)
    }

    /// Runs a command against a live job: decide, append, and on a lost race catch up and
    /// decide again. A job this instance does not hold is looked up once in the stream first
    /// (another instance may have just leased it).
    pub async fn act(
        &self,
        tenant: Option<Uuid>,
        job_id: Uuid,
        cmd: &Command,
        actor: &Actor,
    ) -> Result<Job, ApiError> {
        let mut caught_up = false;
        for _ in 0..MAX_RETRIES {
            let now = common::now();
            let current = self.model().job(&job_id).cloned();
            let decision = match &current {
                Some(job) => decide(Some(job), cmd, now).map(|e| (job.clone(), e)),
                None => Err(Rejection::LeaseLost),
            };
            let (job, events) = match decision {
                Ok(d) => d,
                Err(Rejection::LeaseLost | Rejection::NotFound) if !caught_up => {
                    caught_up = true;
                    let tenant = current.as_ref().map(|j| j.tenant_id).or(tenant);
                    match tenant {
                        Some(t) => self.catch_up(t, job_id).await?,
                        None => {
                            // A worker does not know the job's tenant: give the follower a
                            // moment to catch up with the stream's end instead.
                            let end = self.stream_end().await?;
                            self.wait_for(end).await;
                        }
                    }
                    continue;
                }
                Err(r) => return Err(r.into()),
            };
            if events.is_empty() {
                return Ok(job);
            }
            let expiry = matches!(
                events.first(),
                Some(JobEvent::LeaseExpired { .. } | JobEvent::DeadLettered { .. })
            ) && matches!(cmd, Command::ExpireLease { .. });
            match self.append(&job, events, actor, now).await {
                Ok(job) => {
                    if expiry {
                        self.metrics.lease_expiries.inc();
                    }
                    return Ok(job);
                }
                Err(AppendError::Conflict) => {
                    caught_up = true;
                    self.catch_up(job.tenant_id, job.id).await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(ApiError::InvalidState("changing too fast; retry".into()))
    }

    async fn stream_end(&self) -> Result<u64, ApiError> {
        let mut stream = self
            .js
            .get_stream(STREAM_NAME)
            .await
            .map_err(|e| ApiError::Unavailable(format!("event store: {e}")))?;
        let info = stream
            .info()
            .await
            .map_err(|e| ApiError::Unavailable(format!("event store: {e}")))?;
        Ok(info.state.last_sequence)
    }

    /// Leases up to `max_jobs` ready jobs of `types` (and `queues`) to `worker_id`, waiting up
    /// to `wait` for one to become ready when none is.
    pub async fn lease(
        &self,
        worker_id: &str,
        types: &[String],
        queues: Option<&[String]>,
        max_jobs: usize,
        lease_seconds: u32,
        wait: Duration,
    ) -> Result<Vec<Job>, ApiError> {
        let deadline = tokio::time::Instant::now() + wait;
        let actor = Actor::worker(worker_id);
        let cmd = Command::Lease {
            worker_id: worker_id.to_string(),
            lease_seconds,
        };
        loop {
            let notified = self.ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let mut leased = Vec::new();
            let mut skipped = Vec::new();
            let mut failure = None;
            while leased.len() < max_jobs {
                let Some(job) = self.model().take(types, queues) else {
                    break;
                };
                let now = common::now();
                let events = match decide(Some(&job), &cmd, now) {
                    Ok(e) => e,
                    Err(_) => {
                        skipped.push(job.id);
                        continue;
                    }
                };
                match self.append(&job, events, &actor, now).await {
                    Ok(j) => {
                        let waited = (now - j.run_at).num_milliseconds().max(0) as f64 / 1000.0;
                        self.metrics
                            .lease_wait
                            .with_label_values(&[&j.job_type])
                            .observe(waited);
                        leased.push(j);
                    }
                    // Another instance moved the job first; the follower will place it anew.
                    Err(AppendError::Conflict) => {}
                    Err(e) => {
                        skipped.push(job.id);
                        failure = Some(e);
                        break;
                    }
                }
            }
            if !skipped.is_empty() {
                let now = common::now();
                let mut m = self.model();
                for id in &skipped {
                    m.release(id, now);
                }
            }
            if let Some(e) = failure {
                if leased.is_empty() {
                    return Err(e.into());
                }
            }
            if !leased.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(leased);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Ok(leased);
            }
        }
    }

    /// Refreshes the ready-depth gauge.
    pub fn observe(&self) {
        let depth = self.model().ready_depth();
        self.metrics.ready_depth.reset();
        for (t, n) in depth {
            self.metrics
                .ready_depth
                .with_label_values(&[&t])
                .set(n as i64);
        }
    }
}
