//! `jobsctl state`: a tenant's queues as they were at an instant — the stream folded with the
//! service's own `apply` up to it (counts by status and by type, and who held which lease).

use std::collections::{BTreeMap, HashMap};

use async_nats::jetstream::consumer::DeliverPolicy;
use chrono::{DateTime, Utc};
use serde_json::json;
use uuid::Uuid;

use crate::history::{read, Source};

#[derive(clap::Args)]
pub struct StateArgs {
    /// NATS server holding JOBS_EVENTS.
    #[arg(long, env = "JOBS_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// The tenant to show.
    #[arg(long)]
    tenant: Uuid,
    /// The instant (RFC 3339): the state after every event up to it.
    #[arg(long)]
    at: DateTime<Utc>,
    /// Machine output: the same document on one line (compact) instead of indented.
    #[arg(long)]
    json: bool,
}

/// The tenant's queues as they were at an instant: the stream folded up to it.
pub async fn state(a: StateArgs) -> anyhow::Result<()> {
    let source = Source {
        nats_url: a.nats_url.clone(),
        tenant: Some(a.tenant),
        job: None,
    };
    let mut jobs: HashMap<Uuid, events::Job> = HashMap::new();
    let mut folded = 0u64;
    let mut last_seq = 0u64;
    read(&source, DeliverPolicy::All, false, |item, _| {
        let Some(env) = item.event else {
            return Ok(true);
        };
        // Appends may reach the stream slightly out of time order: read to the end, keep
        // what happened up to the instant.
        if env.at > a.at {
            return Ok(true);
        }
        let id = env.job_id;
        if matches!(env.event, events::JobEvent::Purged {}) {
            jobs.remove(&id);
        } else if let Ok(j) = events::apply(
            jobs.get(&id),
            &events::Recorded {
                seq: item.seq,
                envelope: env,
            },
        ) {
            jobs.insert(id, j);
        }
        folded += 1;
        last_seq = item.seq;
        Ok(true)
    })
    .await?;
    let mut counts: BTreeMap<&str, u64> = events::Status::ALL
        .iter()
        .map(|s| (s.as_str(), 0))
        .collect();
    let mut by_type: BTreeMap<String, BTreeMap<&str, u64>> = Default::default();
    let mut leased = Vec::new();
    for j in jobs.values() {
        let s = j.status_at(a.at).as_str();
        *counts.entry(s).or_default() += 1;
        *by_type
            .entry(j.job_type.to_string())
            .or_default()
            .entry(s)
            .or_default() += 1;
        if let (events::Status::Leased, Some(l)) = (j.status, &j.lease) {
            leased.push(json!({
                "job_id": j.id, "type": j.job_type, "worker_id": l.worker_id,
                "leased_at": l.leased_at, "expires_at": l.expires_at, "attempt": j.attempts,
            }));
        }
    }
    leased.sort_by(|x, y| x["leased_at"].as_str().cmp(&y["leased_at"].as_str()));
    let out = json!({
        "tenant_id": a.tenant, "at": a.at, "events_folded": folded, "last_seq": last_seq,
        "counts": counts,
        "by_type": by_type.into_iter().map(|(t, c)| json!({"type": t, "counts": c})).collect::<Vec<_>>(),
        "leased": leased,
    });
    if a.json {
        crate::output::print_ndjson(&out);
    } else {
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(())
}
