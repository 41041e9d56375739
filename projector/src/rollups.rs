//! The tenant metrics rollups: job counts by type and status, events per second, and latency
//! histograms per second — computed from each batch's transitions and added to the tables in
//! the batch's transaction.

use std::collections::HashMap;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use events::{Job, JobEvent, Recorded};
use sqlx::PgConnection;
use uuid::Uuid;

/// Upper bounds (ms) of the latency buckets; the last bucket is everything above.
pub const BUCKETS_MS: [i64; 20] = [
    1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 30_000, 60_000, 300_000,
    600_000, 1_800_000, 3_600_000, 86_400_000,
];
/// The bucket for values above every bound.
pub const OVERFLOW_MS: i64 = i64::MAX;

pub fn bucket(ms: i64) -> i64 {
    BUCKETS_MS
        .iter()
        .copied()
        .find(|b| ms <= *b)
        .unwrap_or(OVERFLOW_MS)
}

#[derive(Default)]
pub struct Rollups {
    counts: HashMap<(Uuid, String, &'static str), i64>,
    throughput: HashMap<(Uuid, DateTime<Utc>), [i64; 4]>,
    latency: HashMap<(Uuid, DateTime<Utc>, &'static str, i64), i64>,
}

fn second(at: DateTime<Utc>) -> DateTime<Utc> {
    at.duration_trunc(TimeDelta::seconds(1)).unwrap_or(at)
}

impl Rollups {
    /// Records one applied event: the job before (None for a new job) and after (None when
    /// purged).
    pub fn record(&mut self, rec: &Recorded, before: Option<&Job>, after: Option<&Job>) {
        let tenant = rec.envelope.tenant_id;
        if let Some(b) = before {
            *self
                .counts
                .entry((tenant, b.job_type.to_string(), b.status.as_str()))
                .or_default() -= 1;
        }
        if let Some(a) = after {
            *self
                .counts
                .entry((tenant, a.job_type.to_string(), a.status.as_str()))
                .or_default() += 1;
        }
        let at = rec.envelope.at;
        let slot = match &rec.envelope.event {
            JobEvent::Enqueued { .. } => Some(0),
            JobEvent::Completed { .. } => Some(1),
            JobEvent::Failed { .. } | JobEvent::LeaseExpired { .. } => Some(2),
            JobEvent::DeadLettered { .. } => Some(3),
            _ => None,
        };
        if let Some(i) = slot {
            self.throughput.entry((tenant, second(at))).or_default()[i] += 1;
            // A dead-lettering ends a failed attempt too.
            if i == 3 && before.is_some_and(|b| b.lease.is_some()) {
                self.throughput.entry((tenant, second(at))).or_default()[2] += 1;
            }
        }
        match (&rec.envelope.event, before) {
            (JobEvent::Leased { .. }, Some(b)) => {
                let ms = (at - b.run_at).num_milliseconds().max(0);
                *self
                    .latency
                    .entry((tenant, second(at), "wait", bucket(ms)))
                    .or_default() += 1;
            }
            (JobEvent::Completed { .. }, Some(b)) => {
                if let Some(l) = &b.lease {
                    let ms = (at - l.leased_at).num_milliseconds().max(0);
                    *self
                        .latency
                        .entry((tenant, second(at), "run", bucket(ms)))
                        .or_default() += 1;
                }
            }
            _ => {}
        }
    }

    pub async fn write(self, tx: &mut PgConnection) -> anyhow::Result<()> {
        let counts: Vec<_> = self.counts.into_iter().filter(|(_, n)| *n != 0).collect();
        if !counts.is_empty() {
            let t: Vec<Uuid> = counts.iter().map(|((t, _, _), _)| *t).collect();
            let ty: Vec<String> = counts.iter().map(|((_, ty, _), _)| ty.clone()).collect();
            let st: Vec<String> = counts.iter().map(|((_, _, s), _)| s.to_string()).collect();
            let n: Vec<i64> = counts.iter().map(|(_, n)| *n).collect();
            sqlx::query(
                "INSERT INTO tenant_type_counts (tenant_id, type, status, n)
                 SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::int8[])
                 ON CONFLICT (tenant_id, type, status) DO UPDATE SET n = tenant_type_counts.n + EXCLUDED.n",
            )
            .bind(&t)
            .bind(&ty)
            .bind(&st)
            .bind(&n)
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM tenant_type_counts WHERE n = 0")
                .execute(&mut *tx)
                .await?;
        }
        if !self.throughput.is_empty() {
            let rows: Vec<_> = self.throughput.into_iter().collect();
            let t: Vec<Uuid> = rows.iter().map(|((t, _), _)| *t).collect();
            let s: Vec<DateTime<Utc>> = rows.iter().map(|((_, s), _)| *s).collect();
            let col = |i: usize| rows.iter().map(|(_, v)| v[i]).collect::<Vec<i64>>();
            sqlx::query(
                "INSERT INTO tenant_throughput (tenant_id, second, enqueued, completed, failed, dead_lettered)
                 SELECT * FROM UNNEST($1::uuid[], $2::timestamptz[], $3::int8[], $4::int8[], $5::int8[], $6::int8[])
                 ON CONFLICT (tenant_id, second) DO UPDATE SET
                    enqueued = tenant_throughput.enqueued + EXCLUDED.enqueued,
                    completed = tenant_throughput.completed + EXCLUDED.completed,
                    failed = tenant_throughput.failed + EXCLUDED.failed,
                    dead_lettered = tenant_throughput.dead_lettered + EXCLUDED.dead_lettered",
            )
            .bind(&t)
            .bind(&s)
            .bind(col(0))
            .bind(col(1))
            .bind(col(2))
            .bind(col(3))
            .execute(&mut *tx)
            .await?;
        }
        if !self.latency.is_empty() {
            let rows: Vec<_> = self.latency.into_iter().collect();
            let t: Vec<Uuid> = rows.iter().map(|((t, _, _, _), _)| *t).collect();
            let s: Vec<DateTime<Utc>> = rows.iter().map(|((_, s, _, _), _)| *s).collect();
            let k: Vec<String> = rows.iter().map(|((_, _, k, _), _)| k.to_string()).collect();
            let le: Vec<i64> = rows.iter().map(|((_, _, _, le), _)| *le).collect();
            let n: Vec<i64> = rows.iter().map(|(_, n)| *n).collect();
            sqlx::query(
                "INSERT INTO tenant_latency (tenant_id, second, kind, le_ms, n)
                 SELECT * FROM UNNEST($1::uuid[], $2::timestamptz[], $3::text[], $4::int8[], $5::int8[])
                 ON CONFLICT (tenant_id, second, kind, le_ms) DO UPDATE SET n = tenant_latency.n + EXCLUDED.n",
            )
            .bind(&t)
            .bind(&s)
            .bind(&k)
            .bind(&le)
            .bind(&n)
            .execute(&mut *tx)
            .await?;
        }
        Ok(())
    }
}
