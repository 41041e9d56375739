//! The follower: keeps the write model in step with `JOBS_EVENTS`. At start it replays the
//! stream from the beginning (an ordered consumer, in stream order), then keeps following; on
//! any interruption it resumes after the last sequence it folded in. It reads every subject so
//! its position can be compared with the stream's last sequence; only job events are folded.
//! The timer task moves jobs whose time has come into the ready index and expires leases that
//! ran out.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use events::envelope::DecodeError;
use events::platform::PlatformEnvelope;
use events::stream::{parse_job_subject, STREAM_NAME};
use events::{Actor, Command, Envelope, JobEvent, Recorded};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::engine::Engine;
use crate::model::{Due, Folded};

pub async fn follow(engine: Arc<Engine>, stop: CancellationToken) {
    let mut backoff = Duration::from_millis(100);
    while !stop.is_cancelled() {
        match follow_once(&engine, &stop).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "following JOBS_EVENTS interrupted; resuming"
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

async fn follow_once(engine: &Arc<Engine>, stop: &CancellationToken) -> anyhow::Result<()> {
    let start = *engine.position.borrow() + 1;
    let stream = engine
        .js
        .get_stream(STREAM_NAME)
        .await
        .context("getting JOBS_EVENTS")?;
    let mut consumer = stream
        .create_consumer(pull::OrderedConfig {
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: start,
            },
            ..Default::default()
        })
        .await
        .context("creating the write model's consumer")?;
    if consumer.info().await.context("consumer info")?.num_pending == 0 {
        mark_caught_up(engine);
    }
    let messages = consumer.messages().await.context("following JOBS_EVENTS")?;
    // Decoding (JSON) runs in a task of its own, beside the folding: a replay after a restart
    // uses both cores instead of one.
    let (tx, mut decoded) = tokio::sync::mpsc::channel(DECODED_AHEAD);
    let _decoder = AbortOnDropHandle::new(tokio::spawn(decode(engine.clone(), messages, tx)));
    loop {
        let next = tokio::select! {
            m = decoded.recv() => m,
            _ = stop.cancelled() => return Ok(()),
        };
        let Decoded { seq, pending, item } = next.context("the consumer ended")??;
        match item {
            Item::Job(Ok(envelope)) => {
                engine.schedules.observe(&envelope);
                fold(engine, seq, *envelope).await?
            }
            Item::Platform(Ok(env)) => {
                engine.model().fold_platform(&env.event);
                if let events::platform::PlatformEvent::ConcurrencySlotTaken {
                    tenant_id,
                    concurrency_key,
                    ..
                } = &env.event
                {
                    engine.model().note_slot(*tenant_id, concurrency_key, seq);
                }
                // A resumed queue or type (or undrained worker): waiting workers may take
                // its jobs now.
                if matches!(env.event.pause(), Some((_, _, false))) {
                    engine.waiters.wake_all();
                }
            }
            // Written by a newer version: stop here until this one is upgraded.
            Item::Job(Err(e @ DecodeError::TooNew(_)))
            | Item::Platform(Err(e @ DecodeError::TooNew(_))) => {
                anyhow::bail!("seq {seq}: {e}")
            }
            Item::Job(Err(e)) | Item::Platform(Err(e)) => {
                tracing::error!(seq, error = %e, "undecodable event; skipped")
            }
            Item::Schedule { subject, payload } => {
                crate::scheduler::fold_message(engine, &subject, seq, &payload)?
            }
            Item::Reflected | Item::Other => {}
        }
        engine.position.send_if_modified(|p| {
            let moved = seq > *p;
            *p = (*p).max(seq);
            moved
        });
        if pending == 0 {
            mark_caught_up(engine);
        }
    }
}

/// How many decoded messages may wait for the fold.
const DECODED_AHEAD: usize = 4096;

/// A stream message, decoded.
struct Decoded {
    seq: u64,
    /// Messages after this one in the stream when it was delivered.
    pending: u64,
    item: Item,
}

enum Item {
    /// A job event the model already reflects (the echo of this instance's own append): not
    /// decoded at all.
    Reflected,
    /// Boxed: an envelope is large beside the other variants.
    Job(Result<Box<Envelope>, DecodeError>),
    Platform(Result<PlatformEnvelope, DecodeError>),
    Schedule {
        subject: async_nats::Subject,
        payload: bytes::Bytes,
    },
    /// Not something the write model follows.
    Other,
}

/// Decodes the consumer's messages in order and hands them on, until the stream fails or the
/// receiver is gone. A job event the model already reflects is not decoded: under load most
/// of what the follower reads is the echo of this instance's own appends, folded already. The
/// model's sequence per job only grows, so an event reflected now is still reflected when the
/// fold comes to it.
async fn decode(
    engine: Arc<Engine>,
    mut messages: pull::Ordered,
    out: tokio::sync::mpsc::Sender<anyhow::Result<Decoded>>,
) {
    while let Some(next) = messages.next().await {
        let decoded = next.map_err(|e| anyhow::anyhow!("{e}")).and_then(|msg| {
            let info = msg
                .info()
                .map_err(|e| anyhow::anyhow!("message info: {e}"))?;
            let (seq, pending) = (info.stream_sequence, info.pending);
            let item = if let Some((_, job)) = parse_job_subject(&msg.subject) {
                if engine.model().reflects(&job, seq) {
                    Item::Reflected
                } else {
                    Item::Job(Envelope::from_json(&msg.payload).map(Box::new))
                }
            } else if msg.subject.starts_with("jobs.tenants.")
                || msg.subject.starts_with("jobs.workers.")
            {
                Item::Platform(PlatformEnvelope::from_json(&msg.payload))
            } else if msg.subject.starts_with("jobs.schedules.") {
                Item::Schedule {
                    subject: msg.subject.clone(),
                    payload: msg.payload.clone(),
                }
            } else {
                Item::Other
            };
            Ok(Decoded { seq, pending, item })
        });
        let failed = decoded.is_err();
        if out.send(decoded).await.is_err() || failed {
            return;
        }
    }
}

async fn fold(engine: &Engine, seq: u64, envelope: Envelope) -> anyhow::Result<()> {
    let (tenant, job) = (envelope.tenant_id, envelope.job_id);
    let requeued = matches!(envelope.event, JobEvent::Requeued { .. });
    let enqueued = matches!(envelope.event, JobEvent::Enqueued { .. });
    let folded = engine.fold(&Recorded { seq, envelope });
    if folded.is_none() {
        heal(engine, tenant, job).await;
    }
    if enqueued && matches!(folded, Some(Folded::Applied { .. })) && !engine.is_own_enqueue(&job) {
        // Enqueued through another instance (our own are marked while appended, and folded
        // at once after): it counts against the tenant's rate here too.
        engine.rate.observe(tenant, 1, std::time::Instant::now());
    }
    if folded == Some(Folded::Unknown) && requeued {
        // A finished job came back (retry, redrive): its history is in the stream. On failure,
        // resume at this event rather than lose the job.
        match engine.load(tenant, job).await {
            Ok(Some(state)) => engine.absorb(state),
            Ok(None) => {}
            Err(e) => anyhow::bail!("loading requeued job {job}: {e}"),
        }
    }
    Ok(())
}

/// The model refused one of the job's events (counted and logged by `Engine::fold`): its copy
/// of the job is not the stream's, through a bug or a corrupt stream. The job's state is taken
/// from its history instead, as a replay would build it, rather than kept as a copy that
/// refuses every later event and whose timers retry forever. If the history does not fold
/// either (a corrupt stream), the model keeps its copy, as before.
async fn heal(engine: &Engine, tenant: uuid::Uuid, job: uuid::Uuid) {
    match engine.load(tenant, job).await {
        Ok(Some(state)) => {
            tracing::warn!(
                %job,
                seq = state.last_event_seq,
                status = state.status.as_str(),
                "the write model took the job's state from its history"
            );
            engine.absorb(state);
        }
        Ok(None) => engine.update(|m| m.forget(&job)),
        Err(e) => tracing::error!(
            %job,
            error = %e,
            "the job's history does not fold either; the write model keeps its copy"
        ),
    }
}

fn mark_caught_up(engine: &Engine) {
    if !engine.caught_up.swap(true, Ordering::Relaxed) {
        tracing::info!(
            position = *engine.position.borrow(),
            jobs = engine.model().live_jobs(),
            "write model caught up"
        );
        engine.waiters.wake_all();
    }
}

/// Puts a timed command's job back under watch, to be tried again at `at`: its expiry (lease
/// or waiting job) or its dependencies.
fn look_again(
    engine: &Engine,
    job_id: uuid::Uuid,
    cmd: &Command,
    at: chrono::DateTime<chrono::Utc>,
) {
    match cmd {
        Command::Expire => engine.update(|m| m.rewatch_expiry(&job_id, at)),
        Command::Cancel { .. } => engine.update(|m| m.recheck(&job_id, at)),
        _ => engine.update(|m| m.rewatch(&job_id, at)),
    }
}

/// Makes scheduled jobs ready when due and expires leases that ran out.
pub async fn run_timers(engine: Arc<Engine>, stop: CancellationToken) {
    loop {
        let now = common::now();
        let (_, due, next) = engine.update(|m| m.tick(now));
        for d in due {
            let (job_id, cmd) = match d {
                Due::LeaseExpired { job_id, lease_id } => {
                    (job_id, Command::ExpireLease { lease_id })
                }
                Due::Expired { job_id } => (job_id, Command::Expire),
                Due::DependencyFailed {
                    job_id,
                    dependency,
                    status,
                } => (
                    job_id,
                    Command::Cancel {
                        reason: Some(format!("dependency {dependency} ended {}", status.as_str())),
                    },
                ),
            };
            if !engine.is_caught_up() {
                // While replaying, a lease (or a waiting job) may look due only because what
                // followed is not replayed yet: look again once caught up.
                look_again(&engine, job_id, &cmd, now + chrono::Duration::seconds(1));
                continue;
            }
            let engine = engine.clone();
            tokio::spawn(async move {
                match engine
                    .act_unanswered(job_id, &cmd, &Actor::system("command-svc"))
                    .await
                {
                    Ok(_) | Err(common::ApiError::LeaseLost) => {}
                    // The job moved on (leased, cancelled) before its expiry or cancel was
                    // appended.
                    Err(common::ApiError::InvalidState(_))
                        if matches!(cmd, Command::Expire | Command::Cancel { .. }) => {}
                    Err(e) => {
                        tracing::warn!(%job_id, error = %e, "a timed command failed; will retry");
                        let again = common::now() + chrono::Duration::seconds(1);
                        look_again(&engine, job_id, &cmd, again);
                        engine.timers.notify_one();
                    }
                }
            });
        }
        engine.observe();
        let sleep = next
            .map(|at| (at - common::now()).to_std().unwrap_or(Duration::ZERO))
            .unwrap_or(Duration::from_secs(1))
            .min(Duration::from_secs(1));
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            _ = engine.timers.notified() => {}
            _ = stop.cancelled() => return,
        }
    }
}
