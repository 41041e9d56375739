//! How much memory the write model takes per pending job, without a stack: folds N enqueues
//! of the bench's payload (one tenant, one type, priority 5) into a bare `WriteModel` with the
//! service's allocator and budget of payloads in memory, and prints the growth of the resident
//! set per job. Repeatable where the bench's `rss_bytes_per_pending_job` runs with the whole
//! stack beside it (docs/performance.md, "Memory per pending job").
//!
//! `cargo run --release -p command-svc --example model_memory [-- JOBS [PAYLOAD_BUDGET]]`

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use chrono::Utc;
use command_svc::model::WriteModel;
use events::validate::EnqueueRequest;
use events::{decide, Actor, Command, Envelope, Job, Recorded};
use serde_json::json;
use uuid::Uuid;

/// Resident set of this process, from `/proc/self/statm` (pages of 4 KiB).
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("statm's second field");
    pages * 4096
}

fn main() {
    let mut args = std::env::args().skip(1);
    let jobs: u64 = args.next().map_or(1_000_000, |a| a.parse().expect("JOBS"));
    let budget: usize = args
        .next()
        .map_or(16 << 20, |a| a.parse().expect("PAYLOAD_BUDGET"));
    let tenant = Uuid::new_v4();
    let body = json!({"type": "bench", "priority": 5, "payload": {
        "to": "user@example.com", "template": "welcome", "pad": "x".repeat(120)}});
    let mut model = WriteModel::default();
    model.set_payload_budget(budget);
    let before = rss_bytes();
    let started = std::time::Instant::now();
    for seq in 1..=jobs {
        let now = Utc::now();
        let req: EnqueueRequest = serde_json::from_value(body.clone()).expect("a valid body");
        let cmd = Command::Enqueue(req.validate(now, "").expect("a valid request"));
        let job_id = Uuid::now_v7();
        let mut events = decide(None, &cmd, now).expect("an enqueue decides");
        let rec = Recorded {
            seq,
            envelope: Envelope {
                event_id: Uuid::now_v7(),
                schema_version: events::SCHEMA_VERSION,
                tenant_id: tenant,
                job_id,
                at: now,
                actor: Actor::system("model_memory"),
                prev_hash: None,
                event: events.remove(0),
            },
        };
        model.fold(&rec, now).expect("the enqueue folds");
    }
    let grown = rss_bytes().saturating_sub(before);
    println!(
        "{jobs} pending jobs folded in {:.2} s; size_of::<Job>() = {} B; RSS grew {} MB: {} B per job (payload budget {budget} B, {} B kept)",
        started.elapsed().as_secs_f64(),
        std::mem::size_of::<Job>(),
        grown >> 20,
        grown / jobs.max(1),
        model.kept_payload_bytes(),
    );
    assert_eq!(model.live_jobs() as u64, jobs);
}
