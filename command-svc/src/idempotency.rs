//! `Idempotency-Key` on every POST/PATCH/DELETE, scoped per tenant, remembered 24 h in a NATS
//! KV bucket (so it holds across restarts and instances).
//!
//! The first request for a (tenant, key) records "in flight" with `create` (only one caller can
//! win it), runs, and records its response. The same key with the same method, path and body
//! replays that response with `Idempotent-Replayed: true`; with another request it is a 422; while
//! the first is still running it is a 409. A record left "in flight" by a crashed process is taken
//! over after `IN_FLIGHT_TTL` (a compare-and-set on its revision); the re-run derives the same ids
//! (see `ids`), so it cannot create a second job. A 5xx answer (nothing was written) forgets the
//! key so the client can retry; so does a 429 (over a limit for now).

use std::time::Duration;

use async_nats::jetstream::kv::{self, CreateErrorKind, Operation};
use axum::body::{to_bytes, Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use common::auth::AuthUser;
use common::ApiError;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ids;
use crate::startup::AppState;

pub const BUCKET: &str = "JOBS_IDEMPOTENCY";
pub const TTL: Duration = Duration::from_secs(24 * 3600);
pub const IN_FLIGHT_TTL: Duration = Duration::from_secs(30);
const HEADER: &str = "idempotency-key";
/// Response headers worth replaying.
const KEPT: [&str; 4] = ["x-event-seq", "location", "etag", "content-type"];

/// Opens (creating if absent) the bucket of remembered keys.
pub async fn bucket(
    js: &async_nats::jetstream::Context,
    replicas: usize,
) -> anyhow::Result<kv::Store> {
    if let Ok(store) = js.get_key_value(BUCKET).await {
        return Ok(store);
    }
    js.create_key_value(kv::Config {
        bucket: BUCKET.to_string(),
        description: "Idempotency-Key records: the first response per (tenant, key), 24 h".into(),
        history: 1,
        max_age: TTL,
        storage: async_nats::jetstream::stream::StorageType::File,
        num_replicas: replicas.max(1),
        ..Default::default()
    })
    .await
    .map_err(|e| anyhow::anyhow!("creating the {BUCKET} bucket: {e}"))
}

#[derive(Debug, Serialize, Deserialize)]
struct Record {
    fingerprint: String,
    started_ms: u64,
    #[serde(default)]
    done: Option<Stored>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    status: u16,
    headers: Vec<(String, String)>,
    body_b64: String,
}

fn now_ms() -> u64 {
    chrono::Utc::now().timestamp_millis().max(0) as u64
}

fn valid_key(k: &str) -> bool {
    (1..=255).contains(&k.len()) && k.bytes().all(|b| (0x20..=0x7e).contains(&b))
}

fn replay(stored: &Stored) -> Response {
    let body = base64::engine::general_purpose::STANDARD
        .decode(&stored.body_b64)
        .unwrap_or_default();
    let mut res = Response::new(Body::from(body));
    *res.status_mut() = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
    for (k, v) in &stored.headers {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            res.headers_mut().insert(k, v);
        }
    }
    res.headers_mut()
        .insert("idempotent-replayed", HeaderValue::from_static("true"));
    res
}

fn kept(headers: &HeaderMap) -> Vec<(String, String)> {
    KEPT.iter()
        .filter_map(|k| {
            headers
                .get(*k)
                .and_then(|v| v.to_str().ok())
                .map(|v| (k.to_string(), v.to_string()))
        })
        .collect()
}

/// Middleware for the public write routes (inside authentication).
pub async fn layer(State(state): State<AppState>, req: Request, next: Next) -> Response {
    match handle(&state, req, next).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn handle(state: &AppState, req: Request, next: Next) -> Result<Response, ApiError> {
    let Some(raw) = req.headers().get(HEADER) else {
        return Ok(next.run(req).await);
    };
    let key = raw.to_str().ok().filter(|k| valid_key(k)).ok_or_else(|| {
        ApiError::validation(
            "Idempotency-Key",
            "must be 1 to 255 printable ASCII characters",
        )
    })?;
    let tenant = req
        .extensions()
        .get::<AuthUser>()
        .map(|u| u.tenant_id())
        .ok_or_else(|| ApiError::Unauthenticated("this route needs a bearer token".into()))?;
    let kv_key = format!("{tenant}.{}", hex::encode(Sha256::digest(key.as_bytes())));
    let (parts, body) = req.into_parts();
    let bytes: Bytes = to_bytes(body, state.max_body_bytes).await.map_err(|_| {
        ApiError::PayloadTooLarge("the request body is larger than this route accepts".into())
    })?;
    let fingerprint = hex::encode(
        Sha256::new()
            .chain_update(parts.method.as_str())
            .chain_update(b" ")
            .chain_update(parts.uri.path_and_query().map_or("", |p| p.as_str()))
            .chain_update(b"\n")
            .chain_update(&bytes)
            .finalize(),
    );
    let unavailable =
        |e: &dyn std::fmt::Display| ApiError::Unavailable(format!("idempotency store: {e}"));

    let mut claimed = None;
    for _ in 0..3 {
        let fresh = Record {
            fingerprint: fingerprint.clone(),
            started_ms: now_ms(),
            done: None,
        };
        match state
            .idempotency
            .create(
                &kv_key,
                serde_json::to_vec(&fresh).expect("serializes").into(),
            )
            .await
        {
            Ok(rev) => {
                claimed = Some((rev, fresh.started_ms));
                break;
            }
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {}
            Err(e) => return Err(unavailable(&e)),
        }
        let Some(entry) = state
            .idempotency
            .entry(&kv_key)
            .await
            .map_err(|e| unavailable(&e))?
        else {
            continue;
        };
        if entry.operation != Operation::Put {
            continue;
        }
        let rec: Record =
            serde_json::from_slice(&entry.value).map_err(|e| ApiError::Internal(e.into()))?;
        if rec.fingerprint != fingerprint {
            return Err(ApiError::IdempotencyKeyReused);
        }
        if let Some(stored) = &rec.done {
            return Ok(replay(stored));
        }
        if now_ms().saturating_sub(rec.started_ms) < IN_FLIGHT_TTL.as_millis() as u64 {
            return Err(ApiError::IdempotencyInProgress);
        }
        // The first attempt died in flight: take it over, keeping its time so the ids match.
        let takeover = Record {
            fingerprint: fingerprint.clone(),
            started_ms: rec.started_ms,
            done: None,
        };
        if let Ok(rev) = state
            .idempotency
            .update(
                &kv_key,
                serde_json::to_vec(&takeover).expect("serializes").into(),
                entry.revision,
            )
            .await
        {
            claimed = Some((rev, rec.started_ms));
            break;
        }
    }
    let Some((revision, started_ms)) = claimed else {
        return Err(ApiError::IdempotencyInProgress);
    };

    let seed_bytes: [u8; 32] = Sha256::new()
        .chain_update(kv_key.as_bytes())
        .chain_update(fingerprint.as_bytes())
        .finalize()
        .into();
    let req = Request::from_parts(parts, Body::from(bytes));
    let res = ids::with_seed(ids::Seed::new(seed_bytes, started_ms), next.run(req)).await;

    let (parts, body) = res.into_parts();
    let body = to_bytes(body, usize::MAX)
        .await
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("{e}")))?;
    if parts.status.is_server_error() || parts.status == StatusCode::TOO_MANY_REQUESTS {
        // Nothing was written (unavailable, or over a limit for now): let the client try
        // again with the same key.
        let _ = state.idempotency.delete(&kv_key).await;
    } else {
        let done = Record {
            fingerprint,
            started_ms,
            done: Some(Stored {
                status: parts.status.as_u16(),
                headers: kept(&parts.headers),
                body_b64: base64::engine::general_purpose::STANDARD.encode(&body),
            }),
        };
        if let Err(e) = state
            .idempotency
            .update(
                &kv_key,
                serde_json::to_vec(&done).expect("serializes").into(),
                revision,
            )
            .await
        {
            tracing::warn!(error = %e, "recording an idempotent response failed; a retry will re-run it");
        }
    }
    Ok(Response::from_parts(parts, Body::from(body)))
}
