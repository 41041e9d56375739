//! Periodic jobs on the write side: the schedule table, folded from `jobs.schedules.>` by the
//! follower (with each schedule's last firing, seen on the job subjects), and the loop that
//! fires due slots.
//!
//! Invariant: a slot enqueues at most one job, whatever the number of instances and restarts —
//! its job id is derived from (tenant, schedule, slot) and its `JobEnqueued` is appended with
//! expected subject sequence 0, so of several instances firing the same slot one append wins
//! and the others see a conflict ("already fired"). And while any instance runs, each slot
//! fires: every instance tries every slot that comes while it watches. Slots that came while
//! none watched (or that could not be appended for [`GRACE`]) were missed: the schedule's
//! catch-up policy decides (`events::schedule::due`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use events::envelope::DecodeError;
use events::schedule::{
    apply_schedule, due, fire_job_id, fired_slot, format_fire_time, parse_schedule_subject,
    LastRun, Schedule, ScheduleEnvelope, ScheduleRecorded, META_FIRE_TIME, META_SCHEDULE_ID,
};
use events::{decide, Actor, Command, Envelope, Recorded, SCHEMA_VERSION};
use futures::StreamExt;
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts};
use serde_json::Value;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::engine::Engine;
use crate::store::AppendError;

/// A slot not fired within this long after its time counts as missed (an event store outage
/// while instances run): the catch-up policy decides, rather than a burst of late firings.
pub const GRACE: chrono::Duration = chrono::Duration::seconds(60);
/// How many schedules fire at once.
const CONCURRENCY: usize = 32;

#[derive(Clone)]
pub struct SchedulerMetrics {
    firings: IntCounterVec,
    missed: IntCounter,
    schedules: IntGauge,
}

impl Default for SchedulerMetrics {
    fn default() -> Self {
        Self {
            firings: IntCounterVec::new(
                Opts::new(
                    "jobs_schedule_firings_total",
                    "Slots this instance handled, by outcome: fired, already_fired (another \
                     instance won), refused_quota, refused_rate, refused_invalid.",
                ),
                &["outcome"],
            )
            .expect("valid metric"),
            missed: IntCounter::new(
                "jobs_schedule_missed_skipped_total",
                "Catch-ups that left missed slots unfired (policy skip or one, or the cap of all).",
            )
            .expect("valid metric"),
            schedules: IntGauge::new("jobs_schedules", "Schedules this instance knows of.")
                .expect("valid metric"),
        }
    }
}

struct Entry {
    schedule: Schedule,
    last_run: Option<LastRun>,
    /// Every slot at or before this is settled on this instance (fired, seen fired, refused or
    /// skipped).
    settled: Option<DateTime<Utc>>,
}

impl Entry {
    fn done_through(&self) -> Option<DateTime<Utc>> {
        let last = self.last_run.as_ref().map(|r| r.fire_time);
        match (last, self.settled) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }
}

#[derive(Default)]
struct Entries {
    live: HashMap<Uuid, Entry>,
    /// Deleted schedules and the sequence of their deletion: the follower's echo of a
    /// deletion this instance appended (and folded) is not an error.
    deleted: HashMap<Uuid, u64>,
}

/// What a snapshot keeps of the schedule table (`ScheduleTable::image`).
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ScheduleImage {
    live: Vec<(Schedule, Option<LastRun>)>,
    deleted: Vec<(Uuid, u64)>,
}

/// Every schedule, folded from the stream; one mutex, never held across an await.
#[derive(Default)]
pub struct ScheduleTable {
    entries: Mutex<Entries>,
    /// Fired when a schedule changes: the loop looks again at when to wake.
    pub changed: Notify,
    pub metrics: SchedulerMetrics,
}

impl ScheduleTable {
    fn lock(&self) -> MutexGuard<'_, Entries> {
        self.entries
            .lock()
            .expect("the schedule table lock is never poisoned")
    }

    pub fn register(&self, m: &common::metrics::Metrics) {
        m.register(&self.metrics.firings);
        m.register(&self.metrics.missed);
        m.register(&self.metrics.schedules);
    }

    /// The table for a snapshot: every schedule with its last firing, and the deletions.
    /// What this instance settled is left out: a restarted instance decides again what was
    /// missed, as after a full replay.
    pub fn image(&self) -> ScheduleImage {
        let entries = self.lock();
        ScheduleImage {
            live: entries
                .live
                .values()
                .map(|e| (e.schedule.clone(), e.last_run.clone()))
                .collect(),
            deleted: entries
                .deleted
                .iter()
                .map(|(id, seq)| (*id, *seq))
                .collect(),
        }
    }

    /// Replaces the table with a snapshot's.
    pub fn restore(&self, image: ScheduleImage) {
        let mut entries = self.lock();
        entries.live = image
            .live
            .into_iter()
            .map(|(schedule, last_run)| {
                let entry = Entry {
                    schedule,
                    last_run,
                    settled: None,
                };
                (entry.schedule.id, entry)
            })
            .collect();
        entries.deleted = image.deleted.into_iter().collect();
        self.metrics.schedules.set(entries.live.len() as i64);
        drop(entries);
        self.changed.notify_one();
    }

    /// Folds a schedule event in; one already reflected (appended here) is skipped.
    pub fn fold(&self, rec: &ScheduleRecorded) {
        let id = rec.envelope.event.schedule_id();
        {
            let mut entries = self.lock();
            let current = entries.live.get(&id);
            let seen = match current {
                Some(e) => e.schedule.last_seq >= rec.seq,
                None => entries.deleted.get(&id).is_some_and(|s| *s >= rec.seq),
            };
            if seen {
                return;
            }
            match apply_schedule(current.map(|e| &e.schedule), rec) {
                Ok(Some(schedule)) => {
                    let entry = entries.live.entry(id).or_insert_with(|| Entry {
                        schedule: schedule.clone(),
                        last_run: None,
                        settled: None,
                    });
                    entry.schedule = schedule;
                }
                Ok(None) => {
                    entries.live.remove(&id);
                    entries.deleted.insert(id, rec.seq);
                }
                Err(e) => {
                    tracing::error!(seq = rec.seq, schedule_id = %id, error = %e, "a schedule event does not fold; skipped");
                    return;
                }
            }
            self.metrics.schedules.set(entries.live.len() as i64);
        }
        self.changed.notify_one();
    }

    /// Notes a job event: a schedule's firing moves its last run.
    pub fn observe(&self, env: &Envelope) {
        let Some((schedule_id, fire_time)) = fired_slot(env) else {
            return;
        };
        let mut entries = self.lock();
        let Some(e) = entries.live.get_mut(&schedule_id) else {
            return;
        };
        if e.schedule.tenant_id != env.tenant_id {
            return;
        }
        if e.last_run.as_ref().is_none_or(|r| r.fire_time < fire_time) {
            e.last_run = Some(LastRun {
                fire_time,
                job_id: env.job_id,
                enqueued_at: env.at,
            });
        }
    }

    /// The tenant's schedule and its last firing (another tenant's is absent).
    pub fn get(&self, tenant: Uuid, id: Uuid) -> Option<(Schedule, Option<LastRun>)> {
        self.lock()
            .live
            .get(&id)
            .filter(|e| e.schedule.tenant_id == tenant)
            .map(|e| (e.schedule.clone(), e.last_run.clone()))
    }

    fn settle(&self, id: Uuid, upto: DateTime<Utc>) {
        if let Some(e) = self.lock().live.get_mut(&id) {
            e.settled = Some(e.settled.map_or(upto, |s| s.max(upto)));
        }
    }

    /// The slots due at `now`, per schedule.
    fn due(
        &self,
        now: DateTime<Utc>,
        missed_before: DateTime<Utc>,
    ) -> Vec<(Schedule, events::schedule::Due)> {
        let entries = self.lock();
        entries
            .live
            .values()
            .filter(|e| e.schedule.enabled)
            .filter_map(|e| {
                let Some(timing) = e.schedule.timing() else {
                    tracing::error!(schedule_id = %e.schedule.id, "the schedule's timing no longer parses; it does not fire");
                    return None;
                };
                let d = due(&e.schedule, &timing, e.done_through(), missed_before, now);
                (!d.fire.is_empty() || d.skipped_missed).then(|| (e.schedule.clone(), d))
            })
            .collect()
    }

    /// The earliest slot still to fire after what is settled.
    fn next_wake(&self) -> Option<DateTime<Utc>> {
        let entries = self.lock();
        entries
            .live
            .values()
            .filter(|e| e.schedule.enabled)
            .filter_map(|e| {
                let after = e.done_through().unwrap_or(e.schedule.counting_from);
                e.schedule.first_slot_after(&e.schedule.timing()?, after)
            })
            .min()
    }
}

/// Folds a message of the stream if it is a schedule's event (for the follower). An event of a
/// newer schema version stops the follower until this instance is upgraded.
pub fn fold_message(
    engine: &Engine,
    subject: &str,
    seq: u64,
    payload: &[u8],
) -> anyhow::Result<()> {
    let Some((tenant, _)) = parse_schedule_subject(subject) else {
        return Ok(());
    };
    match ScheduleEnvelope::from_json(payload) {
        Ok(envelope) if envelope.tenant_id == tenant && envelope.subject() == subject => {
            engine.schedules.fold(&ScheduleRecorded { seq, envelope });
        }
        Ok(_) => {
            tracing::error!(
                seq,
                subject,
                "schedule event names another tenant or schedule than its subject; skipped"
            )
        }
        Err(e @ DecodeError::TooNew(_)) => anyhow::bail!("seq {seq}: {e}"),
        Err(e) => tracing::error!(seq, subject, error = %e, "undecodable schedule event; skipped"),
    }
    Ok(())
}

/// What handling one slot came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Fired,
    AlreadyFired,
    Refused(&'static str),
    /// The event store did not take it: try again on the next pass.
    Retry,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Self::Fired => "fired",
            Self::AlreadyFired => "already_fired",
            Self::Refused(r) => r,
            Self::Retry => "retry",
        }
    }
}

/// Fires due slots until stopped. Nothing fires before the write model has caught up with the
/// stream (it must know every schedule's last firing first).
pub async fn run(engine: Arc<Engine>, stop: CancellationToken) {
    // Slots before this instance watched were missed unless some other instance fired them.
    let mut watching_since: Option<DateTime<Utc>> = None;
    loop {
        let changed = engine.schedules.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let now = common::now();
        let mut retry = false;
        if engine.is_caught_up() {
            let since = *watching_since.get_or_insert(now);
            retry = pass(&engine, now, since.max(now - GRACE)).await;
        }
        let sleep = match engine.schedules.next_wake() {
            _ if !engine.is_caught_up() => Duration::from_millis(100),
            _ if retry => Duration::from_secs(1),
            Some(at) => (at - common::now())
                .to_std()
                .unwrap_or(Duration::ZERO)
                .min(Duration::from_secs(5)),
            None => Duration::from_secs(5),
        };
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            _ = &mut changed => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// One pass: fires every schedule's due slots (schedules side by side, each one's slots in
/// order). Returns true when some slot must be tried again.
async fn pass(engine: &Engine, now: DateTime<Utc>, missed_before: DateTime<Utc>) -> bool {
    let work = engine.schedules.due(now, missed_before);
    let retry = std::sync::atomic::AtomicBool::new(false);
    futures::stream::iter(work)
        .for_each_concurrent(CONCURRENCY, |(schedule, due)| {
            let retry = &retry;
            async move {
                if due.skipped_missed {
                    engine.schedules.metrics.missed.inc();
                    tracing::info!(schedule_id = %schedule.id, policy = ?schedule.catch_up, "missed slots left unfired by the catch-up policy");
                }
                for slot in due.fire {
                    let outcome = fire(engine, &schedule, slot).await;
                    engine
                        .schedules
                        .metrics
                        .firings
                        .with_label_values(&[outcome.label()])
                        .inc();
                    if outcome == Outcome::Retry {
                        retry.store(true, std::sync::atomic::Ordering::Relaxed);
                        return;
                    }
                    engine.schedules.settle(schedule.id, slot);
                }
                engine.schedules.settle(schedule.id, now);
            }
        })
        .await;
    retry.into_inner()
}

/// Enqueues the job of `schedule` for `slot`, as a normal enqueue would (the template checked,
/// the tenant's limits applied), with the slot's derived job id and expected sequence 0.
#[tracing::instrument(skip_all, fields(schedule_id = %schedule.id, slot = %slot))]
async fn fire(engine: &Engine, schedule: &Schedule, slot: DateTime<Utc>) -> Outcome {
    let tenant = schedule.tenant_id;
    let now = common::now();
    let tier = engine
        .plans
        .tier(schedule.plan_tier.as_deref())
        .0
        .to_string();
    let overrides = engine.model().overrides.get(&tenant).cloned();
    let limits = engine.plans.effective(Some(&tier), overrides.as_ref());
    let mut spec = match schedule.template.0.clone().validate(slot, "template.") {
        Ok(spec) => spec,
        Err(errors) => {
            tracing::warn!(
                ?errors,
                "the schedule's template is refused; slot not fired"
            );
            return Outcome::Refused("refused_invalid");
        }
    };
    if let Value::Object(m) = &mut spec.metadata {
        m.insert(
            META_SCHEDULE_ID.into(),
            Value::String(schedule.id.to_string()),
        );
        m.insert(META_FIRE_TIME.into(), Value::String(format_fire_time(slot)));
    }
    spec.plan_tier = Some(tier);
    let size = serde_json::to_vec(&spec.payload).map_or(0, |b| b.len()) as u64;
    if size > limits.max_payload_bytes {
        tracing::warn!(
            size,
            "the template's payload is over the tenant's limit; slot not fired"
        );
        return Outcome::Refused("refused_invalid");
    }
    let active = engine.model().counts(&tenant).active;
    if active + 1 > limits.max_active_jobs {
        tracing::warn!(
            active,
            "the tenant's active-jobs quota is full; slot not fired"
        );
        return Outcome::Refused("refused_quota");
    }
    if engine
        .rate
        .take(tenant, 1, &limits, std::time::Instant::now())
        .is_err()
    {
        tracing::warn!("the tenant's enqueue rate is exceeded; slot not fired");
        return Outcome::Refused("refused_rate");
    }
    let event = match decide(None, &Command::Enqueue(spec), now) {
        Ok(mut events) if !events.is_empty() => events.remove(0),
        other => {
            tracing::warn!(?other, "the enqueue is refused; slot not fired");
            engine.rate.refund(tenant, 1);
            return Outcome::Refused("refused_invalid");
        }
    };
    let env = Envelope {
        // Random: a retried publish that was stored meets the taken subject (a conflict),
        // which means "fired" all the same.
        event_id: Uuid::now_v7(),
        schema_version: SCHEMA_VERSION,
        tenant_id: tenant,
        job_id: fire_job_id(tenant, schedule.id, slot),
        at: now,
        actor: Actor::system(format!("schedule:{}", schedule.id)),
        prev_hash: None,
        event,
    };
    let traceparent = common::context::current().child_traceparent();
    let _own = engine.own([env.job_id]);
    match engine.store.append(&env, &traceparent, 0).await {
        Ok(seq) => {
            engine.schedules.observe(&env);
            engine.fold(&Recorded { seq, envelope: env });
            Outcome::Fired
        }
        Err(AppendError::Conflict) => {
            engine.rate.refund(tenant, 1);
            Outcome::AlreadyFired
        }
        Err(e) => {
            engine.rate.refund(tenant, 1);
            tracing::warn!(error = %e, "firing a slot failed; will try again");
            Outcome::Retry
        }
    }
}
