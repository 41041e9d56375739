//! The projection loop: a durable pull consumer on `JOBS_EVENTS`, positioned at checkpoint + 1
//! every time it (re)starts, so the Postgres checkpoint alone decides where reading resumes.
//! A batch starts with the first event to arrive and takes what arrives within the linger
//! after it (`JOBS_PROJECTOR_LINGER_MS`), up to the batch size: a full batch goes at once, and
//! a trickle of events goes in one transaction per linger rather than one per event, which
//! cost Postgres a commit each and, on two cores, the lease path its CPU (docs/performance.md).
//! A failing batch is retried, never skipped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::{self, AckKind};
use events::stream::{PROJECTOR_CONSUMER, STREAM_NAME};
use futures::{FutureExt, StreamExt};
use tracing::Instrument;

/// Most trace links a batch span carries.
const MAX_LINKS: usize = 128;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::projection::{apply_batch, is_data_error, quarantine, read_checkpoint, Gap, Incoming};

#[derive(Clone)]
pub struct ProjectorMetrics {
    pub checkpoint: IntGauge,
    pub lag: IntGauge,
    applied: IntCounter,
    refused: IntCounter,
    batch_size: Histogram,
    apply_seconds: Histogram,
}

impl ProjectorMetrics {
    pub fn new(m: &common::metrics::Metrics) -> Self {
        let s = Self {
            checkpoint: IntGauge::new(
                "jobs_projector_checkpoint",
                "Last stream sequence applied to Postgres.",
            )
            .expect("valid"),
            lag: IntGauge::new(
                "jobs_projector_lag_events",
                "Stream last sequence minus the checkpoint.",
            )
            .expect("valid"),
            applied: IntCounter::new("jobs_projector_events_applied_total", "Events applied.")
                .expect("valid"),
            refused: IntCounter::new(
                "jobs_projector_events_refused_total",
                "Events apply refused (logged and skipped).",
            )
            .expect("valid"),
            batch_size: Histogram::with_opts(
                HistogramOpts::new("jobs_projector_batch_size", "Messages per applied batch.")
                    .buckets(vec![
                        1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0,
                    ]),
            )
            .expect("valid"),
            apply_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "jobs_projector_apply_duration_seconds",
                    "Time to apply and commit a batch.",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                ]),
            )
            .expect("valid"),
        };
        m.register(&s.checkpoint);
        m.register(&s.lag);
        m.register(&s.applied);
        m.register(&s.refused);
        m.register(&s.batch_size);
        m.register(&s.apply_seconds);
        s
    }
}

pub struct Projector {
    pub pool: PgPool,
    pub js: jetstream::Context,
    pub batch_size: usize,
    /// How long a batch waits after its first event for more (zero: not at all).
    pub linger: Duration,
    pub metrics: ProjectorMetrics,
    pub checkpoint: Arc<AtomicU64>,
}

async fn position_consumer(
    js: &jetstream::Context,
    checkpoint: u64,
) -> anyhow::Result<jetstream::consumer::PullConsumer> {
    let stream = js
        .get_stream(STREAM_NAME)
        .await
        .context("getting JOBS_EVENTS")?;
    // Whatever the server remembers of an earlier run is dropped: the checkpoint decides.
    if let Err(e) = stream.delete_consumer(PROJECTOR_CONSUMER).await {
        if !e.to_string().to_lowercase().contains("not found") {
            anyhow::bail!("removing the old projector consumer: {e}");
        }
    }
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some(PROJECTOR_CONSUMER.to_string()),
            description: Some("projector: Postgres read model".to_string()),
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: checkpoint + 1,
            },
            ack_policy: AckPolicy::All,
            ack_wait: Duration::from_secs(300),
            max_ack_pending: 20_000,
            ..Default::default()
        })
        .await
        .context("creating the projector consumer")?;
    Ok(consumer)
}

impl Projector {
    /// Runs until `stop` is cancelled; the batch in hand is finished first.
    pub async fn run(self, stop: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        while !stop.is_cancelled() {
            match self.follow(&stop).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(
                        error = format!("{e:#}"),
                        "projection interrupted; resuming from the checkpoint"
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn follow(&self, stop: &CancellationToken) -> anyhow::Result<()> {
        let checkpoint = read_checkpoint(&self.pool).await?;
        self.set_checkpoint(checkpoint);
        let consumer = position_consumer(&self.js, checkpoint).await?;
        let mut messages = consumer
            .stream()
            .max_messages_per_batch(self.batch_size.max(1))
            .heartbeat(Duration::from_secs(5))
            .messages()
            .await
            .context("pulling from the projector consumer")?;
        tracing::info!(checkpoint, "projector following JOBS_EVENTS");
        loop {
            let first = tokio::select! {
                m = messages.next() => m,
                _ = stop.cancelled() => return Ok(()),
            };
            let first = first
                .context("the consumer ended")?
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let mut batch = vec![first];
            let until = tokio::time::Instant::now() + self.linger;
            while batch.len() < self.batch_size {
                // What has arrived, then (when lingering) what arrives until `until`.
                let next = match messages.next().now_or_never() {
                    Some(next) => next,
                    None if self.linger.is_zero() => break,
                    None => tokio::select! {
                        next = messages.next() => next,
                        _ = tokio::time::sleep_until(until) => break,
                        _ = stop.cancelled() => break,
                    },
                };
                match next {
                    Some(Ok(m)) => batch.push(m),
                    Some(Err(e)) => return Err(anyhow::anyhow!("{e}")),
                    None => break,
                }
            }
            let incoming = batch
                .iter()
                .map(|m| {
                    let info = m.info().map_err(|e| anyhow::anyhow!("message info: {e}"))?;
                    Ok(Incoming {
                        seq: info.stream_sequence,
                        subject: m.subject.to_string(),
                        payload: m.payload.clone(),
                        traceparent: m
                            .headers
                            .as_ref()
                            .and_then(|h| h.get("traceparent"))
                            .map(|v| v.as_str().to_string()),
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            // The batch's span continues the trace of the event it applies (a batch of one), or
            // links to each event's trace.
            let span = tracing::info_span!(
                "projector.apply_batch",
                size = incoming.len(),
                first_seq = incoming[0].seq,
                last_seq = incoming[incoming.len() - 1].seq,
            );
            let single = incoming.len() == 1;
            for tp in incoming
                .iter()
                .filter_map(|m| m.traceparent.as_deref())
                .take(MAX_LINKS)
            {
                common::telemetry::adopt_traceparent(&span, tp, !single);
            }
            self.apply_with_retry(&incoming, stop)
                .instrument(span)
                .await?;
            let last = batch.last().expect("a batch is never empty");
            // AckPolicy::All: acknowledging the last message acknowledges the batch. A lost
            // ack only means redelivery, which the checkpoint makes harmless.
            if let Err(e) = last.ack_with(AckKind::Ack).await {
                tracing::debug!(error = %e, "ack failed; redelivery will be skipped");
            }
        }
    }

    async fn apply_with_retry(
        &self,
        incoming: &[Incoming],
        stop: &CancellationToken,
    ) -> anyhow::Result<()> {
        let mut backoff = Duration::from_millis(50);
        loop {
            let start = Instant::now();
            match apply_batch(&self.pool, incoming).await {
                Ok(out) => {
                    self.metrics
                        .apply_seconds
                        .observe(start.elapsed().as_secs_f64());
                    self.metrics.batch_size.observe(incoming.len() as f64);
                    self.metrics.applied.inc_by(out.applied as u64);
                    self.metrics.refused.inc_by(out.refused as u64);
                    self.set_checkpoint(out.checkpoint);
                    return Ok(());
                }
                Err(e) if e.is::<Gap>() => return Err(e),
                Err(e) if is_data_error(&e) => {
                    // One event Postgres refuses must not stop every tenant's projection: find
                    // it by applying one at a time, quarantine it, go on.
                    if incoming.len() == 1 {
                        quarantine(&self.pool, &incoming[0], &format!("{e:#}")).await?;
                        self.metrics.refused.inc();
                        self.set_checkpoint(incoming[0].seq);
                        return Ok(());
                    }
                    for m in incoming {
                        Box::pin(self.apply_with_retry(std::slice::from_ref(m), stop)).await?;
                    }
                    return Ok(());
                }
                Err(e) => {
                    tracing::warn!(
                        error = format!("{e:#}"),
                        "applying a batch failed; retrying"
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.cancelled() => anyhow::bail!("stopped before the batch was applied"),
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    fn set_checkpoint(&self, seq: u64) {
        self.checkpoint.store(seq, Ordering::Relaxed);
        self.metrics.checkpoint.set(seq as i64);
    }
}

/// Every few seconds, records the projection lag (stream last sequence − checkpoint).
pub async fn watch_lag(
    js: jetstream::Context,
    checkpoint: Arc<AtomicU64>,
    metrics: ProjectorMetrics,
    stop: CancellationToken,
) {
    loop {
        if let Ok(mut s) = js.get_stream(STREAM_NAME).await {
            if let Ok(info) = s.info().await {
                let lag = info
                    .state
                    .last_sequence
                    .saturating_sub(checkpoint.load(Ordering::Relaxed));
                metrics.lag.set(lag as i64);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = stop.cancelled() => return,
        }
    }
}
