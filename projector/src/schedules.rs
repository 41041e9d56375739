//! The `schedules` read model: schedule events folded with `events::schedule::apply_schedule`
//! (one row per schedule, removed when it is deleted), and each schedule's last firing, taken
//! from the `JobEnqueued` events that `events::schedule::fired_slot` recognises. Applied inside
//! the batch's transaction, so it moves with the checkpoint.

use std::collections::HashMap;

use anyhow::Context;
use events::envelope::DecodeError;
use events::schedule::{
    apply_schedule, fired_slot, parse_schedule_subject, Schedule, ScheduleEnvelope,
    ScheduleRecorded,
};
use events::Recorded;
use serde_json::Value;
use uuid::Uuid;

use crate::projection::Incoming;

/// The schedule event in a message, if it is one. An event of a newer schema version stops the
/// projection (to resume once upgraded) rather than being skipped.
pub fn decode(m: &Incoming) -> anyhow::Result<Option<ScheduleRecorded>> {
    let Some((tenant, id)) = parse_schedule_subject(&m.subject) else {
        return Ok(None);
    };
    match ScheduleEnvelope::from_json(&m.payload) {
        Ok(env) if env.tenant_id == tenant && env.event.schedule_id() == id => {
            Ok(Some(ScheduleRecorded {
                seq: m.seq,
                envelope: env,
            }))
        }
        Ok(_) => {
            tracing::error!(seq = m.seq, subject = %m.subject, "schedule event names another tenant or schedule than its subject; skipped");
            Ok(None)
        }
        Err(e @ DecodeError::TooNew(_)) => anyhow::bail!("seq {}: {e}", m.seq),
        Err(e) => {
            tracing::error!(seq = m.seq, subject = %m.subject, error = %e, "undecodable schedule event; skipped");
            Ok(None)
        }
    }
}

/// Folds `recs` (in stream order) into the `schedules` rows.
pub async fn apply(tx: &mut sqlx::PgConnection, recs: &[ScheduleRecorded]) -> anyhow::Result<()> {
    if recs.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = recs
        .iter()
        .map(|r| r.envelope.event.schedule_id())
        .collect();
    let docs: Vec<Value> = sqlx::query_scalar("SELECT doc FROM schedules WHERE id = ANY($1)")
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await?;
    // None: deleted in this batch.
    let mut state: HashMap<Uuid, Option<Schedule>> = HashMap::new();
    for d in docs {
        let s: Schedule = serde_json::from_value(d).context("a stored schedule does not decode")?;
        state.insert(s.id, Some(s));
    }
    let mut touched: Vec<Uuid> = Vec::new();
    for rec in recs {
        let id = rec.envelope.event.schedule_id();
        let current = state.get(&id).and_then(Option::as_ref);
        if current.is_some_and(|s| s.last_seq >= rec.seq) {
            continue;
        }
        match apply_schedule(current, rec) {
            Ok(next) => {
                state.insert(id, next);
                if !touched.contains(&id) {
                    touched.push(id);
                }
            }
            Err(e) => {
                tracing::error!(seq = rec.seq, schedule_id = %id, error = %e, "schedule event refused by apply; skipped")
            }
        }
    }
    for id in touched {
        match &state[&id] {
            Some(s) => {
                sqlx::query(
                    "INSERT INTO schedules (id, tenant_id, enabled, created_at, updated_at, version, last_event_seq, doc)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                     ON CONFLICT (id) DO UPDATE SET enabled = EXCLUDED.enabled, updated_at = EXCLUDED.updated_at,
                        version = EXCLUDED.version, last_event_seq = EXCLUDED.last_event_seq, doc = EXCLUDED.doc",
                )
                .bind(s.id)
                .bind(s.tenant_id)
                .bind(s.enabled)
                .bind(s.created_at)
                .bind(s.updated_at)
                .bind(s.version as i64)
                .bind(s.last_seq as i64)
                .bind(serde_json::to_value(s)?)
                .execute(&mut *tx)
                .await
                .context("upserting a schedule")?;
            }
            None => {
                sqlx::query("DELETE FROM schedules WHERE id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .context("deleting a schedule")?;
            }
        }
    }
    Ok(())
}

/// Moves each schedule's last run to the latest firing among `recs`.
pub async fn record_runs(tx: &mut sqlx::PgConnection, recs: &[Recorded]) -> anyhow::Result<()> {
    for r in recs {
        let Some((schedule_id, fire_time)) = fired_slot(&r.envelope) else {
            continue;
        };
        sqlx::query(
            "UPDATE schedules SET last_run_fire_time = $3, last_run_job_id = $4, last_run_enqueued_at = $5
             WHERE id = $1 AND tenant_id = $2
               AND (last_run_fire_time IS NULL OR last_run_fire_time < $3)",
        )
        .bind(schedule_id)
        .bind(r.envelope.tenant_id)
        .bind(fire_time)
        .bind(r.envelope.job_id)
        .bind(r.envelope.at)
        .execute(&mut *tx)
        .await
        .context("recording a schedule's last run")?;
    }
    Ok(())
}
