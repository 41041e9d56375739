//! Appending events to `JOBS_EVENTS`: one event conditional on its job's last subject
//! sequence, or a batch of new jobs committed atomically (all or none).

use std::time::Instant;

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::OutboundMessage;
use async_nats::jetstream::message::PublishMessage;
use async_nats::{connection::State, Client};
use common::nats::{event_headers, REQUEST_TIMEOUT};
use events::stream::job_subject;
use events::Envelope;
use jetstream_extra::batch_publish::{BatchPublishErrorKind, BatchPublishExt};
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts};

#[derive(Debug, Clone, thiserror::Error)]
pub enum AppendError {
    /// Another writer appended to the job first: re-read and re-decide, or answer 409.
    #[error("the job changed while the command ran")]
    Conflict,
    /// The event store did not answer in time or is disconnected: nothing was acknowledged.
    #[error("the event store is unavailable: {0}")]
    Unavailable(String),
    #[error("append failed: {0}")]
    Other(String),
}

impl From<AppendError> for common::ApiError {
    fn from(e: AppendError) -> Self {
        match e {
            AppendError::Conflict => {
                common::ApiError::InvalidState("changed concurrently; retry".into())
            }
            AppendError::Unavailable(m) => common::ApiError::Unavailable(m),
            AppendError::Other(m) => common::ApiError::Internal(anyhow::anyhow!(m)),
        }
    }
}

#[derive(Clone)]
pub struct StoreMetrics {
    appended: IntCounterVec,
    conflicts: IntCounter,
    latency: Histogram,
    group_size: Histogram,
}

impl StoreMetrics {
    pub fn new(m: &common::metrics::Metrics) -> Self {
        let s = Self {
            appended: IntCounterVec::new(
                Opts::new(
                    "jobs_events_appended_total",
                    "Events appended to JOBS_EVENTS, by type.",
                ),
                &["type"],
            )
            .expect("valid metric"),
            conflicts: IntCounter::new(
                "jobs_append_conflicts_total",
                "Appends refused because the job's last sequence moved on.",
            )
            .expect("valid metric"),
            latency: Histogram::with_opts(
                HistogramOpts::new(
                    "jobs_append_duration_seconds",
                    "Time from publish to JetStream ack.",
                )
                .buckets(vec![
                    0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 3.0,
                ]),
            )
            .expect("valid metric"),
            group_size: Histogram::with_opts(
                HistogramOpts::new(
                    "jobs_append_group_events",
                    "Single-event appends written together in one store write (group commit).",
                )
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]),
            )
            .expect("valid metric"),
        };
        m.register(&s.group_size);
        m.register(&s.appended);
        m.register(&s.conflicts);
        m.register(&s.latency);
        s
    }
}

#[derive(Clone)]
pub struct EventStore {
    client: Client,
    js: async_nats::jetstream::Context,
    metrics: StoreMetrics,
    group: crate::group::GroupCommit,
}

impl EventStore {
    /// Appends a job event and a platform event as one atomic batch, each conditional on its
    /// own subject's last sequence. Returns both stream sequences.
    #[tracing::instrument(skip_all, fields(event = env.type_name(), job_id = %env.job_id), err)]
    pub async fn append_with(
        &self,
        env: &Envelope,
        expected_seq: u64,
        other: &events::platform::PlatformEnvelope,
        other_expected_seq: u64,
        traceparent: &str,
    ) -> Result<(u64, u64), AppendError> {
        self.check_connected()?;
        let start = Instant::now();
        let first = OutboundMessage::new(
            job_subject(env.tenant_id, env.job_id).into(),
            env.to_json().into(),
            Some(event_headers(env, traceparent, Some(expected_seq))),
        );
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(events::stream::EVENT_TYPE_HEADER, other.event.type_name());
        headers.insert("traceparent", traceparent);
        headers.insert(
            "Nats-Expected-Last-Subject-Sequence",
            other_expected_seq.to_string().as_str(),
        );
        let second = OutboundMessage::new(
            other.event.subject().into(),
            other.to_json().into(),
            Some(headers),
        );
        let result = publish_atomic(&self.js, vec![first, second]).await;
        self.metrics.latency.observe(start.elapsed().as_secs_f64());
        let first = self.count_conflict(result)?;
        for name in [env.type_name(), other.event.type_name()] {
            self.metrics.appended.with_label_values(&[name]).inc();
        }
        Ok((first, first + 1))
    }

    /// Counts a refused conditional append in `jobs_append_conflicts_total`.
    fn count_conflict<T>(&self, result: Result<T, AppendError>) -> Result<T, AppendError> {
        if matches!(result, Err(AppendError::Conflict)) {
            self.metrics.conflicts.inc();
        }
        result
    }

    /// Starts the group committer on the current runtime (`grouped` false: every append is
    /// published on its own).
    pub fn new(
        client: Client,
        js: async_nats::jetstream::Context,
        metrics: StoreMetrics,
        grouped: bool,
    ) -> Self {
        let group =
            crate::group::GroupCommit::start(js.clone(), metrics.group_size.clone(), grouped);
        Self {
            client,
            js,
            metrics,
            group,
        }
    }

    fn check_connected(&self) -> Result<(), AppendError> {
        // A publish on a disconnected client would sit in its buffer and might be written
        // after we answered 503; refuse up front instead.
        if self.client.connection_state() != State::Connected {
            return Err(AppendError::Unavailable("not connected to NATS".into()));
        }
        Ok(())
    }

    /// Appends one event, conditional on the job's last subject sequence (0 for a new job),
    /// published on its own, or with group commit on (`crate::group`) in one atomic batch with
    /// the appends beside it when the service is busy. Returns the event's stream sequence.
    #[tracing::instrument(skip_all, fields(event = env.type_name(), job_id = %env.job_id), err)]
    pub async fn append(
        &self,
        env: &Envelope,
        traceparent: &str,
        expected_seq: u64,
    ) -> Result<u64, AppendError> {
        self.check_connected()?;
        let start = Instant::now();
        let result = self
            .group
            .write(
                job_subject(env.tenant_id, env.job_id),
                env.to_json().into(),
                event_headers(env, traceparent, Some(expected_seq)),
                env.event_id.to_string(),
            )
            .await;
        self.metrics.latency.observe(start.elapsed().as_secs_f64());
        let written = self.count_conflict(result)?;
        if written.duplicate {
            return self.confirm_duplicate(env, written.seq).await;
        }
        self.metrics
            .appended
            .with_label_values(&[env.type_name()])
            .inc();
        Ok(written.seq)
    }

    /// JetStream answered "duplicate": an event with this id was stored before (a re-run of
    /// an idempotent request). It is ours only if it is the same event on the same subject.
    async fn confirm_duplicate(&self, env: &Envelope, seq: u64) -> Result<u64, AppendError> {
        let stream = self
            .js
            .get_stream(events::stream::STREAM_NAME)
            .await
            .map_err(|e| AppendError::Unavailable(e.to_string()))?;
        let stored = stream
            .get_raw_message(seq)
            .await
            .map_err(|e| AppendError::Unavailable(e.to_string()))?;
        let same = stored.subject.as_str() == job_subject(env.tenant_id, env.job_id)
            && Envelope::from_json(&stored.payload)
                .is_ok_and(|e| e.event_id == env.event_id && e.event == env.event);
        if same {
            Ok(seq)
        } else {
            Err(AppendError::Conflict)
        }
    }

    /// Appends the first events of new jobs as one atomic batch: all are stored or none.
    /// Returns the stream sequence of each, in order.
    ///
    /// Atomic batches refuse `Nats-Msg-Id` (ADR-50); each message instead expects its new
    /// job's subject to be empty, so no job can be created twice.
    #[tracing::instrument(skip_all, fields(count = envs.len()), err)]
    pub async fn append_new_jobs(
        &self,
        envs: &[Envelope],
        traceparent: &str,
    ) -> Result<Vec<u64>, AppendError> {
        let items: Vec<(&Envelope, u64)> = envs.iter().map(|e| (e, 0)).collect();
        self.append_batch(&items, traceparent).await
    }

    /// Appends events of several jobs as one atomic batch, each conditional on its job's last
    /// subject sequence: all are stored or none (a conflict on any refuses all). Returns the
    /// stream sequence of each, in order.
    #[tracing::instrument(skip_all, fields(count = items.len()), err)]
    pub async fn append_batch(
        &self,
        items: &[(&Envelope, u64)],
        traceparent: &str,
    ) -> Result<Vec<u64>, AppendError> {
        self.check_connected()?;
        let start = Instant::now();
        let message = |(env, expected): &(&Envelope, u64)| {
            OutboundMessage::new(
                job_subject(env.tenant_id, env.job_id).into(),
                env.to_json().into(),
                Some(event_headers(env, traceparent, Some(*expected))),
            )
        };
        let result = publish_atomic(&self.js, items.iter().map(message).collect()).await;
        self.metrics.latency.observe(start.elapsed().as_secs_f64());
        let first = self.count_conflict(result)?;
        for (env, _) in items {
            self.metrics
                .appended
                .with_label_values(&[env.type_name()])
                .inc();
        }
        Ok((first..first + items.len() as u64).collect())
    }
}

/// Publishes `messages` as one atomic batch: all are stored or none. It does not wait for the
/// first message's acknowledgement (one round trip per batch). Returns the first message's
/// stream sequence; the others follow it one by one.
pub(crate) async fn publish_atomic(
    js: &async_nats::jetstream::Context,
    mut messages: Vec<OutboundMessage>,
) -> Result<u64, AppendError> {
    let count = messages.len() as u64;
    let last = messages
        .pop()
        .ok_or_else(|| AppendError::Other("empty batch".into()))?;
    let result = async {
        let mut batch = js
            .batch_publish()
            .ack_first(false)
            .timeout(REQUEST_TIMEOUT)
            .build();
        for m in messages {
            batch.add_message(m).await?;
        }
        batch.commit_message(last).await
    }
    .await;
    match result {
        Ok(ack) if ack.batch_size == count => Ok(ack.sequence + 1 - count),
        Ok(ack) => Err(AppendError::Other(format!(
            "the batch ack counts {} messages, not {count}",
            ack.batch_size
        ))),
        Err(e) => Err(batch_error(e)),
    }
}

/// What an atomic batch's failure means: a conflict (some message's expected sequence was
/// wrong: nothing stored), our own mistake in building it, or the store not answering.
fn batch_error(e: jetstream_extra::batch_publish::BatchPublishError) -> AppendError {
    if e.to_string().contains("wrong last sequence") {
        return AppendError::Conflict;
    }
    match e.kind() {
        BatchPublishErrorKind::MaxMessagesExceeded
        | BatchPublishErrorKind::EmptyBatch
        | BatchPublishErrorKind::BatchClosed
        | BatchPublishErrorKind::BatchPublishUnsupportedHeader
        | BatchPublishErrorKind::BatchPublishDuplicateMsgId
        | BatchPublishErrorKind::BatchPublishNotEnabled => AppendError::Other(e.to_string()),
        _ => AppendError::Unavailable(e.to_string()),
    }
}

impl EventStore {
    /// Appends a tenant or worker event (last write wins: no expected sequence).
    #[tracing::instrument(skip_all, fields(event = env.event.type_name()), err)]
    pub async fn append_platform(
        &self,
        env: &events::platform::PlatformEnvelope,
        traceparent: &str,
    ) -> Result<u64, AppendError> {
        self.check_connected()?;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(events::stream::EVENT_TYPE_HEADER, env.event.type_name());
        headers.insert("traceparent", traceparent);
        let publish = PublishMessage::build()
            .payload(env.to_json().into())
            .headers(headers)
            .message_id(env.event_id.to_string());
        let result = async {
            let ack = self.js.send_publish(env.event.subject(), publish).await?;
            ack.await
        }
        .await;
        match result {
            Ok(ack) => {
                self.metrics
                    .appended
                    .with_label_values(&[env.event.type_name()])
                    .inc();
                Ok(ack.sequence)
            }
            // Whatever the event store answered (no responders while a cluster elects a
            // leader, "temporarily unavailable", a timeout): it stored nothing we know of.
            Err(e) => Err(AppendError::Unavailable(e.to_string())),
        }
    }
}

impl EventStore {
    /// Appends a schedule event, conditional on the schedule's last subject sequence (0 for a
    /// new schedule). A duplicate (the same event id within JetStream's window: the re-run of
    /// an idempotent request, whose ids derive from its key) answers the stored sequence.
    #[tracing::instrument(skip_all, fields(event = env.event.type_name()), err)]
    pub async fn append_schedule(
        &self,
        env: &events::schedule::ScheduleEnvelope,
        traceparent: &str,
        expected_seq: u64,
    ) -> Result<u64, AppendError> {
        self.check_connected()?;
        let start = Instant::now();
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(events::stream::EVENT_TYPE_HEADER, env.event.type_name());
        headers.insert("traceparent", traceparent);
        headers.insert(
            "Nats-Expected-Last-Subject-Sequence",
            expected_seq.to_string().as_str(),
        );
        let publish = PublishMessage::build()
            .payload(env.to_json().into())
            .headers(headers)
            .message_id(env.event_id.to_string());
        let result = async {
            let ack = self.js.send_publish(env.subject(), publish).await?;
            ack.await
        }
        .await;
        self.metrics.latency.observe(start.elapsed().as_secs_f64());
        match result {
            Ok(ack) => {
                if !ack.duplicate {
                    self.metrics
                        .appended
                        .with_label_values(&[env.event.type_name()])
                        .inc();
                }
                Ok(ack.sequence)
            }
            Err(e) => Err(match e.kind() {
                PublishErrorKind::WrongLastSequence => {
                    self.metrics.conflicts.inc();
                    AppendError::Conflict
                }
                _ => AppendError::Unavailable(e.to_string()),
            }),
        }
    }
}
