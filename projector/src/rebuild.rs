//! `projector rebuild`: a new read model from the stream, swapped in without downtime.
//!
//! 1. Replay `JOBS_EVENTS` from the start into fresh tables in a new schema (the migrations run
//!    there), while the live projector and query-svc go on using `public`.
//! 2. Swap, in one transaction holding the projection lock (so no live batch is half done):
//!    apply whatever arrived meanwhile, then rename `public` away, the new schema to `public`,
//!    and drop the old one. Readers see the old tables until the commit and the new ones after;
//!    dropping the old tables makes every cached statement re-resolve its tables.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use async_nats::jetstream::Context as JetStream;
use events::stream::STREAM_NAME;
use futures::{StreamExt, TryStreamExt};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgPool};
use tokio::sync::mpsc;
use tokio_util::task::AbortOnDropHandle;
use uuid::Uuid;

use events::Job;

use crate::projection::{
    apply_batch_in, apply_folded, read_jobs, Decoded, Folded, History, Incoming, JobWrites,
    NOTIFY_CHANNEL, PROJECTION_LOCK,
};

/// How a replay batches and caches.
#[derive(Debug, Clone, Copy)]
pub struct Tuning {
    /// Messages per transaction.
    batch: usize,
    /// Jobs a generation of the [`JobCache`] holds.
    generation: usize,
}

impl Tuning {
    /// `batch` messages per transaction (at least 1); a cache generation of `cache_jobs`, or
    /// [`IN_FLIGHT`] + 2 batches' worth if that is more (see [`JobCache`]).
    pub fn new(batch: usize, cache_jobs: usize) -> Self {
        let batch = batch.max(1);
        Self {
            batch,
            generation: cache_jobs.max((IN_FLIGHT + 2) * batch),
        }
    }
}

/// What a rebuild did.
#[derive(Debug)]
pub struct Report {
    pub events: u64,
    /// Jobs the replay read back from the new tables (out of its cache).
    pub read_back: u64,
    /// From the start to the swap's commit, when the rebuilt model serves.
    pub seconds: f64,
    /// Dropping the retired tables after the swap: it waits for whoever still holds them
    /// (queries begun before the swap, the live projector's VACUUM of them).
    pub drop_seconds: f64,
    pub checkpoint: u64,
}

/// How long the replay waits for the stream's next message before it gives up.
const READ_STALL: Duration = Duration::from_secs(60);

/// Reads the stream from `start` to its current end in batches and sends each to `out`, so
/// reading the next batch overlaps with writing the last. Returns how many messages it read.
async fn replay(
    js: &JetStream,
    start: u64,
    size: usize,
    out: mpsc::Sender<Vec<Incoming>>,
) -> anyhow::Result<u64> {
    let stream = js
        .get_stream(STREAM_NAME)
        .await
        .context("opening JOBS_EVENTS")?;
    let mut consumer = stream
        .create_consumer(pull::OrderedConfig {
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: start.max(1),
            },
            ..Default::default()
        })
        .await?;
    if consumer.info().await?.num_pending == 0 {
        return Ok(0);
    }
    let mut messages = consumer.messages().await?;
    let mut batch = Vec::with_capacity(size);
    let mut count = 0;
    // Only a stream that stops answering ends the replay: a busy server (the bench saw one
    // pause over 10 s while the live services caught up) is waited for.
    while let Some(m) = tokio::time::timeout(READ_STALL, messages.next())
        .await
        .with_context(|| format!("reading the stream: no message for {READ_STALL:?}"))?
    {
        let m = m.map_err(|e| anyhow::anyhow!("{e}"))?;
        let info = m.info().map_err(|e| anyhow::anyhow!("{e}"))?;
        let pending = info.pending;
        batch.push(Incoming {
            seq: info.stream_sequence,
            subject: m.subject.to_string(),
            payload: m.payload.clone(),
            traceparent: None,
        });
        count += 1;
        if batch.len() >= size || pending == 0 {
            let full = std::mem::replace(&mut batch, Vec::with_capacity(size));
            if out.send(full).await.is_err() {
                // The writer stopped; its error is the one to report.
                break;
            }
        }
        if pending == 0 {
            break;
        }
    }
    Ok(count)
}

/// Replays the stream from `start` into `pool`'s empty tables on several lanes at once:
/// reading the stream, folding the jobs (kept in a [`JobCache`], so a batch's jobs need not be
/// read back), writing each batch's jobs ([`JOB_LANES`] connections, each its share by job id),
/// writing the rest of the batch with the checkpoint (another), and the event history
/// (another). Each lane writes the batches in order, as the live projector would; a job's
/// writes all go through one lane.
async fn replay_into(
    js: &JetStream,
    start: u64,
    pool: &PgPool,
    tuning: Tuning,
) -> anyhow::Result<(u64, u64)> {
    let (tx, mut rx) = mpsc::channel::<Vec<Incoming>>(4);
    // At most this many folded batches wait for their writer: the cache keeps every job a
    // batch not yet committed touched (see `JobCache`).
    let (folded_tx, mut folded_rx) = mpsc::channel::<Folded>(IN_FLIGHT);
    // The same bound for each lane of job writes: a job's writes are committed at most that
    // many batches behind the fold, whichever lane it is in.
    let (lane_txs, lane_rxs): (Vec<_>, Vec<_>) = (0..JOB_LANES)
        .map(|_| mpsc::channel::<JobWrites>(IN_FLIGHT))
        .unzip();
    let (history_tx, mut history_rx) = mpsc::channel::<History>(4);
    // The reader, the folder and the history writer are tasks of their own, so their work
    // runs on the other core.
    let reader = AbortOnDropHandle::new(tokio::spawn({
        let js = js.clone();
        async move { replay(&js, start, tuning.batch, tx).await }
    }));
    let folder = AbortOnDropHandle::new(tokio::spawn({
        let pool = pool.clone();
        async move {
            let mut cache = JobCache::with_generation(tuning.generation);
            while let Some(batch) = rx.recv().await {
                let fresh: Vec<&Incoming> = batch.iter().collect();
                let Some(decoded) = Decoded::new(&fresh)? else {
                    continue;
                };
                let ids = decoded.job_ids();
                let mut state = cache.take(&pool, &ids).await?;
                // The jobs that have a row (or may have: a purged one). The others are new
                // and go in with `COPY`.
                let stored: HashSet<Uuid> = state
                    .keys()
                    .copied()
                    .chain(ids.into_iter().filter(|id| cache.purged.contains(id)))
                    .collect();
                let mut folded = decoded.fold(&mut state);
                state.extend(folded.jobs().iter().map(|j| (j.id, j.clone())));
                cache.put(state, folded.purged());
                let lanes = folded.split_jobs(JOB_LANES, |id| !stored.contains(id));
                let mut stopped = folded_tx.send(folded).await.is_err();
                for (lane, part) in lane_txs.iter().zip(lanes) {
                    stopped |= lane.send(part).await.is_err();
                }
                if stopped {
                    // A writer stopped; its error is the one to report.
                    break;
                }
            }
            Ok::<_, anyhow::Error>(cache.read_back)
        }
    }));
    let lanes: Vec<_> = lane_rxs
        .into_iter()
        .map(|mut rx| {
            let pool = pool.clone();
            AbortOnDropHandle::new(tokio::spawn(async move {
                let mut conn = pool.acquire().await?;
                while let Some(writes) = rx.recv().await {
                    writes.write(&mut conn).await?;
                }
                Ok::<_, anyhow::Error>(())
            }))
        })
        .collect();
    let lanes = async {
        for lane in lanes {
            lane.await.context("a job writer failed")??;
        }
        Ok::<_, anyhow::Error>(())
    };
    let history = AbortOnDropHandle::new(tokio::spawn({
        let pool = pool.clone();
        async move {
            let mut conn = pool.acquire().await?;
            while let Some(history) = history_rx.recv().await {
                history.copy(&mut conn).await?;
            }
            Ok::<_, anyhow::Error>(())
        }
    }));
    let write = async move {
        while let Some(folded) = folded_rx.recv().await {
            let (_, history) = apply_folded(pool, folded).await?;
            if history_tx.send(history).await.is_err() {
                // The history writer stopped; its error is the one to report.
                break;
            }
        }
        Ok::<_, anyhow::Error>(())
    };
    let (events, read_back, (), (), ()) = tokio::try_join!(
        async { reader.await.context("the stream reader failed")? },
        async { folder.await.context("the folder failed")? },
        write,
        lanes,
        async { history.await.context("the history writer failed")? },
    )?;
    Ok((events, read_back))
}

/// Folded batches waiting for the jobs writer, at most.
const IN_FLIGHT: usize = 2;

/// Connections that upsert the replayed jobs, each its share of every batch by job id (the
/// single jobs writer was the replay's bound; docs/performance.md, "Rebuild").
const JOB_LANES: usize = 2;

/// Evicted jobs remembered by id (so a job never seen is known to be new without a read)
/// up to this many; beyond, every job not in the cache is read back.
const EVICTED_IDS: usize = 4_000_000;

/// The jobs a replay folded lately, so the next batch's jobs come from memory rather than
/// being read back from the tables it is writing.
///
/// Two generations: the jobs a batch touches go to the young one; when it holds a
/// generation's worth of jobs (`Tuning`: 50,000 by default, and never under [`IN_FLIGHT`] + 2
/// batches' worth) it becomes the old one and the old one is dropped. A job dropped so was
/// last touched before a whole generation of other jobs, so at least [`IN_FLIGHT`] + 2
/// batches before the one being folded, while at most [`IN_FLIGHT`] + 1 folded batches wait
/// for their commit: its write is committed, and reading it back gives its latest state. A job
/// the replay never saw is not in the (empty) tables, and is not read; nor is a purged one.
struct JobCache {
    young: HashMap<Uuid, Job>,
    old: HashMap<Uuid, Job>,
    /// Jobs the young generation holds before it becomes the old one.
    generation: usize,
    /// Jobs dropped from the cache (while `evicted_overflow` is false).
    evicted: HashSet<Uuid>,
    evicted_overflow: bool,
    purged: HashSet<Uuid>,
    /// Jobs read back so far.
    read_back: u64,
}

impl JobCache {
    fn with_generation(generation: usize) -> Self {
        Self {
            young: HashMap::new(),
            old: HashMap::new(),
            generation,
            evicted: HashSet::new(),
            evicted_overflow: false,
            purged: HashSet::new(),
            read_back: 0,
        }
    }

    /// The jobs among `ids` as the replay left them (a job absent is new or purged), taken
    /// out of the cache: dropped ones are read back from `pool`.
    async fn take(&mut self, pool: &PgPool, ids: &[Uuid]) -> anyhow::Result<HashMap<Uuid, Job>> {
        let (mut state, read) = self.take_cached(ids);
        if !read.is_empty() {
            let mut conn = pool.acquire().await?;
            let jobs = read_jobs(&mut conn, &read).await?;
            self.read_back += jobs.len() as u64;
            state.extend(jobs);
        }
        Ok(state)
    }

    /// The cached jobs among `ids`, taken out, and the ones to read back (dropped from the
    /// cache; neither new nor purged).
    fn take_cached(&mut self, ids: &[Uuid]) -> (HashMap<Uuid, Job>, Vec<Uuid>) {
        let mut state = HashMap::with_capacity(ids.len());
        let mut read = Vec::new();
        for id in ids {
            if let Some(j) = self.young.remove(id).or_else(|| self.old.remove(id)) {
                state.insert(*id, j);
            } else if !self.purged.contains(id)
                && (self.evicted_overflow || self.evicted.contains(id))
            {
                read.push(*id);
            }
        }
        (state, read)
    }

    /// Keeps a batch's jobs as it left them, and remembers the ones it purged.
    fn put(&mut self, state: HashMap<Uuid, Job>, purged: &[Uuid]) {
        self.purged.extend(purged.iter().copied());
        self.young.extend(state);
        if self.young.len() >= self.generation {
            let retired = std::mem::replace(&mut self.old, std::mem::take(&mut self.young));
            if !self.evicted_overflow {
                self.evicted.extend(retired.into_keys());
                if self.evicted.len() > EVICTED_IDS {
                    self.evicted = HashSet::new();
                    self.evicted_overflow = true;
                }
            }
        }
    }
}

/// Drops the secondary (non-unique) indexes of `schema`'s tables and returns their
/// definitions. Upholding them row by row is most of a replay's cost in Postgres; built again
/// in one pass each at the end ([`create_indexes`]), they come out the same. Primary keys and
/// unique indexes stay: the upserts need them.
async fn drop_secondary_indexes(pool: &PgPool, schema: &str) -> anyhow::Result<Vec<String>> {
    let indexes: Vec<(String, String)> = sqlx::query_as(
        "SELECT c.relname::text, pg_get_indexdef(c.oid)
           FROM pg_index x
           JOIN pg_class c ON c.oid = x.indexrelid
           JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname = $1 AND NOT x.indisprimary AND NOT x.indisunique",
    )
    .bind(schema)
    .fetch_all(pool)
    .await
    .context("listing the new schema's indexes")?;
    for (name, _) in &indexes {
        sqlx::query(&format!("DROP INDEX {schema}.{name}"))
            .execute(pool)
            .await
            .with_context(|| format!("dropping index {name} for the replay"))?;
    }
    Ok(indexes.into_iter().map(|(_, def)| def).collect())
}

/// Memory for each index build's sort (two at a time).
const INDEX_SORT_MEMORY: &str = "256MB";

/// Builds the indexes [`drop_secondary_indexes`] dropped, two at a time (one per connection).
async fn create_indexes(pool: &PgPool, definitions: &[String]) -> anyhow::Result<()> {
    futures::stream::iter(definitions)
        .map(|def| async move {
            let mut conn = pool.acquire().await?;
            // Sorted in memory: at the default 64 MB, the sort of a million-row index spills
            // to disk.
            sqlx::raw_sql(&format!("SET maintenance_work_mem = '{INDEX_SORT_MEMORY}'"))
                .execute(&mut *conn)
                .await?;
            let built = sqlx::query(def)
                .execute(&mut *conn)
                .await
                .with_context(|| format!("building {def}"));
            sqlx::raw_sql("RESET maintenance_work_mem")
                .execute(&mut *conn)
                .await?;
            built
        })
        .buffer_unordered(2)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(())
}

/// Drops the schema a swap retired, after the swap committed. Queries that began before the
/// swap may still hold locks on its tables, each taking them in its own order; a `DROP` in the
/// swap's transaction once deadlocked with one (it held `job_events`, the query held the
/// checkpoint and wanted `job_events`), and Postgres aborted the rebuild. Here the drop waits
/// at most `lock_timeout` for each lock, well under `deadlock_timeout`, so no cycle lasts long
/// enough for Postgres to abort anyone, and tries again; queries that start after the swap
/// use the new tables.
async fn drop_retired(conn: &mut sqlx::PgConnection, retired: &str) {
    const ATTEMPTS: u64 = 50;
    for attempt in 1..=ATTEMPTS {
        let dropped = async {
            let mut tx = conn.begin().await?;
            sqlx::query("SET LOCAL lock_timeout = '200ms'")
                .execute(&mut *tx)
                .await?;
            sqlx::query(&format!("DROP SCHEMA {retired} CASCADE"))
                .execute(&mut *tx)
                .await?;
            tx.commit().await
        }
        .await;
        match dropped {
            Ok(()) => return,
            Err(e) if attempt < ATTEMPTS => {
                tracing::debug!(retired, attempt, error = %e, "the retired tables are still in use; dropping them again shortly");
                tokio::time::sleep(Duration::from_millis(100 * attempt.min(10))).await;
            }
            Err(e) => tracing::warn!(
                retired,
                error = %e,
                "the retired read model could not be dropped: it holds a full copy of the old \
                 tables; drop it by hand (DROP SCHEMA ... CASCADE)"
            ),
        }
    }
}

/// Held (shared) by every rebuild from its start until the retired tables are dropped, on a
/// connection of its own: while it is held, the live projector's upkeep starts no `VACUUM` or
/// `ANALYZE` (`maintenance::rebuild_running`). The tables it would work on are about to be
/// retired, the rebuild wants both cores, and the drop after the swap waits for any statement
/// still on them.
pub const REBUILD_LOCK: i64 = 0x6a6f_6273_7265_6275;

/// Rebuilds the read model of `database_url` from the stream and swaps it in.
pub async fn rebuild(database_url: &str, js: &JetStream, tuning: Tuning) -> anyhow::Result<Report> {
    let started = Instant::now();
    let schema = format!("rebuild_{}", chrono::Utc::now().format("%Y%m%d%H%M%S%3f"));
    let options: PgConnectOptions = database_url.parse().context("JOBS_DATABASE_URL")?;
    // Closed at the end, or with the process: either releases the lock.
    let mut running = sqlx::PgConnection::connect_with(&options).await?;
    sqlx::query("SELECT pg_advisory_lock_shared($1)")
        .bind(REBUILD_LOCK)
        .execute(&mut running)
        .await
        .context("marking the rebuild as running")?;
    let admin = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(options.clone())
        .await?;
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&admin)
        .await?;
    // Readers (a read-only role for query-svc) may look into it, as into `public`; what they
    // may read is the tables' grants (default privileges of the projector's role).
    sqlx::query(&format!("GRANT USAGE ON SCHEMA {schema} TO PUBLIC"))
        .execute(&admin)
        .await?;
    let fresh: PgPool = PgPoolOptions::new()
        // The batch writer, the history writer, the job lanes, and the fold's read-backs.
        .max_connections(4 + JOB_LANES as u32)
        // A replay that stops is started again from scratch, so its commits need not wait
        // for the disk; the swap below commits durably on its own connection.
        .connect_with(options.clone().options([
            ("search_path", schema.as_str()),
            ("synchronous_commit", "off"),
            ("maintenance_work_mem", "256MB"),
        ]))
        .await?;
    let result = async {
        common::db::MIGRATOR
            .run(&fresh)
            .await
            .context("migrating the new schema")?;
        // 1. Replay into the new schema, without its secondary indexes, then build them.
        let indexes = drop_secondary_indexes(&fresh, &schema).await?;
        let replaying = Instant::now();
        let (mut events, read_back) = replay_into(js, 1, &fresh, tuning).await?;
        let replayed_s = replaying.elapsed().as_secs_f64();
        create_indexes(&fresh, &indexes).await?;
        tracing::info!(
            schema,
            events,
            replayed_s,
            indexes_s = replaying.elapsed().as_secs_f64() - replayed_s,
            "replayed and indexed; swapping"
        );
        // 2. Catch up and swap, holding the projection lock.
        let mut conn = sqlx::PgConnection::connect_with(&options).await?;
        let mut tx = conn.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(PROJECTION_LOCK)
            .execute(&mut *tx)
            .await?;
        sqlx::query(&format!("SET LOCAL search_path = {schema}"))
            .execute(&mut *tx)
            .await?;
        let done: i64 =
            sqlx::query_scalar("SELECT last_seq FROM projector_checkpoint WHERE id = 1")
                .fetch_one(&mut *tx)
                .await?;
        let (sender, mut received) = mpsc::channel::<Vec<Incoming>>(4);
        let write = async {
            while let Some(batch) = received.recv().await {
                apply_batch_in(&mut tx, &batch).await?;
            }
            Ok::<_, anyhow::Error>(())
        };
        let (more, ()) =
            tokio::try_join!(replay(js, done as u64 + 1, tuning.batch, sender), write)?;
        events += more;
        let checkpoint: i64 =
            sqlx::query_scalar("SELECT last_seq FROM projector_checkpoint WHERE id = 1")
                .fetch_one(&mut *tx)
                .await?;
        let retired = format!("retired_{}", &schema["rebuild_".len()..]);
        sqlx::query("SET LOCAL search_path = public")
            .execute(&mut *tx)
            .await?;
        sqlx::query(&format!("ALTER SCHEMA public RENAME TO {retired}"))
            .execute(&mut *tx)
            .await?;
        sqlx::query(&format!("ALTER SCHEMA {schema} RENAME TO public"))
            .execute(&mut *tx)
            .await?;
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(NOTIFY_CHANNEL)
            .bind(checkpoint.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit()
            .await
            .context("swapping in the rebuilt read model")?;
        let swapped = started.elapsed().as_secs_f64();
        drop_retired(&mut conn, &retired).await;
        Ok::<_, anyhow::Error>((events, read_back, checkpoint as u64, swapped))
    }
    .await;
    fresh.close().await;
    if let Err(e) = running.close().await {
        tracing::debug!(error = %e, "closing the rebuild's marker connection");
    }
    match result {
        Ok((events, read_back, checkpoint, swapped)) => Ok(Report {
            events,
            read_back,
            seconds: swapped,
            drop_seconds: started.elapsed().as_secs_f64() - swapped,
            checkpoint,
        }),
        Err(e) => {
            let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                .execute(&admin)
                .await;
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: Uuid) -> Job {
        serde_json::from_value(serde_json::json!({
            "id": id, "tenant_id": Uuid::nil(), "type": "t", "queue": "default", "priority": 5,
            "payload": {}, "status": "pending", "attempts": 0, "max_attempts": 3,
            "run_at": "2026-01-01T00:00:00Z", "timeout_seconds": 30,
            "backoff": {"base_seconds": 1, "max_seconds": 60},
            "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z",
            "lease": null, "progress": null, "result": null, "last_error": null, "errors": [],
            "metadata": {}, "cancel_requested": false, "dead_lettered_at": null,
            "completed_at": null, "version": 1, "last_event_seq": 1
        }))
        .expect("a job")
    }

    fn batch(ids: &[Uuid]) -> HashMap<Uuid, Job> {
        ids.iter().map(|id| (*id, job(*id))).collect()
    }

    #[test]
    fn a_job_is_read_back_only_once_dropped_and_never_when_new_or_purged() {
        let mut cache = JobCache::with_generation(4);
        let (a, p) = (Uuid::new_v4(), Uuid::new_v4());
        cache.put(batch(&[a]), &[]);
        cache.put(HashMap::new(), &[p]);
        // Recently folded: from memory.
        let (state, read) = cache.take_cached(&[a]);
        assert!(state.contains_key(&a) && read.is_empty());
        cache.put(state, &[]);
        // New and purged jobs are known absent: nothing to read.
        let new = Uuid::new_v4();
        let (state, read) = cache.take_cached(&[new, p]);
        assert!(state.is_empty() && read.is_empty());
        // Two generations of other jobs later, `a` is dropped: it must be read back.
        for _ in 0..2 {
            let others: Vec<Uuid> = (0..4).map(|_| Uuid::new_v4()).collect();
            cache.put(batch(&others), &[]);
        }
        let (state, read) = cache.take_cached(&[a]);
        assert!(state.is_empty());
        assert_eq!(read, vec![a]);
    }

    #[test]
    fn one_generation_of_other_jobs_does_not_drop_a_job() {
        let mut cache = JobCache::with_generation(4);
        let a = Uuid::new_v4();
        cache.put(batch(&[a]), &[]);
        let others: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
        cache.put(batch(&others), &[]);
        // The young generation filled and became the old one, `a` with it: still cached.
        let (state, read) = cache.take_cached(&[a]);
        assert!(state.contains_key(&a) && read.is_empty());
    }
}
