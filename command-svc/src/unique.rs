//! Unique jobs: at most one job per (tenant, `unique.key`) in the states the enqueue names.
//!
//! The key is claimed in the KV bucket `JOBS_UNIQUE` (`<tenant>.<sha-256 of the key>` → the
//! holding job's id) with a create — atomic across every command-svc instance — before the job
//! is appended. A later enqueue with the same key finds the holder; if the holder is still in
//! one of the states (or within `ttl_seconds`), it is the answer (`deduplicated: true`);
//! otherwise the key has been released by the holder's own progress and is taken over with a
//! compare-and-set on the entry's revision. Nothing has to run when a job finishes, so a key
//! can never stay locked by a job that moved on; a claim whose job never got appended (its
//! enqueue failed or crashed) is taken over once it is older than `ORPHAN_AFTER`.

use std::time::Duration;

use async_nats::jetstream::kv;
use chrono::{DateTime, Utc};
use common::ApiError;
use events::{Job, UniqueSpec};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::startup::AppState;

pub const BUCKET: &str = "JOBS_UNIQUE";
/// A claim whose job is not in the stream after this long is an orphan.
const ORPHAN_AFTER: Duration = Duration::from_secs(10);
/// How long one enqueue keeps trying to claim a contended key.
const CLAIM_BUDGET: Duration = Duration::from_secs(15);

/// Opens (creating if absent) the bucket of unique-key claims.
pub async fn bucket(
    js: &async_nats::jetstream::Context,
    replicas: usize,
) -> anyhow::Result<kv::Store> {
    if let Ok(store) = js.get_key_value(BUCKET).await {
        return Ok(store);
    }
    js.create_key_value(kv::Config {
        bucket: BUCKET.to_string(),
        description: "Unique-job keys: (tenant, key) -> the job holding it".into(),
        history: 1,
        storage: async_nats::jetstream::stream::StorageType::File,
        num_replicas: replicas.max(1),
        ..Default::default()
    })
    .await
    .map_err(|e| anyhow::anyhow!("creating the {BUCKET} bucket: {e}"))
}

#[derive(Serialize, Deserialize)]
struct Claim {
    job_id: Uuid,
}

/// What claiming a key found.
pub enum Claimed {
    /// The key is the new job's: append it.
    Mine,
    /// Another job holds the key: it is the answer.
    Held(Box<Job>),
}

fn kv_key(tenant: Uuid, key: &str) -> String {
    format!("{tenant}.{}", events::platform::hash_token(key))
}

fn unavailable(e: impl std::fmt::Display) -> ApiError {
    ApiError::Unavailable(format!("unique keys: {e}"))
}

/// Claims `spec.key` of `tenant` for `job_id`, or finds the job that holds it.
pub async fn claim(
    state: &AppState,
    tenant: Uuid,
    spec: &UniqueSpec,
    job_id: Uuid,
    now: DateTime<Utc>,
) -> Result<Claimed, ApiError> {
    let key = kv_key(tenant, &spec.key);
    let value: bytes::Bytes = serde_json::to_vec(&Claim { job_id })
        .expect("a claim serializes")
        .into();
    let deadline = tokio::time::Instant::now() + CLAIM_BUDGET;
    while tokio::time::Instant::now() < deadline {
        match state.unique.create(&key, value.clone()).await {
            Ok(_) => return Ok(Claimed::Mine),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
            Err(e) => return Err(unavailable(e)),
        }
        let Some(entry) = state.unique.entry(&key).await.map_err(unavailable)? else {
            continue; // gone meanwhile: create again
        };
        let holder = serde_json::from_slice::<Claim>(&entry.value).ok();
        let job = match &holder {
            Some(c) => state.engine.current(Some(tenant), c.job_id).await?,
            None => None,
        };
        match job {
            Some(j) if spec.blocks(&j, now) => return Ok(Claimed::Held(Box::new(j))),
            Some(_) => {} // released: the holder left the states
            None => {
                // Claimed but not appended (yet): an enqueue in flight, or one that died.
                let age = Utc::now().timestamp() - entry.created.unix_timestamp();
                if holder.is_some() && age < ORPHAN_AFTER.as_secs() as i64 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            }
        }
        match state
            .unique
            .update(&key, value.clone(), entry.revision)
            .await
        {
            Ok(_) => return Ok(Claimed::Mine),
            Err(_) => continue, // someone else moved it: look again
        }
    }
    Err(ApiError::Unavailable(
        "the unique key is contended; retry".into(),
    ))
}
