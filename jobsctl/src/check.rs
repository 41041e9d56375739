//! The invariant checker (`jobsctl check`, and the fault tests' final word): reads the stream
//! and, when given, the read model, and verifies what the service promises:
//!
//! - every acknowledged enqueue is in the stream;
//! - per job, the events fold (so no lease starts while another is held, nothing completes
//!   without its lease), leases never overlap in time, at most one completion between retries,
//!   and attempts never exceed max_attempts;
//! - each job's read-model row equals the fold of its events (once the projector has caught up);
//! - no event of one tenant sits under another tenant's subject.

use std::collections::{HashMap, HashSet};

use anyhow::Context;
use async_nats::jetstream::consumer::pull;
use chrono::{DateTime, Utc};
use events::stream::{parse_job_subject, STREAM_NAME};
use events::{apply, Envelope, Job, JobEvent, Recorded};
use futures::StreamExt;
use uuid::Uuid;

#[derive(Debug, Default)]
pub struct Report {
    pub events: usize,
    pub jobs: usize,
    /// Each violation as a sentence: `problems[i]` is `violations[i].detail`.
    pub problems: Vec<String>,
    /// Each violation, structured (`jobsctl check --json`).
    pub violations: Vec<Violation>,
}

/// One broken promise: what kind, where, and the sentence that says it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Violation {
    /// A stable name: `undecodable`, `wrong_subject`, `completed_twice`, `overlapping_lease`,
    /// `too_many_attempts`, `does_not_fold`, `acknowledged_not_in_stream`,
    /// `read_model_behind`, `read_model_differs`, `read_model_extra` or `read_model_missing`.
    pub problem: &'static str,
    pub job_id: Option<Uuid>,
    /// The stream sequence of the event at fault, when one is.
    pub seq: Option<u64>,
    pub detail: String,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }

    /// Records a violation in both forms.
    fn violation(
        &mut self,
        problem: &'static str,
        job_id: Option<Uuid>,
        seq: Option<u64>,
        detail: String,
    ) {
        self.problems.push(detail.clone());
        self.violations.push(Violation {
            problem,
            job_id,
            seq,
            detail,
        });
    }
}

/// Every job event in the stream with its subject, in order.
pub async fn read_stream(
    nats_url: &str,
) -> anyhow::Result<Vec<(String, u64, Result<Envelope, String>)>> {
    let js = async_nats::jetstream::new(
        common::nats::connect_once(nats_url)
            .await
            .context("connecting to NATS")?,
    );
    // A cluster that just lost a node can take a few seconds to answer: retry for a while.
    let mut tries = 0;
    let mut consumer = loop {
        let attempt = async {
            let stream = js
                .get_stream(STREAM_NAME)
                .await
                .context("opening JOBS_EVENTS")?;
            let c = stream
                .create_consumer(pull::OrderedConfig {
                    filter_subject: "jobs.events.>".into(),
                    ..Default::default()
                })
                .await?;
            anyhow::Ok(c)
        }
        .await;
        match attempt {
            Ok(c) => break c,
            Err(e) if tries < 10 => {
                tries += 1;
                pause_after(e).await;
            }
            Err(e) => return Err(e),
        }
    };
    let mut out = Vec::new();
    if consumer.info().await?.num_pending == 0 {
        return Ok(out);
    }
    let mut messages = consumer.messages().await?;
    while let Some(m) = messages.next().await {
        let m = m.map_err(|e| anyhow::anyhow!("{e}"))?;
        let info = m.info().map_err(|e| anyhow::anyhow!("{e}"))?;
        let pending = info.pending;
        out.push((
            m.subject.to_string(),
            info.stream_sequence,
            Envelope::from_json(&m.payload).map_err(|e| e.to_string()),
        ));
        if pending == 0 {
            break;
        }
    }
    Ok(out)
}

/// Checks the stream at `nats_url` (and the read model at `database_url`, when given) against
/// the invariants; `acknowledged` are job ids the caller was told were enqueued.
pub async fn check(
    nats_url: &str,
    database_url: Option<&str>,
    acknowledged: &[Uuid],
) -> anyhow::Result<Report> {
    let events = read_stream(nats_url).await?;
    let mut report = Report {
        events: events.len(),
        ..Default::default()
    };
    let mut jobs: HashMap<Uuid, Job> = HashMap::new();
    let mut purged: HashSet<Uuid> = HashSet::new();
    let mut completions: HashMap<Uuid, u32> = HashMap::new();
    let mut lease_end: HashMap<Uuid, DateTime<Utc>> = HashMap::new();
    let mut last_seq = 0;
    for (subject, seq, env) in events {
        last_seq = seq;
        let env = match env {
            Ok(e) => e,
            Err(e) => {
                let job = parse_job_subject(&subject).map(|(_, j)| j);
                report.violation(
                    "undecodable",
                    job,
                    Some(seq),
                    format!("seq {seq}: undecodable event: {e}"),
                );
                continue;
            }
        };
        match parse_job_subject(&subject) {
            Some((t, j)) if t == env.tenant_id && j == env.job_id => {}
            _ => report.violation(
                "wrong_subject",
                Some(env.job_id),
                Some(seq),
                format!(
                    "seq {seq}: an event of tenant {} job {} on subject {subject}",
                    env.tenant_id, env.job_id
                ),
            ),
        }
        let id = env.job_id;
        let before = jobs.get(&id).cloned();
        let purge = matches!(env.event, JobEvent::Purged {});
        let (at, kind) = (env.at, env.type_name());
        match apply(before.as_ref(), &Recorded { seq, envelope: env }) {
            Ok(after) => {
                match kind {
                    "JobCompleted" => {
                        let n = completions.entry(id).or_default();
                        *n += 1;
                        if *n > 1 {
                            report.violation(
                                "completed_twice",
                                Some(id),
                                Some(seq),
                                format!("job {id}: completed twice (seq {seq})"),
                            );
                        }
                    }
                    "JobRequeued" => {
                        completions.remove(&id);
                    }
                    "JobLeased" if lease_end.get(&id).is_some_and(|end| at < *end) => {
                        report.violation(
                            "overlapping_lease",
                            Some(id),
                            Some(seq),
                            format!(
                                "job {id}: a lease began at seq {seq} before the previous one ended"
                            ),
                        );
                    }
                    _ => {}
                }
                if before.as_ref().is_some_and(|b| b.lease.is_some()) && after.lease.is_none() {
                    lease_end.insert(id, at);
                }
                if after.attempts > after.max_attempts {
                    report.violation(
                        "too_many_attempts",
                        Some(id),
                        Some(seq),
                        format!(
                            "job {id}: {} attempts of at most {}",
                            after.attempts, after.max_attempts
                        ),
                    );
                }
                if purge {
                    purged.insert(id);
                    jobs.remove(&id);
                } else {
                    jobs.insert(id, after);
                }
            }
            Err(e) => report.violation(
                "does_not_fold",
                Some(id),
                Some(seq),
                format!("job {id}: seq {seq} does not fold: {e}"),
            ),
        }
    }
    report.jobs = jobs.len() + purged.len();
    for id in acknowledged {
        if !jobs.contains_key(id) && !purged.contains(id) {
            report.violation(
                "acknowledged_not_in_stream",
                Some(*id),
                None,
                format!("job {id}: acknowledged but not in the stream"),
            );
        }
    }
    if let Some(url) = database_url {
        let pool = sqlx::PgPool::connect(url)
            .await
            .context("connecting to the read model")?;
        let checkpoint: i64 =
            sqlx::query_scalar("SELECT last_seq FROM projector_checkpoint WHERE id = 1")
                .fetch_one(&pool)
                .await?;
        if (checkpoint as u64) < last_seq {
            report.violation(
                "read_model_behind",
                None,
                None,
                format!(
                    "the read model is at seq {checkpoint}, the stream at {last_seq}: not caught up"
                ),
            );
        } else {
            let rows: Vec<(Uuid, serde_json::Value)> = sqlx::query_as("SELECT id, doc FROM jobs")
                .fetch_all(&pool)
                .await?;
            let mut seen = HashSet::new();
            for (id, doc) in rows {
                seen.insert(id);
                match jobs.get(&id) {
                    Some(j) if serde_json::to_value(j)? == doc => {}
                    Some(_) => report.violation(
                        "read_model_differs",
                        Some(id),
                        None,
                        format!("job {id}: its read-model row differs from the fold of its events"),
                    ),
                    None => report.violation(
                        "read_model_extra",
                        Some(id),
                        None,
                        format!("job {id}: in the read model but not (or purged) in the stream"),
                    ),
                }
            }
            for id in jobs.keys() {
                if !seen.contains(id) {
                    report.violation(
                        "read_model_missing",
                        Some(*id),
                        None,
                        format!("job {id}: in the stream but missing from the read model"),
                    );
                }
            }
        }
        pool.close().await;
    }
    Ok(report)
}

async fn pause_after(e: anyhow::Error) {
    eprintln!("jobsctl: {e:#}; retrying");
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
}
