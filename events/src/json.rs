//! JSON a job carries but no rule looks into (payload, metadata, progress, result), kept as
//! its compact text behind a shared, thin pointer.
//!
//! A `serde_json::Value` map costs a B-tree node of about 640 bytes even for three keys, plus an
//! allocation per key and string; the text of the seed's payload is 180 bytes. Every event a
//! job folds clones the job, and a clone of this is a reference count.
//!
//! Invariant: the text is what `serde_json` writes for a `Value` (keys sorted, no whitespace),
//! so two `Json`s are equal exactly when their values are, a job's JSON form is byte for
//! byte what it was when these fields were `Value`s, and the text is the value's canonical
//! JSON (`envelope::canonical`), which the event digest writes as it is (`crate::canonical`).
//! It holds as long as `serde_json`'s maps are sorted (its `preserve_order` feature off): the
//! tests below fail if it is ever turned on.

use std::fmt;
use std::sync::{Arc, LazyLock};

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::Value;

/// One pointer (8 bytes): the text's length lives with it on the heap, not beside the pointer
/// as in an `Arc<RawValue>`. A job holds two (payload and metadata), and a million waiting jobs
/// a million of each: most share one text (`{}`, or a payload dropped from memory), so the
/// second allocation costs only the distinct ones.
#[derive(Clone)]
pub struct Json(Arc<Box<RawValue>>);

impl Json {
    /// The compact text.
    pub fn as_str(&self) -> &str {
        self.0.get()
    }

    /// Whether both are the same shared text (not merely equal): a holder can mark a value
    /// with a `Json` of its own and know it again.
    pub fn same(a: &Json, b: &Json) -> bool {
        Arc::ptr_eq(&a.0, &b.0)
    }

    fn from_text(text: String) -> Result<Self, serde_json::Error> {
        if text == "{}" {
            return Ok(EMPTY_OBJECT.clone());
        }
        Ok(Json(Arc::new(RawValue::from_string(text)?)))
    }
}

/// `{}`, shared: most jobs' metadata.
static EMPTY_OBJECT: LazyLock<Json> = LazyLock::new(|| {
    Json(Arc::new(
        RawValue::from_string("{}".into()).expect("valid JSON"),
    ))
});

impl From<&Value> for Json {
    fn from(v: &Value) -> Self {
        if v.as_object().is_some_and(|m| m.is_empty()) {
            return EMPTY_OBJECT.clone();
        }
        let raw = serde_json::value::to_raw_value(v).expect("a Value always serializes");
        Json(Arc::new(raw))
    }
}

impl From<Value> for Json {
    fn from(v: Value) -> Self {
        Json::from(&v)
    }
}

impl PartialEq for Json {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Json {}

impl fmt::Debug for Json {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// In JSON (and into a `Value`): the value itself. In a binary format (the write model's
/// snapshot): its text as one string, so decoding it is a copy, not a parse into maps.
impl Serialize for Json {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            // A newtype to `serde_json` (so the text is written as it is); to the event digest
            // (`crate::canonical`), word that the text is canonical already.
            s.serialize_newtype_struct(crate::canonical::CANONICAL_TEXT, &**self.0)
        } else {
            s.serialize_str(self.as_str())
        }
    }
}

/// From JSON through a `Value`, whatever its form (Postgres's `jsonb` text has spaces and its
/// own key order), so the text is always the compact one.
impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            Ok(Json::from(Value::deserialize(d)?))
        } else {
            Json::from_text(String::deserialize(d)?).map_err(D::Error::custom)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn its_json_form_is_the_values_and_its_binary_form_a_string() {
        let v = json!({"z": [1, 2.5, "s"], "a": {"b": null}, "u": "é\"\n"});
        let j = Json::from(&v);
        assert_eq!(
            serde_json::to_string(&j).unwrap(),
            serde_json::to_string(&v).unwrap()
        );
        assert_eq!(serde_json::to_value(&j).unwrap(), v);

        // jsonb's text (spaces, another key order) reads as the same compact text.
        let spaced: Json =
            serde_json::from_str(r#"{"u": "é\"\n", "a": {"b": null}, "z": [1, 2.5, "s"]}"#)
                .unwrap();
        assert_eq!(spaced, j);
        let mut canonical = Vec::new();
        crate::envelope::canonical(&v, &mut canonical);
        assert_eq!(spaced.as_str().as_bytes(), canonical);
        assert_eq!(spaced.as_str(), serde_json::to_string(&v).unwrap());
        let from_value: Json = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(from_value, j);

        let empty: Json = serde_json::from_str("{ }").unwrap();
        assert_eq!(empty.as_str(), "{}");
        assert!(Arc::ptr_eq(&empty.0, &Json::from(serde_json::json!({})).0));

        let packed = rmp_serde::to_vec_named(&j).unwrap();
        assert_eq!(
            rmp_serde::from_slice::<String>(&packed).unwrap(),
            j.as_str()
        );
        assert_eq!(rmp_serde::from_slice::<Json>(&packed).unwrap(), j);
        assert!(rmp_serde::from_slice::<Json>(&rmp_serde::to_vec("{not json").unwrap()).is_err());
    }
}
