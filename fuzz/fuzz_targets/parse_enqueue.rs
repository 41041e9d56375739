//! Any enqueue body: parsed and validated into a 400 or a job, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = common::json::parse::<events::validate::EnqueueRequest>(data) {
        if let Ok(spec) = req.validate(chrono_now(), "") {
            let _ = events::decide(None, &events::Command::Enqueue(spec), chrono_now());
        }
    }
    let _ = common::json::parse::<events::validate::UpdateRequest>(data).map(|u| u.validate());
});

fn chrono_now() -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp(1_800_000_000, 0).expect("a fixed instant")
}
