//! The engine: the write model behind its lock, and the operations that decide against it and
//! append. Every append is conditional on the job's last sequence; on a conflict the engine
//! waits until the follower has seen the job's latest event and decides again — it never
//! overwrites. Appended events are folded in at once (the follower then skips them), so a
//! worker's next call sees its own lease even before the stream echoes it back.

use std::collections::HashMap;
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
use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntGauge, IntGaugeVec, Opts};
use tokio::sync::{watch, Notify};
use uuid::Uuid;

use crate::model::WriteModel;
use crate::payloads;
use crate::store::{AppendError, EventStore};

/// How many times a command is re-decided after losing a race before answering 409.
const MAX_RETRIES: usize = 5;

#[derive(Clone)]
pub struct EngineMetrics {
    pub ready_depth: IntGaugeVec,
    pub leases_waiting: IntGauge,
    pub lease_wait: HistogramVec,
    pub lease_expiries: IntCounter,
    pub snapshot_position: IntGauge,
    pub snapshot_written_position: IntGauge,
    pub payload_memory: IntGauge,
    pub payload_reads: IntCounter,
    pub refused: IntCounter,
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
            leases_waiting: IntGauge::new(
                "jobs_leases_waiting",
                "Long-polling leases waiting for a job in this instance.",
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
            snapshot_position: IntGauge::new(
                "jobs_snapshot_restored_position",
                "Stream sequence of the write-model snapshot this instance started from (0: it \
                 replayed the whole stream).",
            )
            .expect("valid"),
            snapshot_written_position: IntGauge::new(
                "jobs_snapshot_written_position",
                "Stream sequence of the last periodic write-model snapshot this instance wrote \
                 (0: none yet).",
            )
            .expect("valid"),
            payload_memory: IntGauge::new(
                "jobs_payload_memory_bytes",
                "Bytes counted for the waiting jobs' payloads this instance keeps in memory \
                 (JOBS_PAYLOAD_MEMORY_BYTES bounds it).",
            )
            .expect("valid"),
            payload_reads: IntCounter::new(
                "jobs_payload_reads_total",
                "Payloads read back from the stream for jobs whose payload was out of memory.",
            )
            .expect("valid"),
            refused: IntCounter::new(
                "jobs_write_model_refused_events_total",
                "Events in the stream the write model could not fold (its copy of the job \
                 differs from the stream's): each is a bug or a corrupt stream, logged as \
                 \"the write model refused an event\". Alert on any.",
            )
            .expect("valid"),
        };
        m.register(&s.ready_depth);
        m.register(&s.leases_waiting);
        m.register(&s.lease_wait);
        m.register(&s.lease_expiries);
        m.register(&s.snapshot_position);
        m.register(&s.snapshot_written_position);
        m.register(&s.payload_memory);
        m.register(&s.payload_reads);
        m.register(&s.refused);
        s
    }
}

pub struct Engine {
    model: Mutex<WriteModel>,
    /// Long-polling leases waiting for a job: each job made ready wakes one.
    pub waiters: crate::waiters::Waiters,
    /// Fired when a timer may have moved earlier.
    pub timers: Notify,
    /// The stream sequence the model reflects (advanced by the follower).
    pub position: watch::Sender<u64>,
    /// True once the follower has caught up with the stream at start.
    pub caught_up: AtomicBool,
    pub store: EventStore,
    pub js: jetstream::Context,
    pub metrics: EngineMetrics,
    pub plans: common::plans::Plans,
    /// A lease of several jobs appends their `JobLeased` events as one atomic batch (true) or
    /// as single appends sent together (false): see `JOBS_ATOMIC_LEASES`.
    pub atomic_leases: bool,
    pub rate: crate::limits::RateLimiter,
    /// Every schedule, with its last firing (folded by the follower).
    pub schedules: crate::scheduler::ScheduleTable,
    /// New jobs this instance is appending: their tokens are taken already, so the follower
    /// must not count them again as another instance's when the stream delivers their
    /// `JobEnqueued` before the append's acknowledgement arrives.
    own_enqueues: Mutex<std::collections::HashSet<Uuid>>,
}

/// Marks jobs as this instance's own enqueues while they are appended (`Engine::own`).
pub struct OwnEnqueues<'a> {
    engine: &'a Engine,
    ids: Vec<Uuid>,
}

impl Drop for OwnEnqueues<'_> {
    fn drop(&mut self) {
        let mut own = self
            .engine
            .own_enqueues
            .lock()
            .expect("the own-enqueues lock is never poisoned");
        for id in &self.ids {
            own.remove(id);
        }
    }
}

impl Engine {
    pub fn new(
        store: EventStore,
        js: jetstream::Context,
        metrics: EngineMetrics,
        plans: common::plans::Plans,
        atomic_leases: bool,
    ) -> Arc<Self> {
        Arc::new(Self {
            model: Mutex::new(WriteModel::default()),
            waiters: crate::waiters::Waiters::with_gauge(metrics.leases_waiting.clone()),
            timers: Notify::new(),
            position: watch::channel(0).0,
            caught_up: AtomicBool::new(false),
            store,
            js,
            metrics,
            plans,
            atomic_leases,
            rate: Default::default(),
            schedules: Default::default(),
            own_enqueues: Default::default(),
        })
    }

    /// Marks `ids` as new jobs this instance is appending, until the guard is dropped (after
    /// the append and the fold of its result).
    pub fn own(&self, ids: impl IntoIterator<Item = Uuid>) -> OwnEnqueues<'_> {
        let ids: Vec<Uuid> = ids.into_iter().collect();
        self.own_enqueues
            .lock()
            .expect("the own-enqueues lock is never poisoned")
            .extend(ids.iter().copied());
        OwnEnqueues { engine: self, ids }
    }

    /// Whether `id` is a new job this instance is appending right now.
    pub fn is_own_enqueue(&self, id: &Uuid) -> bool {
        self.own_enqueues
            .lock()
            .expect("the own-enqueues lock is never poisoned")
            .contains(id)
    }

    pub fn model(&self) -> MutexGuard<'_, WriteModel> {
        self.model
            .lock()
            .expect("the write model lock is never poisoned")
    }

    /// Changes the model with `f`, then wakes one waiting lease for each job it made ready.
    pub fn update<R>(&self, f: impl FnOnce(&mut WriteModel) -> R) -> R {
        let (r, woken) = {
            let mut m = self.model();
            let r = f(&mut m);
            (r, m.take_woken())
        };
        if !woken.is_empty() {
            self.waiters.wake(woken);
        }
        r
    }

    /// Replaces the model with one restored from a snapshot at `position` (before the
    /// follower starts: it then follows from there).
    pub fn install(&self, model: WriteModel, position: u64) {
        *self.model() = model;
        self.position.send_replace(position);
    }

    pub fn is_caught_up(&self) -> bool {
        self.caught_up.load(Ordering::Relaxed)
    }

    /// Folds an event in (from the follower, or a new job from this instance).
    pub fn fold(&self, rec: &Recorded) -> Option<crate::model::Folded> {
        use crate::model::Folded;
        match self.update(|m| m.fold(rec, common::now())) {
            Ok(f) => {
                if matches!(f, Folded::Applied { .. }) {
                    self.timers.notify_one();
                }
                Some(f)
            }
            Err(e) => {
                self.metrics.refused.inc();
                tracing::error!(seq = rec.seq, error = %e, "the write model refused an event");
                None
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
            event_id: crate::ids::event_id(job.id, job.last_event_seq),
            schema_version: SCHEMA_VERSION,
            tenant_id: job.tenant_id,
            job_id: job.id,
            at,
            actor: actor.clone(),
            prev_hash: job.last_event_hash.map(|h| h.to_string()),
            event,
        }
    }

    /// Appends `events` for `job` one after the other, each conditional on the previous, and
    /// takes the result into the model at once. Returns the job's new state.
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
            let purge = matches!(event, JobEvent::Purged {});
            let env = Self::envelope(&current, event, actor, at);
            let seq = self
                .store
                .append(&env, &traceparent, current.last_event_seq)
                .await?;
            let rec = Recorded { seq, envelope: env };
            current = events::apply(Some(&current), &rec)
                .map_err(|e| AppendError::Other(e.to_string()))?;
            if purge {
                self.model().forget(&job.id);
            } else {
                self.absorb(current.clone());
            }
        }
        Ok(current)
    }

    /// Leases a job with a concurrency key: its `JobLeased` and a `ConcurrencySlotTaken` on the
    /// key's subject in one atomic batch, conditional on the key's last sequence as this model
    /// knows it — so another instance's lease of the same key since then makes this one a
    /// conflict (retried once the follower has caught up), and the limit holds across instances.
    async fn append_keyed_lease(
        &self,
        job: &Job,
        mut events: Vec<JobEvent>,
        actor: &Actor,
        at: DateTime<Utc>,
        limit: &events::ConcurrencyLimit,
    ) -> Result<Job, AppendError> {
        let key = &limit.concurrency_key;
        let (open, key_seq) = {
            let m = self.model();
            (
                m.key_open(job.tenant_id, limit, at),
                m.key_seq(job.tenant_id, key),
            )
        };
        if !open || events.len() != 1 {
            return Err(AppendError::Conflict);
        }
        let env = Self::envelope(job, events.remove(0), actor, at);
        let slot = events::platform::PlatformEnvelope::new(
            job.tenant_id,
            at,
            actor.clone(),
            events::platform::PlatformEvent::ConcurrencySlotTaken {
                tenant_id: job.tenant_id,
                concurrency_key: key.clone(),
                job_id: job.id,
            },
        );
        let traceparent = common::context::current().child_traceparent();
        let (seq, slot_seq) = self
            .store
            .append_with(&env, job.last_event_seq, &slot, key_seq, &traceparent)
            .await?;
        let current = events::apply(Some(job), &Recorded { seq, envelope: env })
            .map_err(|e| AppendError::Other(e.to_string()))?;
        self.absorb(current.clone());
        self.model().note_slot(job.tenant_id, key, slot_seq);
        Ok(current)
    }

    /// Appends the `JobLeased` of several jobs, each conditional on its job's last sequence;
    /// returns the jobs leased (a job another instance moved first is skipped).
    ///
    /// With `atomic_leases`, as one atomic batch: one write to the event store instead of one
    /// each, which saves fsyncs where the server syncs every write. If any job was moved the
    /// batch is refused whole, and the events then go out as without it. Without (and for a
    /// single job), as single appends sent together and answered each ([`Self::append_each`]):
    /// NATS stages every atomic batch in a store of
    /// its own on disk (files written with `O_SYNC`, directories fsynced), which costs more
    /// than it saves where the server does not sync every write.
    async fn append_leases(
        &self,
        batch: &[(Job, JobEvent)],
        actor: &Actor,
        at: DateTime<Utc>,
    ) -> Result<Vec<Job>, AppendError> {
        if batch.len() == 1 || !self.atomic_leases {
            return self.append_each(batch, actor, at).await;
        }
        let envs: Vec<Envelope> = batch
            .iter()
            .map(|(job, event)| Self::envelope(job, event.clone(), actor, at))
            .collect();
        let items: Vec<(&Envelope, u64)> = envs
            .iter()
            .zip(batch)
            .map(|(env, (job, _))| (env, job.last_event_seq))
            .collect();
        let traceparent = common::context::current().child_traceparent();
        match self.store.append_batch(&items, &traceparent).await {
            Ok(seqs) => {
                let mut jobs = Vec::with_capacity(batch.len());
                for ((env, (job, _)), seq) in envs.into_iter().zip(batch).zip(seqs) {
                    let current = events::apply(Some(job), &Recorded { seq, envelope: env })
                        .map_err(|e| AppendError::Other(e.to_string()))?;
                    self.absorb(current.clone());
                    jobs.push(current);
                }
                Ok(jobs)
            }
            Err(AppendError::Conflict) => self.append_each(batch, actor, at).await,
            Err(e) => Err(e),
        }
    }

    /// Appends each job's event on its own, all sent together and answered each; returns the
    /// jobs leased (one another instance moved first is skipped), or the error when none was.
    async fn append_each(
        &self,
        batch: &[(Job, JobEvent)],
        actor: &Actor,
        at: DateTime<Utc>,
    ) -> Result<Vec<Job>, AppendError> {
        let appended = futures::future::join_all(
            batch
                .iter()
                .map(|(job, event)| self.append(job, vec![event.clone()], actor, at)),
        )
        .await;
        let mut jobs = Vec::with_capacity(batch.len());
        let mut failure = None;
        for a in appended {
            match a {
                Ok(j) => jobs.push(j),
                Err(AppendError::Conflict) => {}
                Err(e) => failure = Some(e),
            }
        }
        match failure {
            Some(e) if jobs.is_empty() => Err(e),
            _ => Ok(jobs),
        }
    }

    /// Takes new jobs this instance has just appended into the model (a worker long-polling
    /// here is woken at once), from the jobs the route folded for its answer: as the fold of
    /// their `JobEnqueued` events, without applying each event (and computing its digest) a
    /// second time. One lock for the whole batch.
    pub fn enqueued(&self, tier: &str, jobs: impl IntoIterator<Item = Job>) {
        self.update(|m| {
            let now = common::now();
            for job in jobs {
                m.enqueued(job, tier, now);
            }
        });
        self.timers.notify_one();
    }

    /// Takes a job's state into the model unless it already holds a later one.
    pub fn absorb(&self, job: Job) {
        self.update(|m| m.offer(job, common::now()));
        self.timers.notify_one();
    }

    /// A job's state folded from its whole history in the stream; None when it has no events
    /// or was purged.
    pub async fn load(&self, tenant: Uuid, job_id: Uuid) -> Result<Option<Job>, ApiError> {
        use futures::StreamExt;
        let unavailable =
            |e: &dyn std::fmt::Display| ApiError::Unavailable(format!("event store: {e}"));
        let stream = self
            .js
            .get_stream(STREAM_NAME)
            .await
            .map_err(|e| unavailable(&e))?;
        let mut consumer = stream
            .create_consumer(jetstream::consumer::pull::OrderedConfig {
                filter_subject: job_subject(tenant, job_id),
                ..Default::default()
            })
            .await
            .map_err(|e| unavailable(&e))?;
        if consumer
            .info()
            .await
            .map_err(|e| unavailable(&e))?
            .num_pending
            == 0
        {
            return Ok(None);
        }
        let mut messages = consumer.messages().await.map_err(|e| unavailable(&e))?;
        let mut job: Option<Job> = None;
        loop {
            let next = tokio::time::timeout(Duration::from_secs(5), messages.next())
                .await
                .map_err(|_| {
                    ApiError::Unavailable("event store: reading a job's history timed out".into())
                })?;
            let Some(msg) = next else { break };
            let msg = msg.map_err(|e| unavailable(&e))?;
            let info = msg.info().map_err(|e| unavailable(&e))?;
            let (seq, pending) = (info.stream_sequence, info.pending);
            let envelope =
                Envelope::from_json(&msg.payload).map_err(|e| ApiError::Internal(e.into()))?;
            if matches!(envelope.event, JobEvent::Purged {}) {
                return Ok(None);
            }
            job = Some(
                events::apply(job.as_ref(), &Recorded { seq, envelope })
                    .map_err(|e| ApiError::Internal(anyhow::anyhow!("job {job_id}: {e}")))?,
            );
            if pending == 0 {
                break;
            }
        }
        Ok(job)
    }

    /// Puts back the payloads the model keeps out of memory (`crate::payloads`), each read
    /// from the event that set it, all at once. Every job the engine hands out goes through
    /// this first.
    pub async fn with_payloads(&self, jobs: &mut [Job]) -> Result<(), ApiError> {
        let missing: Vec<usize> = (0..jobs.len())
            .filter(|&i| payloads::is_dropped(&jobs[i].payload))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let stream = self
            .js
            .get_stream_no_info(STREAM_NAME)
            .await
            .map_err(|e| ApiError::Unavailable(format!("event store: {e}")))?;
        let reads = missing.iter().map(|&i| {
            let (tenant, id, seq) = (jobs[i].tenant_id, jobs[i].id, jobs[i].payload_seq);
            let stream = &stream;
            async move { read_payload(stream, tenant, id, seq).await }
        });
        let found = futures::future::try_join_all(reads).await?;
        self.metrics.payload_reads.inc_by(found.len() as u64);
        let mut model = self.model();
        for (i, payload) in missing.into_iter().zip(found) {
            model.give_back_payload(&jobs[i].id, jobs[i].payload_seq, &payload);
            jobs[i].payload = payload;
        }
        Ok(())
    }

    /// The job as this instance knows it, scoped to `tenant` when given (another tenant's job
    /// is absent), loaded from the stream when the model does not hold it (a finished job).
    pub async fn current(
        &self,
        tenant: Option<Uuid>,
        job_id: Uuid,
    ) -> Result<Option<Job>, ApiError> {
        let mut job = self.current_state(tenant, job_id).await?;
        if let Some(j) = &mut job {
            self.with_payloads(std::slice::from_mut(j)).await?;
        }
        Ok(job)
    }

    /// As [`Self::current`], but a payload out of memory stays out (the marker): for a look
    /// at the job's state that answers nobody with the job.
    pub async fn current_state(
        &self,
        tenant: Option<Uuid>,
        job_id: Uuid,
    ) -> Result<Option<Job>, ApiError> {
        let held = self.model().job(&job_id).cloned();
        match (held, tenant) {
            (Some(j), Some(t)) if j.tenant_id != t => Ok(None),
            (Some(j), _) => Ok(Some(j)),
            (None, Some(t)) => self.load(t, job_id).await,
            (None, None) => Ok(None),
        }
    }

    /// Runs a command against a job: decide, append, and on a lost race catch up and decide
    /// again. `if_match` is the version the caller expects (412 when the job moved on).
    pub async fn act(
        &self,
        tenant: Option<Uuid>,
        job_id: Uuid,
        cmd: &Command,
        actor: &Actor,
        if_match: Option<u64>,
    ) -> Result<Job, ApiError> {
        let mut job = self
            .decide_and_append(tenant, job_id, cmd, actor, if_match)
            .await?;
        self.with_payloads(std::slice::from_mut(&mut job)).await?;
        Ok(job)
    }

    /// As [`Self::act`], for a command the engine runs itself (an expiry, a cancel for a
    /// failed dependency): nobody reads the job it answers with, so a payload out of memory
    /// stays out (the returned job may hold the marker).
    pub async fn act_unanswered(
        &self,
        job_id: Uuid,
        cmd: &Command,
        actor: &Actor,
    ) -> Result<Job, ApiError> {
        self.decide_and_append(None, job_id, cmd, actor, None).await
    }

    /// Decides on the job's state (its payload, which no decision reads, may be out of memory)
    /// and appends.
    async fn decide_and_append(
        &self,
        tenant: Option<Uuid>,
        job_id: Uuid,
        cmd: &Command,
        actor: &Actor,
        if_match: Option<u64>,
    ) -> Result<Job, ApiError> {
        let mut caught_up = false;
        for _ in 0..MAX_RETRIES {
            let now = common::now();
            let current = self.current_state(tenant, job_id).await?;
            let stale = match (&current, if_match) {
                (Some(j), Some(v)) => u64::from(j.version) != v,
                _ => false,
            };
            let decision = match &current {
                _ if stale => Err(Rejection::InvalidState(events::Status::Pending)),
                Some(job) => decide(Some(job), cmd, now).map(|e| (job.clone(), e)),
                None if tenant.is_some() => Err(Rejection::NotFound),
                None => Err(Rejection::LeaseLost),
            };
            let (job, events) = match decision {
                Ok(d) => d,
                // This instance may not have seen the latest events yet (a lease taken through
                // another instance, a version the caller read elsewhere): catch up once.
                Err(_)
                    if (stale
                        || current.is_none()
                        || matches!(
                            cmd,
                            Command::Heartbeat { .. }
                                | Command::Complete { .. }
                                | Command::Fail { .. }
                        ))
                        && !caught_up =>
                {
                    caught_up = true;
                    match current.as_ref().map(|j| j.tenant_id).or(tenant) {
                        Some(t) => self.catch_up(t, job_id).await?,
                        None => {
                            let end = self.stream_end().await?;
                            self.wait_for(end).await;
                        }
                    }
                    continue;
                }
                Err(_) if stale => {
                    return Err(ApiError::PreconditionFailed(
                        current.map_or(0, |j| u64::from(j.version)),
                    ));
                }
                Err(r) => return Err(r.into()),
            };
            if events.is_empty() {
                return Ok(job);
            }
            let expiry = matches!(cmd, Command::ExpireLease { .. });
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

    /// Waits until the model reflects everything in the stream as of now.
    pub async fn catch_up_all(&self) -> Result<(), ApiError> {
        let end = self.stream_end().await?;
        if !self.wait_for(end).await {
            return Err(ApiError::Unavailable(
                "the write model is behind the event store".into(),
            ));
        }
        Ok(())
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
        if self.model().draining.contains(worker_id) {
            // A draining worker gets empty leases (after its wait, so it does not spin).
            tokio::time::sleep_until(deadline).await;
            return Ok(Vec::new());
        }
        loop {
            // Registered before looking: a job made ready after the look wakes this lease.
            let waiting = self.waiters.register(types, queues);
            // Whatever this attempt takes from the index goes back if it is not leased — even
            // when the request is dropped mid-way (the client went away).
            let mut taken = Taken {
                engine: self,
                ids: Vec::new(),
            };
            let mut leased = Vec::new();
            let mut failure = None;
            // Jobs without a concurrency key are leased together: one atomic batch of their
            // `JobLeased` events, each conditional on its job's last sequence.
            let mut batch: Vec<(Job, JobEvent)> = Vec::new();
            let mut pending: HashMap<Uuid, u64> = HashMap::new();
            let now = common::now();
            while leased.len() + batch.len() < max_jobs {
                let plans = &self.plans;
                let limit = |m: &WriteModel, t: Uuid| {
                    plans
                        .effective(m.tiers.get(&t).map(String::as_str), m.overrides.get(&t))
                        .max_concurrent_leases
                };
                let Some(job) = self.model().take_at(types, queues, limit, &pending, now) else {
                    break;
                };
                taken.ids.push(job.id);
                let Ok(mut events) = decide(Some(&job), &cmd, now) else {
                    continue;
                };
                if let Some(limit) = &job.extras().limits {
                    match self
                        .append_keyed_lease(&job, events, &actor, now, limit)
                        .await
                    {
                        Ok(j) => {
                            taken.ids.retain(|id| *id != j.id);
                            leased.push(j);
                        }
                        Err(AppendError::Conflict) => {}
                        Err(e) => {
                            failure = Some(e);
                            break;
                        }
                    }
                    continue;
                }
                if events.len() == 1 {
                    *pending.entry(job.tenant_id).or_default() += 1;
                    batch.push((job, events.remove(0)));
                }
            }
            if failure.is_none() && !batch.is_empty() {
                match self.append_leases(&batch, &actor, now).await {
                    Ok(jobs) => {
                        for j in jobs {
                            taken.ids.retain(|id| *id != j.id);
                            leased.push(j);
                        }
                    }
                    // Another instance moved the job first; the follower places it anew.
                    Err(AppendError::Conflict) => {}
                    Err(e) => failure = Some(e),
                }
            }
            for j in &leased {
                let waited = (now - j.run_at).num_milliseconds().max(0) as f64 / 1000.0;
                self.metrics
                    .lease_wait
                    .with_label_values(&[&j.job_type])
                    .observe(waited);
            }
            drop(taken);
            if let Some(e) = failure {
                if leased.is_empty() {
                    return Err(e.into());
                }
            }
            // Leased already: should the stream not answer, the leases run out and the jobs
            // are offered again.
            self.with_payloads(&mut leased).await?;
            if !leased.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(leased);
            }
            // A key held back by its rate opens at a known instant: look again then.
            let wake = self
                .model()
                .rate_opens_at
                .take()
                .and_then(|at| (at - common::now()).to_std().ok())
                .map(|d| (tokio::time::Instant::now() + d).min(deadline))
                .unwrap_or(deadline);
            if tokio::time::timeout_at(wake, waiting.woken())
                .await
                .is_err()
                && tokio::time::Instant::now() >= deadline
            {
                return Ok(leased);
            }
        }
    }

    /// Refreshes the ready-depth and payload-memory gauges.
    pub fn observe(&self) {
        let (depth, kept) = {
            let m = self.model();
            (m.ready_depth(), m.kept_payload_bytes())
        };
        self.metrics.payload_memory.set(kept as i64);
        self.metrics.ready_depth.reset();
        for (t, n) in depth {
            self.metrics
                .ready_depth
                .with_label_values(&[&t])
                .set(n as i64);
        }
    }
}

/// The payload a job's event at `seq` set (its `JobEnqueued`, or a `JobUpdated` with one).
async fn read_payload<I>(
    stream: &jetstream::stream::Stream<I>,
    tenant: Uuid,
    id: Uuid,
    seq: u64,
) -> Result<events::Json, ApiError> {
    let msg = stream
        .direct_get(seq)
        .await
        .map_err(|e| ApiError::Unavailable(format!("event store: reading event {seq}: {e}")))?;
    let internal =
        |what: String| ApiError::Internal(anyhow::anyhow!("job {id}: event {seq} {what}"));
    if msg.subject.as_str() != job_subject(tenant, id) {
        return Err(internal(format!("is on {}", msg.subject)));
    }
    let env =
        Envelope::from_json(&msg.payload).map_err(|e| internal(format!("does not decode: {e}")))?;
    match env.event {
        JobEvent::Enqueued { payload, .. }
        | JobEvent::Updated {
            payload: Some(payload),
            ..
        } => Ok(payload.into()),
        other => Err(internal(format!(
            "is a {}, which sets no payload",
            other.type_name()
        ))),
    }
}

/// Jobs taken from the ready index by a lease in progress; put back on drop unless leased.
struct Taken<'a> {
    engine: &'a Engine,
    ids: Vec<Uuid>,
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        if self.ids.is_empty() {
            return;
        }
        let now = common::now();
        self.engine.update(|m| {
            for id in &self.ids {
                m.release(id, now);
            }
        });
        self.engine.timers.notify_one();
    }
}
