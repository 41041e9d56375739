//! New ids for jobs and events. Inside a request that carries an `Idempotency-Key` they are
//! derived from the key (UUIDv7 layout: the first attempt's time, then bits of a hash of the
//! tenant, key, request and a counter), so a request re-run after a crash produces the same job
//! id and event ids: the same subject (expected sequence 0 refuses a second job) and the same
//! `Nats-Msg-Id` (JetStream deduplicates it within its window).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use uuid::Uuid;

pub struct Seed {
    pub bytes: [u8; 32],
    pub millis: u64,
    counter: AtomicU64,
}

impl Seed {
    pub fn new(bytes: [u8; 32], millis: u64) -> Arc<Self> {
        Arc::new(Self {
            bytes,
            millis,
            counter: AtomicU64::new(0),
        })
    }
}

tokio::task_local! {
    static SEED: Arc<Seed>;
}

/// Runs `f` with ids derived from `seed`.
pub async fn with_seed<F: std::future::Future>(seed: Arc<Seed>, f: F) -> F::Output {
    SEED.scope(seed, f).await
}

fn derived(s: &Seed, parts: &[&[u8]]) -> Uuid {
    let mut h = Sha256::new().chain_update(s.bytes);
    for p in parts {
        h = h.chain_update(p);
    }
    let h = h.finalize();
    let mut rand = [0u8; 10];
    rand.copy_from_slice(&h[..10]);
    uuid::Builder::from_unix_timestamp_millis(s.millis, &rand).into_uuid()
}

/// A new job id (UUIDv7): the n-th of this request when it carries an idempotency seed.
pub fn job_id() -> Uuid {
    SEED.try_with(|s| {
        let n = s.counter.fetch_add(1, Ordering::Relaxed);
        derived(s, &[b"job", &n.to_le_bytes()])
    })
    .unwrap_or_else(|_| Uuid::now_v7())
}

/// The id of the event appended to `job` after its event `after_seq`: under an idempotency
/// seed the same for the same job and position, whatever order a re-run goes in.
pub fn event_id(job: Uuid, after_seq: u64) -> Uuid {
    SEED.try_with(|s| derived(s, &[b"event", job.as_bytes(), &after_seq.to_le_bytes()]))
        .unwrap_or_else(|_| Uuid::now_v7())
}
