//! Any bytes on the stream: decoding never panics, and what decodes folds or is refused cleanly.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(env) = events::Envelope::from_json(data) {
        let _ = env.hash();
        let _ = events::apply(None, &events::Recorded { seq: 1, envelope: env });
    }
    let _ = events::platform::PlatformEnvelope::from_json(data);
});
