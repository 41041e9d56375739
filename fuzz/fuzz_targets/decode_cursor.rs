//! Any cursor a client sends: refused cleanly unless it is one we signed.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let key = query_svc::cursor::CursorKey::new(b"fuzz");
        let _ = key.decode::<(String, String)>(s, "jobs|scope");
        let _ = key.decode::<i64>(s, "events|scope");
    }
});
