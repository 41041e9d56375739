//! How fresh the read model is: the projector's checkpoint, kept current by LISTEN on the
//! projector's NOTIFY channel. `x-min-event-seq: N` waits (up to 5 s) until N is applied;
//! every read answers `x-projection-seq`.

use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue};
use axum::response::Response;
use common::db::{read_checkpoint, NOTIFY_CHANNEL};
use common::ApiError;
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub const MAX_WAIT: Duration = Duration::from_secs(5);

/// Follows the checkpoint: LISTEN for notifications, re-reading the checkpoint after any
/// reconnect so that nothing missed meanwhile is lost.
pub async fn follow(pool: PgPool, tx: watch::Sender<u64>, stop: CancellationToken) {
    let mut backoff = Duration::from_millis(100);
    while !stop.is_cancelled() {
        let result: anyhow::Result<()> = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen(NOTIFY_CHANNEL).await?;
            tx.send_max(read_checkpoint(&pool).await?);
            backoff = Duration::from_millis(100);
            loop {
                let n = tokio::select! {
                    n = listener.try_recv() => n?,
                    _ = stop.cancelled() => return Ok(()),
                };
                match n {
                    Some(n) => {
                        if let Ok(seq) = n.payload().parse::<u64>() {
                            tx.send_max(seq);
                        }
                    }
                    // The connection dropped and will be re-established: catch up first.
                    None => tx.send_max(read_checkpoint(&pool).await?),
                }
            }
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(
                error = format!("{e:#}"),
                "following the projection checkpoint failed; retrying"
            );
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.cancelled() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}

trait SendMax {
    fn send_max(&self, v: u64);
}

impl SendMax for watch::Sender<u64> {
    fn send_max(&self, v: u64) {
        self.send_if_modified(|cur| {
            if v > *cur {
                *cur = v;
                true
            } else {
                false
            }
        });
    }
}

/// Honours `x-min-event-seq`; returns the sequence the answer will reflect at least.
pub async fn wait_for(rx: &watch::Receiver<u64>, headers: &HeaderMap) -> Result<u64, ApiError> {
    let Some(v) = headers.get("x-min-event-seq") else {
        return Ok(*rx.borrow());
    };
    let want: u64 = v
        .to_str()
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| ApiError::validation("x-min-event-seq", "must be a non-negative integer"))?;
    let mut rx = rx.clone();
    let _ = tokio::time::timeout(MAX_WAIT, rx.wait_for(|seq| *seq >= want)).await;
    let seq = *rx.borrow();
    Ok(seq)
}

/// Adds `x-projection-seq` to a response.
pub fn stamp(mut res: Response, seq: u64) -> Response {
    res.headers_mut()
        .insert("x-projection-seq", HeaderValue::from(seq));
    res
}
