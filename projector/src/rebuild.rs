//! `projector rebuild`: a new read model from the stream, swapped in without downtime.
//!
//! 1. Replay `JOBS_EVENTS` from the start into fresh tables in a new schema (the migrations run
//!    there), while the live projector and query-svc go on using `public`.
//! 2. Swap, in one transaction holding the projection lock (so no live batch is half done):
//!    apply whatever arrived meanwhile, then rename `public` away, the new schema to `public`,
//!    and drop the old one. Readers see the old tables until the commit and the new ones after;
//!    dropping the old tables makes every cached statement re-resolve its tables.

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

use crate::projection::{
    apply_batch_deferring, apply_batch_in, History, Incoming, NOTIFY_CHANNEL, PROJECTION_LOCK,
};

/// Messages per transaction while replaying.
const BATCH: usize = 5000;

/// What a rebuild did.
#[derive(Debug)]
pub struct Report {
    pub events: u64,
    pub seconds: f64,
    pub checkpoint: u64,
}

/// How long the replay waits for the stream's next message before it gives up.
const READ_STALL: Duration = Duration::from_secs(60);

/// Reads the stream from `start` to its current end in batches and sends each to `out`, so
/// reading the next batch overlaps with writing the last. Returns how many messages it read.
async fn replay(
    js: &JetStream,
    start: u64,
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
    let mut batch = Vec::with_capacity(BATCH);
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
        if batch.len() >= BATCH || pending == 0 {
            let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
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

/// Replays the stream from `start` into `pool`'s tables on three lanes at once: reading the
/// stream, folding the jobs (one connection), and writing the event history (another), each
/// batch's history after the one before, as the live projector would.
async fn replay_into(js: &JetStream, start: u64, pool: &PgPool) -> anyhow::Result<u64> {
    let (tx, mut rx) = mpsc::channel::<Vec<Incoming>>(4);
    let (history_tx, mut history_rx) = mpsc::channel::<History>(4);
    // The reader and the history writer are tasks of their own, so their work runs on the
    // other core.
    let reader = AbortOnDropHandle::new(tokio::spawn({
        let js = js.clone();
        async move { replay(&js, start, tx).await }
    }));
    let history = AbortOnDropHandle::new(tokio::spawn({
        let pool = pool.clone();
        async move {
            let mut conn = pool.acquire().await?;
            while let Some(history) = history_rx.recv().await {
                history.write(&mut conn).await?;
            }
            Ok::<_, anyhow::Error>(())
        }
    }));
    let write = async move {
        while let Some(batch) = rx.recv().await {
            let (_, history) = apply_batch_deferring(pool, &batch).await?;
            if history_tx.send(history).await.is_err() {
                // The history writer stopped; its error is the one to report.
                break;
            }
        }
        Ok::<_, anyhow::Error>(())
    };
    let (events, (), ()) = tokio::try_join!(
        async { reader.await.context("the stream reader failed")? },
        write,
        async { history.await.context("the history writer failed")? },
    )?;
    Ok(events)
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

/// Builds the indexes [`drop_secondary_indexes`] dropped, two at a time (one per connection).
async fn create_indexes(pool: &PgPool, definitions: &[String]) -> anyhow::Result<()> {
    futures::stream::iter(definitions)
        .map(|def| async move {
            sqlx::query(def)
                .execute(pool)
                .await
                .with_context(|| format!("building {def}"))
        })
        .buffer_unordered(2)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(())
}

/// Rebuilds the read model of `database_url` from the stream and swaps it in.
pub async fn rebuild(database_url: &str, js: &JetStream) -> anyhow::Result<Report> {
    let started = Instant::now();
    let schema = format!("rebuild_{}", chrono::Utc::now().format("%Y%m%d%H%M%S%3f"));
    let options: PgConnectOptions = database_url.parse().context("JOBS_DATABASE_URL")?;
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
        .max_connections(2)
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
        let mut events = replay_into(js, 1, &fresh).await?;
        create_indexes(&fresh, &indexes).await?;
        tracing::info!(schema, events, "replayed; swapping");
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
        let (more, ()) = tokio::try_join!(replay(js, done as u64 + 1, sender), write)?;
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
        sqlx::query(&format!("DROP SCHEMA {retired} CASCADE"))
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
        Ok::<_, anyhow::Error>((events, checkpoint as u64))
    }
    .await;
    fresh.close().await;
    match result {
        Ok((events, checkpoint)) => Ok(Report {
            events,
            seconds: started.elapsed().as_secs_f64(),
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
