//! Group commit (`JOBS_GROUP_COMMIT=true`; off by default). Conditional single-event appends
//! that arrive while earlier ones are being written leave together as one atomic batch: one
//! write to the event store — one fsync with `sync_interval: always` — for many requests. An
//! append that finds nobody waiting beside it goes out alone, as a plain publish with its
//! `Nats-Msg-Id`, so an idle service answers as fast as before and only a busy one batches.
//!
//! Measured on this project's 2-core machine (docs/performance.md) it did not pay: appends
//! were bound by CPU well before fsync (single publishes reach 7,500/s fsynced, enqueue
//! 3,400/s), and an atomic batch costs the server more CPU per event than plain publishes
//! (NATS: 107 against 48 µs per enqueue with the default sync). Where fsync is the bound —
//! slow or networked disks — it turns many fsyncs into one.
//!
//! A batch is all or nothing: when any of its events finds its subject moved on (a lost race,
//! or two requests on one job in the same group), the store refuses the whole batch, and each
//! event is then published on its own, pipelined, to learn which won. Nothing is answered
//! before the store has acknowledged it.

use std::sync::Arc;

use async_nats::jetstream::context::{PublishAckFuture, PublishErrorKind};
use async_nats::jetstream::message::{OutboundMessage, PublishMessage};
use async_nats::HeaderMap;
use bytes::Bytes;
use prometheus::Histogram;
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::store::AppendError;

/// Events in one group at most (the server takes up to 1,000 in an atomic batch).
const MAX_GROUP: usize = 256;
/// Groups written at once: while they are in flight the next ones fill up.
const GROUPS_IN_FLIGHT: usize = 4;

/// What the store answered for one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub seq: u64,
    /// JetStream had an event with this `Nats-Msg-Id` already (only on a lone publish).
    pub duplicate: bool,
}

pub struct Pending {
    pub subject: String,
    pub payload: Bytes,
    /// With `Nats-Expected-Last-Subject-Sequence`; never `Nats-Msg-Id` (batches refuse it).
    pub headers: HeaderMap,
    pub msg_id: String,
    pub reply: oneshot::Sender<Result<Written, AppendError>>,
}

#[derive(Clone)]
pub struct GroupCommit {
    /// None: group commit is off, every write is published on its own.
    tx: Option<mpsc::UnboundedSender<Pending>>,
    js: async_nats::jetstream::Context,
}

impl GroupCommit {
    /// Starts the committer on the current runtime; it ends when every handle is dropped.
    /// With `grouped` false nothing is started and every write goes out alone.
    pub fn start(js: async_nats::jetstream::Context, group_size: Histogram, grouped: bool) -> Self {
        let tx = grouped.then(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(run(js.clone(), rx, group_size));
            tx
        });
        Self { tx, js }
    }

    /// Writes one event (alone or in a group) and waits for the store's answer.
    pub async fn write(
        &self,
        subject: String,
        payload: Bytes,
        headers: HeaderMap,
        msg_id: String,
    ) -> Result<Written, AppendError> {
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            subject,
            payload,
            headers,
            msg_id,
            reply,
        };
        let Some(tx) = &self.tx else {
            commit(&self.js, vec![pending]).await;
            return answer.await.unwrap_or_else(|_| {
                Err(AppendError::Unavailable("the append was dropped".into()))
            });
        };
        tx.send(pending)
            .map_err(|_| AppendError::Unavailable("the committer has stopped".into()))?;
        answer
            .await
            .unwrap_or_else(|_| Err(AppendError::Unavailable("the committer has stopped".into())))
    }
}

async fn run(
    js: async_nats::jetstream::Context,
    mut rx: mpsc::UnboundedReceiver<Pending>,
    group_size: Histogram,
) {
    let slots = Arc::new(Semaphore::new(GROUPS_IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        // Wait for a slot before gathering: what arrives meanwhile joins this group.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(p) => group.push(p),
                Err(_) => break,
            }
        }
        group_size.observe(group.len() as f64);
        let js = js.clone();
        tokio::spawn(async move {
            commit(&js, group).await;
            drop(slot);
        });
    }
}

async fn commit(js: &async_nats::jetstream::Context, mut group: Vec<Pending>) {
    if group.len() > 1 {
        let messages = group
            .iter()
            .map(|p| {
                OutboundMessage::new(
                    p.subject.clone().into(),
                    p.payload.clone(),
                    Some(p.headers.clone()),
                )
            })
            .collect();
        match crate::store::publish_atomic(js, messages).await {
            Ok(first) => {
                for (p, seq) in group.into_iter().zip(first..) {
                    let _ = p.reply.send(Ok(Written {
                        seq,
                        duplicate: false,
                    }));
                }
                return;
            }
            // Some event lost its race: nothing was stored; find out which, one by one.
            Err(AppendError::Conflict) => {}
            Err(e) => {
                for p in group {
                    let _ = p.reply.send(Err(e.clone()));
                }
                return;
            }
        }
    }
    // Alone, or after a refused batch: every event published on its own, pipelined.
    let mut acks: Vec<(Pending, Result<PublishAckFuture, AppendError>)> =
        Vec::with_capacity(group.len());
    for p in group.drain(..) {
        let publish = PublishMessage::build()
            .payload(p.payload.clone())
            .headers(p.headers.clone())
            .message_id(&p.msg_id);
        let sent = js
            .send_publish(p.subject.clone(), publish)
            .await
            .map_err(|e| AppendError::Unavailable(e.to_string()));
        acks.push((p, sent));
    }
    for (p, sent) in acks {
        let answer = match sent {
            Ok(ack) => match ack.await {
                Ok(ack) => Ok(Written {
                    seq: ack.sequence,
                    duplicate: ack.duplicate,
                }),
                Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                    Err(AppendError::Conflict)
                }
                // Anything else the event store answered (no responders while a cluster
                // elects a leader, "temporarily unavailable", a timeout): it stored nothing.
                Err(e) => Err(AppendError::Unavailable(e.to_string())),
            },
            Err(e) => Err(e),
        };
        let _ = p.reply.send(answer);
    }
}
