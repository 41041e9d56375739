//! How much memory the write model takes per pending job, without a stack: folds N enqueues
//! of the bench's payload (one tenant, one type, priority 5) into a bare `WriteModel` with the
//! service's allocator and budget of payloads in memory, and prints the growth of the resident
//! set per job. Repeatable where the bench's `rss_bytes_per_pending_job` runs with the whole
//! stack beside it (docs/performance.md, "Memory per pending job").
//!
//! It also counts the allocations still live at the end by requested size (the allocator is
//! wrapped to count them), to set beside the RSS: jemalloc rounds each up to its size class.
//!
//! And it times what the service does under the model's lock: the longest folds (one that
//! makes a job table grow rehashes that table's jobs), and collecting the jobs' ids all at
//! once against one table at a time, as a snapshot taken while serving does.
//!
//! `cargo run --release -p command-svc --example model_memory [-- JOBS [PAYLOAD_BUDGET]]`

use std::alloc::{GlobalAlloc, Layout};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicI64, Ordering};

/// The service's allocator (jemalloc), counting the live allocations of each requested size (4096 and up
/// counted together), so the run can say what the resident set holds.
struct Counted;

static LIVE: [AtomicI64; 4097] = [const { AtomicI64::new(0) }; 4097];

fn count(size: usize, by: i64) {
    LIVE[size.min(4096)].fetch_add(by, Ordering::Relaxed);
}

unsafe impl GlobalAlloc for Counted {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size(), 1);
        unsafe { tikv_jemallocator::Jemalloc.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(layout.size(), -1);
        unsafe { tikv_jemallocator::Jemalloc.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(layout.size(), -1);
        count(new_size, 1);
        unsafe { tikv_jemallocator::Jemalloc.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counted = Counted;

fn live() -> Vec<i64> {
    LIVE.iter().map(|c| c.load(Ordering::Relaxed)).collect()
}

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
    let live_before = live();
    let started = std::time::Instant::now();
    // The longest folds (each holds what the model's lock would): the 1 in 10,000 longest and
    // one more, in a heap that keeps the shortest of them on top.
    let keep = (jobs / 10_000 + 1) as usize;
    let mut folds = BinaryHeap::with_capacity(keep + 1);
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
        let folding = std::time::Instant::now();
        model.fold(&rec, now).expect("the enqueue folds");
        folds.push(Reverse((folding.elapsed(), seq)));
        if folds.len() > keep {
            folds.pop();
        }
    }
    let folded = started.elapsed();
    // The allocator hands freed pages back to the system after its decay time (jemalloc: 10 s
    // by default). The job tables outgrown on the way (256 of them, each growing by doubling)
    // are about 20 B per job of such pages right after the last fold.
    std::thread::sleep(std::time::Duration::from_secs(12));
    let grown = rss_bytes().saturating_sub(before);
    println!(
        "{jobs} pending jobs folded in {:.2} s; size_of::<Job>() = {} B; RSS grew {} MB: {} B per job (payload budget {budget} B, {} B kept)",
        folded.as_secs_f64(),
        std::mem::size_of::<Job>(),
        grown >> 20,
        grown / jobs.max(1),
        model.kept_payload_bytes(),
    );
    // What stayed allocated, by requested size: one row per size that at least one job in a
    // thousand holds.
    let mut requested = 0i64;
    for (size, (now, then)) in live().into_iter().zip(live_before).enumerate() {
        let n = now - then;
        requested += n * size as i64;
        if n.unsigned_abs() * 1000 >= jobs {
            println!(
                "  {n:>9} allocations of {size:>4}{} B: {:.1} per job, {:.1} B per job",
                if size == 4096 { "+" } else { "" },
                n as f64 / jobs as f64,
                (n * size as i64) as f64 / jobs as f64,
            );
        }
    }
    println!(
        "  requested bytes still allocated: {:.1} B per job (4096+ counted as 4096)",
        requested as f64 / jobs as f64
    );
    assert_eq!(model.live_jobs() as u64, jobs);
    let folds: Vec<_> = folds.into_sorted_vec().into_iter().map(|r| r.0).collect();
    println!(
        "fold: p99.99 {:?}, longest {:?} (job {}), second {:?} (job {})",
        folds[folds.len() - 1].0,
        folds[0].0,
        folds[0].1,
        folds[1].0,
        folds[1].1,
    );
    let t = std::time::Instant::now();
    let ids: Vec<Uuid> = model.jobs().map(|j| j.id).collect();
    println!("ids collected: {:?} ({})", t.elapsed(), ids.len());
    let mut each: Vec<_> = (0..command_svc::model::JOB_SHARDS)
        .map(|shard| {
            let t = std::time::Instant::now();
            let ids: Vec<Uuid> = model.jobs_in_shard(shard).map(|j| j.id).collect();
            (t.elapsed(), ids.len())
        })
        .collect();
    each.sort();
    println!(
        "one table's ids collected: median {:?}, longest {:?} ({} ids)",
        each[each.len() / 2].0,
        each[each.len() - 1].0,
        each[each.len() - 1].1,
    );
    let t = std::time::Instant::now();
    let image = model.image();
    println!("image: {:?}", t.elapsed());
    drop(image);
}
