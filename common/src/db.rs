//! The read model's Postgres side that projector and query-svc share: the migrations (owned by
//! the projector, which runs them), connecting, readiness and the checkpoint.

use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

/// The read model's schema. The projector runs it at start; query-svc only checks it.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// The channel the projector NOTIFYs after each committed batch; the payload is the checkpoint.
pub const NOTIFY_CHANNEL: &str = "jobs_projection";

/// Connects to Postgres, retrying for up to `wait`.
pub async fn connect(url: &str, max: u32, wait: Duration) -> anyhow::Result<PgPool> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let attempt = PgPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(Duration::from_secs(3))
            .connect(url)
            .await;
        match attempt {
            Ok(p) => return Ok(p),
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(error = %e, "Postgres not reachable yet; retrying");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => return Err(e).context("JOBS_DATABASE_URL: connecting to Postgres"),
        }
    }
}

/// Readiness of Postgres: reachable, and the schema is at the latest migration.
pub async fn check_ready(pool: &PgPool) -> Result<(), String> {
    let latest = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
    let applied: Result<Option<i64>, _> = tokio::time::timeout(
        Duration::from_secs(2),
        sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success")
            .fetch_one(pool),
    )
    .await
    .map_err(|_| "postgres: timed out".to_string())?;
    match applied {
        Ok(Some(v)) if v >= latest => Ok(()),
        Ok(_) => Err("postgres: the read model is not migrated yet".into()),
        Err(e) if e.to_string().contains("_sqlx_migrations") => {
            Err("postgres: the read model is not migrated yet".into())
        }
        Err(e) => Err(format!("postgres: {e}")),
    }
}

/// The last stream sequence the read model reflects.
pub async fn read_checkpoint(pool: &PgPool) -> anyhow::Result<u64> {
    let seq: i64 = sqlx::query_scalar("SELECT last_seq FROM projector_checkpoint WHERE id = 1")
        .fetch_one(pool)
        .await
        .context("reading the projector checkpoint")?;
    Ok(seq as u64)
}
