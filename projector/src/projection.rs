//! Applying a batch of stream messages to the read model, in one transaction with the
//! checkpoint. Messages at or below the checkpoint are skipped, so redelivery is harmless.
//! An event `apply` refuses (or one filed under another tenant's subject) is logged and
//! counted, never allowed to stop the projection.

use std::collections::{HashMap, HashSet};

use anyhow::Context;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use events::envelope::DecodeError;
use events::platform::{PlatformEnvelope, PlatformEvent};
use events::stream::parse_job_subject;
use events::{apply, Envelope, Job, JobEvent, Recorded};
use sqlx::PgPool;
use uuid::Uuid;

use crate::copy::CopyRows;

pub use common::db::{read_checkpoint, NOTIFY_CHANNEL};

/// One message as delivered by the stream.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub seq: u64,
    pub subject: String,
    pub payload: Bytes,
    /// The W3C trace context the event was appended in.
    pub traceparent: Option<String>,
}

/// The batch does not start right after the checkpoint.
#[derive(Debug, thiserror::Error)]
#[error("gap in the stream: the checkpoint is {checkpoint} but the next message is {next}")]
pub struct Gap {
    pub checkpoint: u64,
    pub next: u64,
}

/// Records an event the read model cannot store, and moves the checkpoint past it.
pub async fn quarantine(pool: &PgPool, m: &Incoming, error: &str) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query("INSERT INTO projection_quarantine (seq, subject, error) VALUES ($1, $2, $3) ON CONFLICT (seq) DO NOTHING")
        .bind(m.seq as i64)
        .bind(&m.subject)
        .bind(error)
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE projector_checkpoint SET last_seq = GREATEST(last_seq, $1) WHERE id = 1")
        .bind(m.seq as i64)
        .execute(&mut *tx)
        .await?;
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(NOTIFY_CHANNEL)
        .bind(m.seq.to_string())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    tracing::error!(seq = m.seq, subject = %m.subject, error, "event quarantined: the read model cannot store it");
    Ok(())
}

/// Whether an error is about the data (Postgres refused a value), not the connection: retrying
/// the same batch cannot help.
pub fn is_data_error(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<sqlx::Error>().is_some_and(|s| match s {
            sqlx::Error::Database(db) => db
                .code()
                .is_some_and(|c| c.starts_with("22") || c.starts_with("54")),
            _ => false,
        })
    })
}

/// What a batch did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub applied: usize,
    pub refused: usize,
    pub checkpoint: u64,
}

/// The job event in a message, if it is one. An event written by a newer schema version
/// stops the projection (to resume once upgraded) rather than being skipped.
fn decode(m: &Incoming) -> anyhow::Result<Option<Recorded>> {
    // Subjects other than jobs (tenants, workers) are not part of this read model yet.
    let Some((tenant, job)) = parse_job_subject(&m.subject) else {
        return Ok(None);
    };
    match Envelope::from_json(&m.payload) {
        Ok(env) if env.tenant_id == tenant && env.job_id == job => Ok(Some(Recorded {
            seq: m.seq,
            envelope: env,
        })),
        Ok(_) => {
            tracing::error!(seq = m.seq, subject = %m.subject, "event body names another tenant or job than its subject; skipped");
            Ok(None)
        }
        Err(e @ DecodeError::TooNew(_)) => anyhow::bail!("seq {}: {e}", m.seq),
        Err(e) => {
            tracing::error!(seq = m.seq, subject = %m.subject, error = %e, "undecodable event; skipped");
            Ok(None)
        }
    }
}

/// A tenant or worker event, if the message is one.
fn decode_platform(m: &Incoming) -> anyhow::Result<Option<PlatformEnvelope>> {
    if !(m.subject.starts_with("jobs.tenants.") || m.subject.starts_with("jobs.workers.")) {
        return Ok(None);
    }
    match PlatformEnvelope::from_json(&m.payload) {
        Ok(p) => Ok(Some(p)),
        Err(e @ DecodeError::TooNew(_)) => anyhow::bail!("seq {}: {e}", m.seq),
        Err(e) => {
            tracing::error!(seq = m.seq, subject = %m.subject, error = %e, "undecodable event; skipped");
            Ok(None)
        }
    }
}

/// Tenant overrides and worker draining, in stream order.
async fn apply_platform(
    tx: &mut sqlx::PgConnection,
    events: &[PlatformEnvelope],
) -> anyhow::Result<()> {
    for env in events {
        let actor = serde_json::to_value(&env.actor)?;
        match &env.event {
            PlatformEvent::LimitsOverridden {
                tenant_id,
                overrides,
            } => {
                sqlx::query(
                    "INSERT INTO tenant_overrides (tenant_id, overrides, updated_at, updated_by) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (tenant_id) DO UPDATE SET overrides = EXCLUDED.overrides,
                        updated_at = EXCLUDED.updated_at, updated_by = EXCLUDED.updated_by",
                )
                .bind(tenant_id)
                .bind(serde_json::to_value(overrides)?)
                .bind(env.at)
                .bind(actor)
                .execute(&mut *tx)
                .await?;
            }
            PlatformEvent::OverridesCleared { tenant_id } => {
                sqlx::query("DELETE FROM tenant_overrides WHERE tenant_id = $1")
                    .bind(tenant_id)
                    .execute(&mut *tx)
                    .await?;
            }
            PlatformEvent::WorkerDrained { worker_id }
            | PlatformEvent::WorkerUndrained { worker_id } => {
                let draining = matches!(env.event, PlatformEvent::WorkerDrained { .. });
                sqlx::query(
                    "INSERT INTO workers (worker_id, first_seen, last_seen, draining) VALUES ($1, $2, $2, $3)
                     ON CONFLICT (worker_id) DO UPDATE SET draining = EXCLUDED.draining",
                )
                .bind(worker_id)
                .bind(env.at)
                .bind(draining)
                .execute(&mut *tx)
                .await?;
            }
            // Serializes leases of one concurrency key; the jobs' own events tell the rest.
            PlatformEvent::ConcurrencySlotTaken { .. } => {}
            PlatformEvent::QueuePaused { .. }
            | PlatformEvent::QueueResumed { .. }
            | PlatformEvent::JobTypePaused { .. }
            | PlatformEvent::JobTypeResumed { .. } => {
                let Some((tenant, target, pause)) = env.event.pause() else {
                    continue;
                };
                if pause {
                    sqlx::query(
                        "INSERT INTO paused (tenant_id, kind, name, paused_at, paused_by) VALUES ($1, $2, $3, $4, $5)
                         ON CONFLICT (tenant_id, kind, name) DO NOTHING",
                    )
                    .bind(tenant)
                    .bind(target.kind())
                    .bind(target.name())
                    .bind(env.at)
                    .bind(&actor)
                    .execute(&mut *tx)
                    .await?;
                } else {
                    sqlx::query(
                        "DELETE FROM paused WHERE tenant_id = $1 AND kind = $2 AND name = $3",
                    )
                    .bind(tenant)
                    .bind(target.kind())
                    .bind(target.name())
                    .execute(&mut *tx)
                    .await?;
                }
            }
        }
    }
    Ok(())
}

/// The workers registry: first and last time each worker acted on a job.
async fn record_workers(tx: &mut sqlx::PgConnection, recs: &[Recorded]) -> anyhow::Result<()> {
    let mut seen: HashMap<&str, (DateTime<Utc>, DateTime<Utc>)> = HashMap::new();
    for r in recs {
        let worker = match (&r.envelope.event, &r.envelope.actor) {
            (JobEvent::Leased { worker_id, .. }, _) => worker_id.as_str(),
            (_, a) if a.kind == events::ActorKind::Worker => a.id.as_str(),
            _ => continue,
        };
        let e = seen.entry(worker).or_insert((r.envelope.at, r.envelope.at));
        e.0 = e.0.min(r.envelope.at);
        e.1 = e.1.max(r.envelope.at);
    }
    if seen.is_empty() {
        return Ok(());
    }
    let ids: Vec<String> = seen.keys().map(|w| w.to_string()).collect();
    let first: Vec<DateTime<Utc>> = seen.values().map(|v| v.0).collect();
    let last: Vec<DateTime<Utc>> = seen.values().map(|v| v.1).collect();
    sqlx::query(
        "INSERT INTO workers (worker_id, first_seen, last_seen)
         SELECT * FROM UNNEST($1::text[], $2::timestamptz[], $3::timestamptz[])
         ON CONFLICT (worker_id) DO UPDATE SET first_seen = LEAST(workers.first_seen, EXCLUDED.first_seen),
            last_seen = GREATEST(workers.last_seen, EXCLUDED.last_seen)",
    )
    .bind(&ids)
    .bind(&first)
    .bind(&last)
    .execute(&mut *tx)
    .await
    .context("recording workers")?;
    Ok(())
}

/// The `jobs` rows of a batch, column by column. The document is the job serialized straight
/// to its JSON text (no `serde_json::Value` in between), bound as text for the `json` column.
#[derive(Default)]
struct Rows {
    id: Vec<Uuid>,
    tenant_id: Vec<Uuid>,
    job_type: Vec<String>,
    queue: Vec<String>,
    priority: Vec<i16>,
    status: Vec<String>,
    run_at: Vec<DateTime<Utc>>,
    created_at: Vec<DateTime<Utc>>,
    updated_at: Vec<DateTime<Utc>>,
    dead_lettered_at: Vec<Option<DateTime<Utc>>>,
    last_error_code: Vec<Option<String>>,
    version: Vec<i64>,
    last_event_seq: Vec<i64>,
    lease_worker_id: Vec<Option<String>>,
    /// The job's JSON form, as text (the column is `json`).
    doc: Vec<String>,
}

impl Rows {
    fn push(&mut self, j: &Job) {
        self.id.push(j.id);
        self.tenant_id.push(j.tenant_id);
        self.job_type.push(j.job_type.to_string());
        self.queue.push(j.queue.to_string());
        self.priority.push(j.priority as i16);
        self.status.push(j.status.as_str().to_string());
        self.run_at.push(j.run_at);
        self.created_at.push(j.created_at);
        self.updated_at.push(j.updated_at);
        self.dead_lettered_at.push(j.extras().dead_lettered_at);
        self.last_error_code
            .push(j.extras().last_error.as_ref().and_then(|e| e.code.clone()));
        self.version.push(j.version as i64);
        self.last_event_seq.push(j.last_event_seq as i64);
        self.lease_worker_id
            .push(j.lease.as_ref().map(|l| l.worker_id.clone()));
        self.doc.push(json_text(j));
    }
}

/// `value`'s JSON text, for a `json` column.
fn json_text(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).expect("a job, an actor or an event's data always serializes")
}

/// Held by every batch transaction and by a rebuild's swap, so that a swap never happens in
/// the middle of a batch (`pg_advisory_xact_lock`).
pub const PROJECTION_LOCK: i64 = 0x6a6f_6273_7072_6f6a;

/// Applies `batch` (in stream order) and advances the checkpoint, all in one transaction.
#[tracing::instrument(skip_all, fields(size = batch.len()), err)]
pub async fn apply_batch(pool: &PgPool, batch: &[Incoming]) -> anyhow::Result<Outcome> {
    let mut tx = begin_locked(pool).await?;
    let out = apply_batch_in(&mut tx, batch).await?;
    tx.commit().await.context("committing the batch")?;
    Ok(out)
}

/// A transaction holding the projection lock (so no two batches interleave).
async fn begin_locked(pool: &PgPool) -> anyhow::Result<sqlx::Transaction<'static, sqlx::Postgres>> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(PROJECTION_LOCK)
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

/// Applies `batch` within the caller's transaction (whose search_path picks the tables).
pub async fn apply_batch_in(
    tx: &mut sqlx::PgConnection,
    batch: &[Incoming],
) -> anyhow::Result<Outcome> {
    let (out, history) = apply_batch_split(tx, batch).await?;
    history.write(tx).await?;
    Ok(out)
}

/// A batch's rows for `job_events`, and the jobs whose whole history it purged.
#[derive(Debug, Default)]
pub struct History {
    seq: Vec<i64>,
    tenant: Vec<Uuid>,
    job: Vec<Uuid>,
    event_id: Vec<Uuid>,
    kind: Vec<String>,
    at: Vec<DateTime<Utc>>,
    /// JSON text each (the columns are `json`: checked, not parsed into `jsonb`).
    actor: Vec<String>,
    data: Vec<String>,
    purged: Vec<Uuid>,
}

impl History {
    fn new(events: &[&Recorded], purged: Vec<Uuid>) -> Self {
        Self {
            seq: events.iter().map(|r| r.seq as i64).collect(),
            tenant: events.iter().map(|r| r.envelope.tenant_id).collect(),
            job: events.iter().map(|r| r.envelope.job_id).collect(),
            event_id: events.iter().map(|r| r.envelope.event_id).collect(),
            kind: events
                .iter()
                .map(|r| r.envelope.type_name().to_string())
                .collect(),
            at: events.iter().map(|r| r.envelope.at).collect(),
            actor: events
                .iter()
                .map(|r| json_text(&r.envelope.actor))
                .collect(),
            data: events
                .iter()
                .map(|r| json_text(&r.envelope.event.data()))
                .collect(),
            purged,
        }
    }

    /// [`Self::write`] into a replay's fresh table: the rows go in with a binary `COPY`, which
    /// has no `ON CONFLICT` (a replay writes each event once), then the purged jobs' history
    /// is deleted.
    pub async fn copy(&self, conn: &mut sqlx::PgConnection) -> anyhow::Result<()> {
        let mut rows = CopyRows::default();
        for i in 0..self.seq.len() {
            rows.row(8)
                .field(&self.seq[i])
                .field(&self.tenant[i])
                .field(&self.job[i])
                .field(&self.event_id[i])
                .field(&self.kind[i])
                .field(&self.at[i])
                .field(&self.actor[i])
                .field(&self.data[i]);
        }
        rows.send(
            conn,
            "COPY job_events (seq, tenant_id, job_id, event_id, type, at, actor, data)
             FROM STDIN (FORMAT binary)",
        )
        .await
        .context("copying job events")?;
        self.delete_purged(conn).await
    }

    /// Inserts the rows, then deletes the purged jobs' history.
    pub async fn write(&self, conn: &mut sqlx::PgConnection) -> anyhow::Result<()> {
        if !self.seq.is_empty() {
            sqlx::query(
                "INSERT INTO job_events (seq, tenant_id, job_id, event_id, type, at, actor, data)
                 SELECT * FROM UNNEST($1::int8[], $2::uuid[], $3::uuid[], $4::uuid[], $5::text[],
                                      $6::timestamptz[], $7::text[]::json[], $8::text[]::json[])
                 ON CONFLICT (seq) DO NOTHING",
            )
            .bind(&self.seq)
            .bind(&self.tenant)
            .bind(&self.job)
            .bind(&self.event_id)
            .bind(&self.kind)
            .bind(&self.at)
            .bind(&self.actor)
            .bind(&self.data)
            .execute(&mut *conn)
            .await
            .context("inserting job events")?;
        }
        self.delete_purged(conn).await
    }

    async fn delete_purged(&self, conn: &mut sqlx::PgConnection) -> anyhow::Result<()> {
        if !self.purged.is_empty() {
            sqlx::query("DELETE FROM job_events WHERE job_id = ANY($1)")
                .bind(&self.purged)
                .execute(&mut *conn)
                .await
                .context("deleting purged jobs' history")?;
        }
        Ok(())
    }
}

/// Applies `batch` but for its event history, which it returns.
async fn apply_batch_split(
    tx: &mut sqlx::PgConnection,
    batch: &[Incoming],
) -> anyhow::Result<(Outcome, History)> {
    let checkpoint = lock_checkpoint(tx).await?;
    let fresh: Vec<&Incoming> = batch.iter().filter(|m| m.seq > checkpoint).collect();
    let Some(decoded) = Decoded::new(&fresh)? else {
        let out = Outcome {
            checkpoint,
            ..Default::default()
        };
        return Ok((out, History::default()));
    };
    // Every message of the stream comes through here, in order: a gap means messages were
    // lost on the way (e.g. across a reconnect); resume from the checkpoint instead.
    if decoded.first != checkpoint + 1 {
        anyhow::bail!(Gap {
            checkpoint,
            next: decoded.first
        });
    }
    let mut state = read_jobs(&mut *tx, &decoded.job_ids()).await?;
    let folded = decoded.fold(&mut state);
    write_folded(tx, folded).await
}

/// The checkpoint, locked for this transaction.
async fn lock_checkpoint(tx: &mut sqlx::PgConnection) -> anyhow::Result<u64> {
    let checkpoint: i64 =
        sqlx::query_scalar("SELECT last_seq FROM projector_checkpoint WHERE id = 1 FOR UPDATE")
            .fetch_one(&mut *tx)
            .await?;
    Ok(checkpoint as u64)
}

/// The stored jobs among `ids`, each decoded straight into a job (no `serde_json::Value` in
/// between).
pub async fn read_jobs(
    conn: &mut sqlx::PgConnection,
    ids: &[Uuid],
) -> anyhow::Result<HashMap<Uuid, Job>> {
    let docs: Vec<sqlx::types::Json<Job>> =
        sqlx::query_scalar("SELECT doc FROM jobs WHERE id = ANY($1)")
            .bind(ids)
            .fetch_all(&mut *conn)
            .await
            .context("reading the batch's jobs (a stored job that does not decode?)")?;
    Ok(docs
        .into_iter()
        .map(|sqlx::types::Json(j)| (j.id, j))
        .collect())
}

/// A batch's messages after the checkpoint, decoded (a message that is none of these is
/// skipped, as `decode` says).
pub struct Decoded {
    first: u64,
    last: u64,
    recs: Vec<Recorded>,
    platform: Vec<PlatformEnvelope>,
    schedules: Vec<events::schedule::ScheduleRecorded>,
}

impl Decoded {
    /// None for an empty batch.
    pub fn new(fresh: &[&Incoming]) -> anyhow::Result<Option<Self>> {
        let (Some(first), Some(last)) = (fresh.first(), fresh.iter().map(|m| m.seq).max()) else {
            return Ok(None);
        };
        let mut d = Self {
            first: first.seq,
            last,
            recs: Vec::with_capacity(fresh.len()),
            platform: Vec::new(),
            schedules: Vec::new(),
        };
        for m in fresh {
            if let Some(r) = decode(m)? {
                d.recs.push(r);
            } else if let Some(p) = decode_platform(m)? {
                d.platform.push(p);
            } else if let Some(s) = crate::schedules::decode(m)? {
                d.schedules.push(s);
            }
        }
        Ok(Some(d))
    }

    /// The jobs the batch's events are about, each once.
    pub fn job_ids(&self) -> Vec<Uuid> {
        let mut seen = HashSet::with_capacity(self.recs.len());
        self.recs
            .iter()
            .map(|r| r.envelope.job_id)
            .filter(|id| seen.insert(*id))
            .collect()
    }

    /// Folds the job events over `state`, which holds the batch's stored jobs (a job absent
    /// from it is new). The jobs the batch changed move from `state` into the result (as the
    /// batch left them); `state` keeps the ones it did not change, and loses purged ones.
    pub fn fold(self, state: &mut HashMap<Uuid, Job>) -> Folded {
        let mut out = Outcome::default();
        let mut changed: HashSet<Uuid> = HashSet::new();
        let mut purged: HashSet<Uuid> = HashSet::new();
        let mut history: Vec<&Recorded> = Vec::new();
        let mut rollups = crate::rollups::Rollups::default();
        for rec in &self.recs {
            let id = rec.envelope.job_id;
            match apply(state.get(&id), rec) {
                Ok(job) => {
                    out.applied += 1;
                    let purge = matches!(rec.envelope.event, JobEvent::Purged {});
                    rollups.record(rec, state.get(&id), (!purge).then_some(&job));
                    if purge {
                        purged.insert(id);
                        state.remove(&id);
                        changed.remove(&id);
                    } else {
                        state.insert(id, job);
                        changed.insert(id);
                    }
                    history.push(rec);
                }
                Err(e) => {
                    out.refused += 1;
                    tracing::error!(seq = rec.seq, job_id = %id, error = %e, "event refused by apply; skipped");
                }
            }
        }
        // The last lease per job type, for `explain`.
        let mut activity: HashMap<String, (DateTime<Utc>, String)> = HashMap::new();
        for rec in &history {
            if let JobEvent::Leased { worker_id, .. } = &rec.envelope.event {
                if let Some(job) = state.get(&rec.envelope.job_id) {
                    activity.insert(
                        job.job_type.to_string(),
                        (rec.envelope.at, worker_id.clone()),
                    );
                }
            }
        }
        // Moved out, not cloned: the live projector drops `state` after the batch; a replay
        // that keeps it takes copies back (`Folded::jobs`).
        let jobs: Vec<Job> = changed.iter().filter_map(|id| state.remove(id)).collect();
        let history: Vec<&Recorded> = history
            .into_iter()
            .filter(|r| !purged.contains(&r.envelope.job_id))
            .collect();
        let purged: Vec<Uuid> = purged.into_iter().collect();
        let history = History::new(&history, purged.clone());
        Folded {
            first: self.first,
            last: self.last,
            out,
            jobs,
            purged,
            rollups,
            activity,
            history,
            recs: self.recs,
            platform: self.platform,
            schedules: self.schedules,
        }
    }
}

impl Folded {
    /// Takes the batch's job writes (new, changed and purged jobs) out of it, split over
    /// `lanes` by job id: a job is always in the same lane, so writing each lane's parts in
    /// batch order keeps every job's writes in order. `is_new` says which jobs have no row
    /// yet (a replay knows). What remains writes everything else.
    pub fn split_jobs(&mut self, lanes: usize, is_new: impl Fn(&Uuid) -> bool) -> Vec<JobWrites> {
        let lanes = lanes.max(1);
        let lane = |id: &Uuid| (id.as_u128() % lanes as u128) as usize;
        let mut parts: Vec<JobWrites> = (0..lanes).map(|_| Default::default()).collect();
        for job in std::mem::take(&mut self.jobs) {
            let part = &mut parts[lane(&job.id)];
            if is_new(&job.id) {
                part.new.push(job);
            } else {
                part.changed.push(job);
            }
        }
        for id in std::mem::take(&mut self.purged) {
            parts[lane(&id)].purged.push(id);
        }
        parts
    }

    /// The jobs it changed, as it left them (they are no longer in the state it folded).
    pub fn jobs(&self) -> &[Job] {
        &self.jobs
    }

    /// The jobs whose whole history the batch purged.
    pub fn purged(&self) -> &[Uuid] {
        &self.purged
    }
}

/// One lane's share of a folded batch's job writes ([`Folded::split_jobs`]).
#[derive(Debug, Default)]
pub struct JobWrites {
    /// Jobs with no row yet: inserted with `COPY` ([`copy_jobs`]).
    pub new: Vec<Job>,
    /// Jobs that may have a row: upserted ([`write_jobs`]).
    pub changed: Vec<Job>,
    pub purged: Vec<Uuid>,
}

impl JobWrites {
    /// Inserts the new jobs, upserts the changed ones, deletes the purged ones.
    pub async fn write(&self, conn: &mut sqlx::PgConnection) -> anyhow::Result<()> {
        copy_jobs(conn, &self.new).await?;
        write_jobs(conn, &self.changed, &self.purged).await
    }
}

/// A batch decoded and folded: what its transaction writes.
pub struct Folded {
    first: u64,
    last: u64,
    out: Outcome,
    /// The jobs it changed, as it left them (purged ones aside).
    jobs: Vec<Job>,
    purged: Vec<Uuid>,
    rollups: crate::rollups::Rollups,
    activity: HashMap<String, (DateTime<Utc>, String)>,
    history: History,
    recs: Vec<Recorded>,
    platform: Vec<PlatformEnvelope>,
    schedules: Vec<events::schedule::ScheduleRecorded>,
}

/// Applies a batch folded ahead (by a replay that keeps the jobs it folds), in one
/// transaction with the checkpoint, which must be right before it; returns its event history
/// to write.
pub async fn apply_folded(pool: &PgPool, folded: Folded) -> anyhow::Result<(Outcome, History)> {
    let mut tx = begin_locked(pool).await?;
    let checkpoint = lock_checkpoint(&mut tx).await?;
    if folded.first != checkpoint + 1 {
        anyhow::bail!(Gap {
            checkpoint,
            next: folded.first
        });
    }
    let applied = write_folded(&mut tx, folded).await?;
    tx.commit().await.context("committing the batch")?;
    Ok(applied)
}

/// Writes a folded batch (but for its event history, which it returns) and moves the
/// checkpoint to its end.
async fn write_folded(
    tx: &mut sqlx::PgConnection,
    f: Folded,
) -> anyhow::Result<(Outcome, History)> {
    apply_platform(&mut *tx, &f.platform).await?;
    // Before the jobs: a firing in this batch finds its schedule's row.
    crate::schedules::apply(&mut *tx, &f.schedules).await?;
    crate::schedules::record_runs(&mut *tx, &f.recs).await?;
    record_workers(&mut *tx, &f.recs).await?;

    f.rollups
        .write(&mut *tx)
        .await
        .context("updating the tenant rollups")?;

    if !f.activity.is_empty() {
        let (types, rest): (Vec<String>, Vec<(DateTime<Utc>, String)>) =
            f.activity.into_iter().unzip();
        let (at, worker): (Vec<DateTime<Utc>>, Vec<String>) = rest.into_iter().unzip();
        sqlx::query(
            "INSERT INTO job_type_activity (type, last_leased_at, last_worker_id)
             SELECT * FROM UNNEST($1::text[], $2::timestamptz[], $3::text[])
             ON CONFLICT (type) DO UPDATE SET last_leased_at = GREATEST(job_type_activity.last_leased_at, EXCLUDED.last_leased_at),
                 last_worker_id = EXCLUDED.last_worker_id",
        )
        .bind(&types)
        .bind(&at)
        .bind(&worker)
        .execute(&mut *tx)
        .await
        .context("recording job type activity")?;
    }

    write_jobs(&mut *tx, &f.jobs, &f.purged).await?;

    sqlx::query("UPDATE projector_checkpoint SET last_seq = $1 WHERE id = 1")
        .bind(f.last as i64)
        .execute(&mut *tx)
        .await?;
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(NOTIFY_CHANNEL)
        .bind(f.last.to_string())
        .execute(&mut *tx)
        .await?;
    let mut out = f.out;
    out.checkpoint = f.last;
    Ok((out, f.history))
}

/// Inserts `jobs`, none of which has a row yet, with a binary `COPY` (a replay's new jobs; an
/// existing row makes it fail).
pub async fn copy_jobs(conn: &mut sqlx::PgConnection, jobs: &[Job]) -> anyhow::Result<()> {
    let mut rows = Rows::default();
    for j in jobs {
        rows.push(j);
    }
    let mut copy = CopyRows::default();
    for i in 0..rows.id.len() {
        copy.row(15)
            .field(&rows.id[i])
            .field(&rows.tenant_id[i])
            .field(&rows.job_type[i])
            .field(&rows.queue[i])
            .field(&rows.priority[i])
            .field(&rows.status[i])
            .field(&rows.run_at[i])
            .field(&rows.created_at[i])
            .field(&rows.updated_at[i])
            .field(&rows.dead_lettered_at[i])
            .field(&rows.last_error_code[i])
            .field(&rows.version[i])
            .field(&rows.last_event_seq[i])
            .field(&rows.doc[i])
            .field(&rows.lease_worker_id[i]);
    }
    copy.send(
        conn,
        "COPY jobs (id, tenant_id, type, queue, priority, status, run_at, created_at, updated_at,
                    dead_lettered_at, last_error_code, version, last_event_seq, doc, lease_worker_id)
         FROM STDIN (FORMAT binary)",
    )
    .await
    .context("copying new jobs")?;
    Ok(())
}

/// Upserts `jobs` as they are now and deletes the `purged` ones (a job's later state always
/// after its earlier one: the caller writes a job's batches in order).
pub async fn write_jobs(
    conn: &mut sqlx::PgConnection,
    jobs: &[Job],
    purged: &[Uuid],
) -> anyhow::Result<()> {
    let mut rows = Rows::default();
    for j in jobs {
        rows.push(j);
    }
    if !rows.id.is_empty() {
        sqlx::query(
            "INSERT INTO jobs (id, tenant_id, type, queue, priority, status, run_at, created_at, updated_at,
                               dead_lettered_at, last_error_code, version, last_event_seq, doc, lease_worker_id)
             SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::int2[], $6::text[],
                                  $7::timestamptz[], $8::timestamptz[], $9::timestamptz[], $10::timestamptz[],
                                  $11::text[], $12::int8[], $13::int8[], $14::text[]::json[], $15::text[])
             ON CONFLICT (id) DO UPDATE SET
                type = EXCLUDED.type, queue = EXCLUDED.queue, priority = EXCLUDED.priority,
                status = EXCLUDED.status, run_at = EXCLUDED.run_at, updated_at = EXCLUDED.updated_at,
                dead_lettered_at = EXCLUDED.dead_lettered_at, last_error_code = EXCLUDED.last_error_code,
                version = EXCLUDED.version, last_event_seq = EXCLUDED.last_event_seq, doc = EXCLUDED.doc,
                lease_worker_id = EXCLUDED.lease_worker_id",
        )
        .bind(&rows.id)
        .bind(&rows.tenant_id)
        .bind(&rows.job_type)
        .bind(&rows.queue)
        .bind(&rows.priority)
        .bind(&rows.status)
        .bind(&rows.run_at)
        .bind(&rows.created_at)
        .bind(&rows.updated_at)
        .bind(&rows.dead_lettered_at)
        .bind(&rows.last_error_code)
        .bind(&rows.version)
        .bind(&rows.last_event_seq)
        .bind(&rows.doc)
        .bind(&rows.lease_worker_id)
        .execute(&mut *conn)
        .await
        .context("upserting jobs")?;
    }

    if !purged.is_empty() {
        sqlx::query("DELETE FROM jobs WHERE id = ANY($1)")
            .bind(purged)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}
