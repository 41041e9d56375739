//! How long `Envelope::from_json` takes for the bench's `JobEnqueued` (the event every reader
//! decodes most), and its digest (the canonical JSON written straight, and as the first
//! implementation wrote it, through a `serde_json::Value`), and its plain JSON:
//! `cargo run --release -p events --example decode_speed`.

use std::time::Instant;

use events::Envelope;

/// The projector's and query-svc's allocator: the `Value` path's cost is mostly allocation.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `decode_speed [from_json|digest|write|value_path|to_json [N]]` runs only that one, N times (for `perf stat` or
/// `valgrind --tool=callgrind`, which count instructions whatever else the machine does).
fn main() {
    let only = std::env::args().nth(1);
    let runs = |name: &str| only.as_deref().is_none_or(|o| o == name);
    let n: u32 = std::env::args()
        .nth(2)
        .map_or(200_000, |n| n.parse().expect("a count"));
    let now = chrono::Utc::now();
    let body = serde_json::json!({"type": "bench", "priority": 5, "payload": {
        "to": "user@example.com", "template": "welcome", "pad": "x".repeat(120)}});
    let req: events::validate::EnqueueRequest = serde_json::from_value(body).unwrap();
    let cmd = events::Command::Enqueue(req.validate(now, "").unwrap());
    let mut evs = events::decide(None, &cmd, now).unwrap();
    let text = String::from_utf8(
        Envelope {
            event_id: uuid::Uuid::now_v7(),
            schema_version: events::SCHEMA_VERSION,
            tenant_id: uuid::Uuid::new_v4(),
            job_id: uuid::Uuid::now_v7(),
            at: now,
            actor: events::Actor::system("probe"),
            prev_hash: Some("ab".repeat(32)),
            event: evs.remove(0),
        }
        .to_json(),
    )
    .unwrap();
    println!("{} bytes", text.len());
    let env = Envelope::from_json(text.as_bytes());
    println!(
        "{:?}",
        env.as_ref()
            .map(|e| e.type_name())
            .map_err(|e| e.to_string())
    );
    let bytes = text.as_bytes();
    let env = env.expect("decodes");
    let value_path = |env: &Envelope| {
        let mut out = Vec::with_capacity(1024);
        let v = serde_json::to_value(env).expect("serializes");
        events::envelope::canonical(&v, &mut out);
        out
    };
    let measures: [(&str, &dyn Fn()); 5] = [
        ("from_json", &|| {
            std::hint::black_box(Envelope::from_json(std::hint::black_box(bytes)).ok());
        }),
        ("digest", &|| {
            std::hint::black_box(std::hint::black_box(&env).digest());
        }),
        ("write", &|| {
            let mut out = Vec::with_capacity(2048);
            events::canonical::write(std::hint::black_box(&env), &mut out).expect("writes");
            std::hint::black_box(out);
        }),
        ("value_path", &|| {
            std::hint::black_box(value_path(std::hint::black_box(&env)));
        }),
        ("to_json", &|| {
            std::hint::black_box(std::hint::black_box(&env).to_json());
        }),
    ];
    for (name, f) in measures {
        if !runs(name) {
            continue;
        }
        for _ in 0..3 {
            let t = Instant::now();
            for _ in 0..n {
                f();
            }
            let ns = t.elapsed().as_nanos() as f64 / f64::from(n);
            println!("{name}: {ns:.0} ns per event");
        }
    }
}
