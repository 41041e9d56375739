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
use futures::StreamExt;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgPool};

use crate::projection::{apply_batch, apply_batch_in, Incoming, NOTIFY_CHANNEL, PROJECTION_LOCK};

const BATCH: usize = 2000;

/// What a rebuild did.
#[derive(Debug)]
pub struct Report {
    pub events: u64,
    pub seconds: f64,
    pub checkpoint: u64,
}

/// Reads the stream from `start` to its current end in batches, handing each to `f`.
async fn replay<F, Fut>(js: &JetStream, start: u64, mut f: F) -> anyhow::Result<u64>
where
    F: FnMut(Vec<Incoming>) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
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
    while let Some(m) = tokio::time::timeout(Duration::from_secs(10), messages.next())
        .await
        .context("reading the stream")?
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
            f(std::mem::take(&mut batch)).await?;
        }
        if pending == 0 {
            break;
        }
    }
    Ok(count)
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
        .connect_with(options.clone().options([("search_path", schema.as_str())]))
        .await?;
    let result = async {
        common::db::MIGRATOR
            .run(&fresh)
            .await
            .context("migrating the new schema")?;
        // 1. Replay into the new schema.
        let mut events = replay(js, 1, |batch| {
            let fresh = fresh.clone();
            async move { apply_batch(&fresh, &batch).await.map(|_| ()) }
        })
        .await?;
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
        let mut rest = Vec::new();
        events += replay(js, done as u64 + 1, |batch| {
            rest.push(batch);
            async { Ok(()) }
        })
        .await?;
        for batch in rest {
            apply_batch_in(&mut tx, &batch).await?;
        }
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
