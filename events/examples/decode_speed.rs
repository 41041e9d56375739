//! How long `Envelope::from_json` takes for the bench's `JobEnqueued` (the event every reader
//! decodes most): `cargo run --release -p events --example decode_speed`.

use std::time::Instant;

use events::Envelope;

fn main() {
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
    for _ in 0..3 {
        let t = Instant::now();
        for _ in 0..200_000 {
            std::hint::black_box(Envelope::from_json(std::hint::black_box(bytes)).ok());
        }
        let ns = t.elapsed().as_nanos() as f64 / 200_000.0;
        println!("Envelope::from_json: {ns:.0} ns per event");
    }
}
