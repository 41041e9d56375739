//! The envelope every message on `JOBS_EVENTS` carries, and its decoding.
//!
//! Wire form: `{event_id, type, schema_version, tenant_id, job_id, at, actor: {kind, id}, data}`.
//! Decoding goes through [`Envelope::from_json`], the one place where older schema versions are
//! upcast, so every reader sees the current shape.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::event::JobEvent;

mod wire;

/// The schema version written by this build. History:
/// - 1: the first envelope.
/// - 2: `prev_hash`, the hash of the job's previous event (None for its first): a hash chain
///   per job. A v1 event reads as v2 with `prev_hash` absent (it is outside any chain).
pub const SCHEMA_VERSION: u32 = 2;

/// Who caused an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Actor {
    pub kind: ActorKind,
    pub id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ActorKind {
    User,
    Worker,
    System,
}

impl Actor {
    pub fn user(id: impl Into<String>) -> Self {
        Self {
            kind: ActorKind::User,
            id: id.into(),
        }
    }
    pub fn worker(id: impl Into<String>) -> Self {
        Self {
            kind: ActorKind::Worker,
            id: id.into(),
        }
    }
    pub fn system(id: impl Into<String>) -> Self {
        Self {
            kind: ActorKind::System,
            id: id.into(),
        }
    }
}

// Its decoding is `wire`'s, not derived: the derived one buffers the whole envelope for the
// flattened event. (A `//` comment: the doc comment below is the OpenAPI schema's text.)
/// One event as written to the stream.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Envelope {
    pub event_id: Uuid,
    pub schema_version: u32,
    pub tenant_id: Uuid,
    pub job_id: Uuid,
    pub at: DateTime<Utc>,
    pub actor: Actor,
    /// Hex SHA-256 of the job's previous event ([`Envelope::hash`]); None for the first (and
    /// for v1 events, which predate the chain).
    #[serde(default)]
    pub prev_hash: Option<String>,
    #[serde(flatten)]
    pub event: JobEvent,
}

/// Why a message could not be read as an event.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not a JSON event envelope: {0}")]
    Json(#[from] serde_json::Error),
    #[error("schema_version {0} is newer than this build understands ({SCHEMA_VERSION})")]
    TooNew(u32),
}

impl Envelope {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an envelope always serializes")
    }

    /// Decodes an envelope of any known schema version, upcasting older ones.
    pub fn from_json(bytes: &[u8]) -> Result<Self, DecodeError> {
        // Nearly every event is of this build's version: one pass decodes it (the version
        // peek below was a fifth of the decode: 2.6 µs against 2.1 for the bench's
        // `JobEnqueued`, `examples/decode_speed.rs`). Anything else (an older or newer version,
        // or an error) takes the path below, which says what it is.
        if let Ok(env) = serde_json::from_slice::<Self>(bytes) {
            if env.schema_version == SCHEMA_VERSION {
                return Ok(env);
            }
        }
        /// Only the version, the rest skipped unread: an event of this version decodes
        /// straight from the bytes, with no `serde_json::Value` in between (the follower and
        /// the projector decode every event).
        #[derive(Deserialize)]
        struct Version {
            schema_version: Option<serde_json::Value>,
        }
        let peek: Version = serde_json::from_slice(bytes)?;
        let version = peek.schema_version.and_then(|v| v.as_u64()).unwrap_or(1) as u32;
        if version > SCHEMA_VERSION {
            return Err(DecodeError::TooNew(version));
        }
        if version == SCHEMA_VERSION {
            return Ok(serde_json::from_slice(bytes)?);
        }
        let mut raw: serde_json::Value = serde_json::from_slice(bytes)?;
        // Upcasters, one per version step, on the raw JSON. `schema_version` keeps the version
        // the event was written in (its hash is over what was written).
        if version < 2 {
            raw = upcast_v1_to_v2(raw);
        }
        Ok(serde_json::from_value(raw)?)
    }

    /// The event's hash: hex SHA-256 of its canonical JSON (keys sorted, no whitespace), which
    /// covers `prev_hash` and so the whole chain before it.
    pub fn hash(&self) -> String {
        self.digest().to_string()
    }

    /// [`Self::hash`] as its 32 bytes.
    pub fn digest(&self) -> EventHash {
        // Room for the entries of the outermost object and their sorted copy.
        let mut out = Vec::with_capacity(2048);
        crate::canonical::write(self, &mut out).expect("an envelope always serializes");
        EventHash(Sha256::digest(&out).into())
    }
}

/// An event's hash ([`Envelope::hash`]) as 32 bytes; written, and read, as 64 lowercase hex
/// digits. The write model keeps one per job, so it is not a 64-byte string.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct EventHash(pub [u8; 32]);

impl EventHash {
    const HEX: &'static [u8; 16] = b"0123456789abcdef";

    fn hex(&self) -> [u8; 64] {
        let mut out = [0u8; 64];
        for (i, b) in self.0.iter().enumerate() {
            out[2 * i] = Self::HEX[(b >> 4) as usize];
            out[2 * i + 1] = Self::HEX[(b & 15) as usize];
        }
        out
    }

    /// Whether `hex` spells this hash (lowercase, as [`Envelope::hash`] writes it).
    pub fn is(&self, hex: &str) -> bool {
        hex.as_bytes() == self.hex()
    }

    /// 64 lowercase hex digits, or None.
    pub fn parse(hex: &str) -> Option<Self> {
        let digit = |c: u8| Self::HEX.iter().position(|h| *h == c).map(|d| d as u8);
        let bytes = hex.as_bytes();
        if bytes.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in bytes.chunks(2).enumerate() {
            out[i] = (digit(pair[0])? << 4) | digit(pair[1])?;
        }
        Some(EventHash(out))
    }
}

impl std::fmt::Display for EventHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(std::str::from_utf8(&self.hex()).expect("hex digits are ASCII"))
    }
}

impl std::fmt::Debug for EventHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl Serialize for EventHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(std::str::from_utf8(&self.hex()).expect("hex digits are ASCII"))
    }
}

impl<'de> Deserialize<'de> for EventHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Hex;
        impl serde::de::Visitor<'_> for Hex {
            type Value = EventHash;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a SHA-256 as 64 lowercase hex digits")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<EventHash, E> {
                EventHash::parse(v)
                    .ok_or_else(|| E::invalid_value(serde::de::Unexpected::Str(v), &self))
            }
        }
        d.deserialize_str(Hex)
    }
}

/// v1 → v2: no hash chain yet.
fn upcast_v1_to_v2(mut raw: serde_json::Value) -> serde_json::Value {
    if let Some(o) = raw.as_object_mut() {
        o.entry("prev_hash").or_insert(serde_json::Value::Null);
    }
    raw
}

/// Canonical JSON: object keys sorted, no whitespace, serde_json's number and string forms.
/// Written straight into `out` (the replay hashes every event, so this is hot).
pub fn canonical(v: &serde_json::Value, out: &mut Vec<u8>) {
    use serde_json::Value;
    match v {
        Value::Object(o) => {
            // Keys are unique, so an unstable sort gives the one order.
            let mut entries: Vec<(&String, &Value)> = o.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (i, (k, x)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut *out, k).expect("a string serializes");
                out.push(b':');
                canonical(x, out);
            }
            out.push(b'}');
        }
        Value::Array(a) => {
            out.push(b'[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical(x, out);
            }
            out.push(b']');
        }
        other => serde_json::to_writer(&mut *out, other).expect("a scalar serializes"),
    }
}

impl Envelope {
    /// The event's wire type name, e.g. `JobEnqueued`.
    pub fn type_name(&self) -> &'static str {
        self.event.type_name()
    }
}

/// An envelope together with the stream sequence it was stored at.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    pub seq: u64,
    pub envelope: Envelope,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A `JobCancelled` of this version, by `actor`, of a job of its own.
    fn cancelled(actor: Actor, prev_hash: Option<String>, reason: &str) -> Envelope {
        Envelope {
            event_id: Uuid::now_v7(),
            schema_version: SCHEMA_VERSION,
            tenant_id: Uuid::new_v4(),
            job_id: Uuid::now_v7(),
            at: chrono::Utc::now(),
            actor,
            prev_hash,
            event: JobEvent::Cancelled {
                reason: Some(reason.into()),
                error: None,
            },
        }
    }

    /// An event of this version decodes in one pass; the same event marked with a newer
    /// version is refused as too new (even though its fields would decode), and bytes that are
    /// no envelope say so.
    #[test]
    fn from_json_takes_this_version_refuses_a_newer_one_and_says_what_is_wrong() {
        let env = cancelled(
            Actor::system("test"),
            Some("ab".repeat(32)),
            "no longer needed",
        );
        let bytes = env.to_json();
        let back = Envelope::from_json(&bytes).unwrap();
        assert_eq!(back.to_json(), bytes);
        assert_eq!(back.digest(), env.digest());

        let mut newer: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        newer["schema_version"] = json!(SCHEMA_VERSION + 1);
        let newer = serde_json::to_vec(&newer).unwrap();
        assert!(matches!(
            Envelope::from_json(&newer),
            Err(DecodeError::TooNew(v)) if v == SCHEMA_VERSION + 1
        ));
        assert!(matches!(
            Envelope::from_json(b"{\"schema_version\": 2"),
            Err(DecodeError::Json(_))
        ));
    }

    /// The writer puts `type` before `data`; another order (here the keys sorted, `data`
    /// first), unknown fields, and a `Value` as the source decode to the same event, and a
    /// field twice or `type` missing are refused by name.
    #[test]
    fn an_envelope_decodes_in_any_key_order_and_skips_unknown_fields() {
        let env = cancelled(Actor::worker("w"), None, "r");
        let written = String::from_utf8(env.to_json()).unwrap();
        assert!(written.find("\"type\"").unwrap() < written.find("\"data\"").unwrap());
        let mut v = serde_json::to_value(&env).unwrap();
        v["later_field"] = json!({"nested": [1, {"x": null}]});
        let sorted = serde_json::to_string(&v).unwrap();
        assert!(sorted.find("\"data\"").unwrap() < sorted.find("\"type\"").unwrap());
        assert_eq!(Envelope::from_json(sorted.as_bytes()).unwrap(), env);
        assert_eq!(serde_json::from_value::<Envelope>(v).unwrap(), env);

        let twice = written.replacen("{", "{\"type\":\"JobRetried\",", 1);
        let err = Envelope::from_json(twice.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(err.contains("duplicate field `type`"), "{err}");
        let untyped = written.replace("\"type\":\"JobCancelled\",", "");
        let err = Envelope::from_json(untyped.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing field `type`"), "{err}");
        let unknown = written.replace("JobCancelled", "JobVanished");
        let err = Envelope::from_json(unknown.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(err.contains("JobVanished"), "{err}");
    }

    /// Every stored hash chain was written by the first implementation of `canonical` and
    /// `hash`. These answers were computed with it (and checked equal to the current one when
    /// it was replaced), so a change of form breaks here, not in a stored chain.
    #[test]
    fn canonical_json_and_the_hash_are_what_the_first_implementation_wrote() {
        let samples = [
            (
                json!({"z": 1, "a": [true, null, 1.5, -3, "\u{e9}\"\\\n"], "m": {"b": {}, "a": []}}),
                r#"{"a":[true,null,1.5,-3,"é\"\\\n"],"m":{"a":[],"b":{}},"z":1}"#,
            ),
            (
                json!([{"y": "x", "x": "y"}, 18446744073709551615u64, -9223372036854775808i64]),
                r#"[{"x":"y","y":"x"},18446744073709551615,-9223372036854775808]"#,
            ),
            (json!("plain"), r#""plain""#),
            (
                json!({"": 0, "\u{1f600}": {"k\u{0}": 0.1}}),
                r#"{"":0,"😀":{"k\u0000":0.1}}"#,
            ),
        ];
        for (v, expected) in &samples {
            let mut out = Vec::new();
            canonical(v, &mut out);
            assert_eq!(String::from_utf8(out).unwrap(), *expected);
        }
        let env: Envelope = Envelope::from_json(
            br#"{"event_id":"0193a000-0000-7000-8000-000000000001","schema_version":2,
                 "tenant_id":"00000000-0000-0000-0000-000000000002",
                 "job_id":"0193a000-0000-7000-8000-000000000003","at":"2026-12-01T10:00:00Z",
                 "actor":{"kind":"system","id":"test"},"prev_hash":null,
                 "type":"JobCancelled","data":{"reason":"r\u00e9ason","error":null}}"#,
        )
        .unwrap();
        assert_eq!(
            env.hash(),
            "d7476a45b4978630c796b7c171fad9a05880eef94031576cc2bfceded022300e"
        );
    }

    #[test]
    fn an_event_hash_reads_and_writes_as_the_hex_the_envelope_hashes_to() {
        let hex = "d7476a45b4978630c796b7c171fad9a05880eef94031576cc2bfceded022300e";
        let h = EventHash::parse(hex).unwrap();
        assert_eq!(h.to_string(), hex);
        assert!(h.is(hex));
        assert!(!h.is(&hex.to_uppercase()));
        assert!(!h.is(&hex[1..]));
        assert_eq!(serde_json::to_string(&h).unwrap(), format!("\"{hex}\""));
        assert_eq!(
            serde_json::from_str::<EventHash>(&format!("\"{hex}\"")).unwrap(),
            h
        );
        let packed = rmp_serde::to_vec(&h).unwrap();
        assert_eq!(rmp_serde::from_slice::<EventHash>(&packed).unwrap(), h);
        for bad in [
            "",
            "zz",
            &hex.to_uppercase(),
            &hex[2..],
            &format!("{hex}00"),
        ] {
            assert_eq!(EventHash::parse(bad), None, "{bad}");
            assert!(serde_json::from_value::<EventHash>(serde_json::json!(bad)).is_err());
        }
    }
}
