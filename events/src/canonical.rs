//! Canonical JSON (keys sorted, no whitespace) written straight from a `Serialize` value.
//!
//! [`crate::envelope::canonical`] defines the form over a `serde_json::Value`, and every stored
//! hash chain was written with it. Building that `Value` (a `String` for every key and string,
//! a map node for every entry, the payload parsed again) was most of an event's digest, and
//! every reader computes the digest of every event it folds. [`write`] gives the same bytes
//! without the `Value`:
//! - scalars are written as `serde_json` writes them;
//! - an object's entries are written into the output as they come, and when it ends they are
//!   copied after it in key order and moved down over the unsorted ones (one buffer for the
//!   whole event, no allocation per object);
//! - a [`crate::Json`] (payload, metadata, result, progress) is written as its text, which is
//!   already canonical: it is always the compact form of a `Value`, whose keys are sorted (see
//!   `Json`), and it marks itself as such with [`CANONICAL_TEXT`];
//! - what is rare in an event (floats of 32 bits, 128-bit integers, byte strings, any other
//!   raw JSON text, keys that are not strings) goes through the `Value` form, so it is the same
//!   by construction.
//!
//! Tests compare both forms over generated events and values.

use std::borrow::Cow;

use serde::ser::{self, Impossible, Serialize};
use serde_json::{Error, Value};

/// The name `serde_json` gives the struct a `RawValue` serializes as.
const RAW_VALUE_TOKEN: &str = "$serde_json::private::RawValue";

/// The newtype name under which [`crate::Json`] passes its `RawValue`: its text is canonical
/// JSON already. Every other serializer sees through a newtype.
pub(crate) const CANONICAL_TEXT: &str = "$events::CanonicalText";

/// Appends the canonical JSON of `value` to `out`: the bytes
/// `canonical(&serde_json::to_value(value)?, out)` appends.
pub fn write<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<(), Error> {
    // An event's objects have up to about 30 entries open at once.
    let mut spans = Vec::with_capacity(32);
    value.serialize(Canon {
        out,
        spans: &mut spans,
        mode: Mode::Json,
    })
}

/// The `Value` path, for the forms an event does not use on its hot path.
fn via_value<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<(), Error> {
    crate::envelope::canonical(&serde_json::to_value(value)?, out);
    Ok(())
}

fn scalar<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<(), Error> {
    serde_json::to_writer(out, value)
}

/// `{"variant":`, the start of the one-key object an enum variant with data is written as.
fn open_variant(variant: &str, out: &mut Vec<u8>) -> Result<(), Error> {
    out.push(b'{');
    scalar(variant, out)?;
    out.push(b':');
    Ok(())
}

/// One entry of an object being written: its key, and where its value lies in the output.
type Span = (Cow<'static, str>, usize, usize);

/// Scalars `serde_json` writes the same way from a `Value` and straight.
macro_rules! written_as_serde_json_writes {
    ($($method:ident: $t:ty),*) => {$(
        fn $method(self, v: $t) -> Result<(), Error> {
            scalar(&v, self.out)
        }
    )*};
}

/// Keys that are not strings, made as `serde_json` makes them ([`other_key`]).
macro_rules! keyed_as_serde_json_keys {
    ($($method:ident: $t:ty),*) => {$(
        fn $method(self, v: $t) -> Result<String, Error> {
            other_key(&v)
        }
    )*};
}

struct Canon<'a> {
    out: &'a mut Vec<u8>,
    /// The entries of every object still open, innermost last.
    spans: &'a mut Vec<Span>,
    mode: Mode,
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Json,
    /// Inside a [`CANONICAL_TEXT`] newtype: a raw value's text is canonical already.
    CanonicalText,
    /// A raw value's one field: its string is JSON text, written as it is.
    RawText,
}

impl<'a> Canon<'a> {
    /// Opens an array (`variant`: inside the one-key object of a tuple variant).
    fn array(self, variant: bool) -> Seq<'a> {
        self.out.push(b'[');
        Seq {
            out: self.out,
            spans: self.spans,
            first: true,
            variant,
        }
    }

    fn object(self, kind: Kind) -> Object<'a> {
        let kind = match kind {
            Kind::Raw if self.mode == Mode::CanonicalText => Kind::CanonicalRaw,
            other => other,
        };
        Object {
            base: self.out.len(),
            spans_base: self.spans.len(),
            out: self.out,
            spans: self.spans,
            kind,
            key: None,
        }
    }
}

impl<'a> ser::Serializer for Canon<'a> {
    type Ok = ();
    type Error = Error;
    type SerializeSeq = Seq<'a>;
    type SerializeTuple = Seq<'a>;
    type SerializeTupleStruct = Seq<'a>;
    type SerializeTupleVariant = Seq<'a>;
    type SerializeMap = Object<'a>;
    type SerializeStruct = Object<'a>;
    type SerializeStructVariant = Object<'a>;

    written_as_serde_json_writes!(
        serialize_bool: bool, serialize_i8: i8, serialize_i16: i16, serialize_i32: i32,
        serialize_i64: i64, serialize_u8: u8, serialize_u16: u16, serialize_u32: u32,
        serialize_u64: u64
    );
    fn serialize_i128(self, v: i128) -> Result<(), Error> {
        via_value(&v, self.out)
    }
    fn serialize_u128(self, v: u128) -> Result<(), Error> {
        via_value(&v, self.out)
    }
    fn serialize_f32(self, v: f32) -> Result<(), Error> {
        via_value(&v, self.out)
    }
    fn serialize_f64(self, v: f64) -> Result<(), Error> {
        // A `Value` holds no infinity or NaN: they become `null`.
        if v.is_finite() {
            scalar(&v, self.out)
        } else {
            self.out.extend_from_slice(b"null");
            Ok(())
        }
    }
    fn serialize_char(self, v: char) -> Result<(), Error> {
        scalar(&v, self.out)
    }
    fn serialize_str(self, v: &str) -> Result<(), Error> {
        if self.mode == Mode::RawText {
            self.out.extend_from_slice(v.as_bytes());
            return Ok(());
        }
        scalar(v, self.out)
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<(), Error> {
        // A `Value` holds bytes as an array of numbers.
        via_value(&v.to_vec(), self.out)
    }
    fn serialize_none(self) -> Result<(), Error> {
        self.serialize_unit()
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Error> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), Error> {
        self.out.extend_from_slice(b"null");
        Ok(())
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<(), Error> {
        self.serialize_unit()
    }
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<(), Error> {
        scalar(variant, self.out)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        let mode = if name == CANONICAL_TEXT {
            Mode::CanonicalText
        } else {
            Mode::Json
        };
        value.serialize(Canon { mode, ..self })
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        // One key: nothing to sort.
        open_variant(variant, self.out)?;
        value.serialize(Canon {
            out: &mut *self.out,
            spans: self.spans,
            mode: Mode::Json,
        })?;
        self.out.push(b'}');
        Ok(())
    }
    fn serialize_seq(self, _len: Option<usize>) -> Result<Seq<'a>, Error> {
        Ok(self.array(false))
    }
    fn serialize_tuple(self, len: usize) -> Result<Seq<'a>, Error> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_struct(self, _name: &'static str, len: usize) -> Result<Seq<'a>, Error> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Seq<'a>, Error> {
        open_variant(variant, self.out)?;
        Ok(self.array(true))
    }
    fn serialize_map(self, _len: Option<usize>) -> Result<Object<'a>, Error> {
        Ok(self.object(Kind::Plain))
    }
    fn serialize_struct(self, name: &'static str, _len: usize) -> Result<Object<'a>, Error> {
        let kind = if name == RAW_VALUE_TOKEN {
            Kind::Raw
        } else {
            Kind::Plain
        };
        Ok(self.object(kind))
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Object<'a>, Error> {
        open_variant(variant, self.out)?;
        Ok(self.object(Kind::Variant))
    }
}

struct Seq<'a> {
    out: &'a mut Vec<u8>,
    spans: &'a mut Vec<Span>,
    first: bool,
    /// A tuple variant: the array sits in a one-key object.
    variant: bool,
}

impl Seq<'_> {
    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        value.serialize(Canon {
            out: &mut *self.out,
            spans: &mut *self.spans,
            mode: Mode::Json,
        })
    }
    fn close(self) -> Result<(), Error> {
        self.out.push(b']');
        if self.variant {
            self.out.push(b'}');
        }
        Ok(())
    }
}

/// The four sequence shapes serde has are one array here.
macro_rules! array_of {
    ($($shape:ident :: $method:ident),*) => {$(
        impl ser::$shape for Seq<'_> {
            type Ok = ();
            type Error = Error;
            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
                self.element(value)
            }
            fn end(self) -> Result<(), Error> {
                self.close()
            }
        }
    )*};
}

array_of!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field
);

#[derive(PartialEq)]
enum Kind {
    Plain,
    /// A struct variant: the object sits in a one-key object.
    Variant,
    /// `serde_json`'s `RawValue`: its one field is the JSON text, parsed as the `Value` path
    /// does.
    Raw,
    /// A `RawValue` inside a [`CANONICAL_TEXT`] newtype: its text is written as it is.
    CanonicalRaw,
}

/// An object being written: its entries go to `out` from `base` on, as they come, and
/// `spans` from `spans_base` on says where each one's value is.
struct Object<'a> {
    out: &'a mut Vec<u8>,
    spans: &'a mut Vec<Span>,
    kind: Kind,
    base: usize,
    spans_base: usize,
    key: Option<String>,
}

impl Object<'_> {
    fn entry<T: Serialize + ?Sized>(
        &mut self,
        key: Cow<'static, str>,
        value: &T,
    ) -> Result<(), Error> {
        let start = self.out.len();
        let mode = match self.kind {
            // The one field is the text itself.
            Kind::Raw | Kind::CanonicalRaw => Mode::RawText,
            Kind::Plain | Kind::Variant => Mode::Json,
        };
        value.serialize(Canon {
            out: &mut *self.out,
            spans: &mut *self.spans,
            mode,
        })?;
        self.spans.push((key, start, self.out.len()));
        Ok(())
    }

    fn close(self) -> Result<(), Error> {
        let Object {
            out,
            spans,
            kind,
            base,
            spans_base,
            ..
        } = self;
        match kind {
            Kind::CanonicalRaw => {}
            Kind::Raw => {
                let v: Value = serde_json::from_slice(&out[base..])?;
                out.truncate(base);
                crate::envelope::canonical(&v, out);
            }
            Kind::Plain | Kind::Variant => {
                let unsorted_end = out.len();
                let entries = &mut spans[spans_base..];
                // A map keeps the last of equal keys, as `Value`'s map does: a stable sort,
                // then the last of each run of equal keys.
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                out.push(b'{');
                for (i, (key, start, end)) in entries.iter().enumerate() {
                    if entries.get(i + 1).is_some_and(|next| next.0 == *key) {
                        continue;
                    }
                    if out.len() > unsorted_end + 1 {
                        out.push(b',');
                    }
                    scalar(key.as_ref(), out)?;
                    out.push(b':');
                    out.extend_from_within(*start..*end);
                }
                out.push(b'}');
                if kind == Kind::Variant {
                    out.push(b'}');
                }
                // The sorted copy takes the place of the entries as they came.
                out.copy_within(unsorted_end.., base);
                out.truncate(base + (out.len() - unsorted_end));
            }
        }
        spans.truncate(spans_base);
        Ok(())
    }
}

impl ser::SerializeMap for Object<'_> {
    type Ok = ();
    type Error = Error;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Error> {
        self.key = Some(key.serialize(Key)?);
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        let key = self
            .key
            .take()
            .ok_or_else(|| <Error as ser::Error>::custom("a map value without its key"))?;
        self.entry(key.into(), value)
    }
    fn end(self) -> Result<(), Error> {
        self.close()
    }
}

/// A struct and a struct variant's fields are entries with their names as keys.
macro_rules! object_of {
    ($($shape:ident),*) => {$(
        impl ser::$shape for Object<'_> {
            type Ok = ();
            type Error = Error;
            fn serialize_field<T: Serialize + ?Sized>(
                &mut self,
                key: &'static str,
                value: &T,
            ) -> Result<(), Error> {
                self.entry(key.into(), value)
            }
            fn end(self) -> Result<(), Error> {
                self.close()
            }
        }
    )*};
}

object_of!(SerializeStruct, SerializeStructVariant);

/// A map key as the `Value` path makes it: whatever `serde_json` accepts as a key, as the
/// string it becomes.
struct Key;

impl ser::Serializer for Key {
    type Ok = String;
    type Error = Error;
    type SerializeSeq = Impossible<String, Error>;
    type SerializeTuple = Impossible<String, Error>;
    type SerializeTupleStruct = Impossible<String, Error>;
    type SerializeTupleVariant = Impossible<String, Error>;
    type SerializeMap = Impossible<String, Error>;
    type SerializeStruct = Impossible<String, Error>;
    type SerializeStructVariant = Impossible<String, Error>;

    fn serialize_str(self, v: &str) -> Result<String, Error> {
        Ok(v.to_owned())
    }
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<String, Error> {
        Ok(variant.to_owned())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<String, Error> {
        value.serialize(self)
    }
    // Anything else goes through `serde_json`'s own rules for keys (numbers and booleans as
    // their text, the rest refused): a map with it as its one key, read back.
    keyed_as_serde_json_keys!(
        serialize_bool: bool, serialize_i8: i8, serialize_i16: i16, serialize_i32: i32,
        serialize_i64: i64, serialize_i128: i128, serialize_u8: u8, serialize_u16: u16,
        serialize_u32: u32, serialize_u64: u64, serialize_u128: u128, serialize_f32: f32,
        serialize_f64: f64
    );
    fn serialize_char(self, v: char) -> Result<String, Error> {
        Ok(v.to_string())
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<String, Error> {
        other_key(&v)
    }
    fn serialize_none(self) -> Result<String, Error> {
        other_key(&())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<String, Error> {
        other_key(&Some(value))
    }
    fn serialize_unit(self) -> Result<String, Error> {
        other_key(&())
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<String, Error> {
        other_key(&())
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _value: &T,
    ) -> Result<String, Error> {
        Err(key_must_be_a_string())
    }
    fn serialize_seq(self, _len: Option<usize>) -> Result<Self::SerializeSeq, Error> {
        Err(key_must_be_a_string())
    }
    fn serialize_tuple(self, _len: usize) -> Result<Self::SerializeTuple, Error> {
        Err(key_must_be_a_string())
    }
    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleStruct, Error> {
        Err(key_must_be_a_string())
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleVariant, Error> {
        Err(key_must_be_a_string())
    }
    fn serialize_map(self, _len: Option<usize>) -> Result<Self::SerializeMap, Error> {
        Err(key_must_be_a_string())
    }
    fn serialize_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStruct, Error> {
        Err(key_must_be_a_string())
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStructVariant, Error> {
        Err(key_must_be_a_string())
    }
}

fn key_must_be_a_string() -> Error {
    <Error as ser::Error>::custom("key must be a string")
}

/// The key `serde_json` makes of `key` in a `Value` map (or its refusal).
fn other_key<T: Serialize + ?Sized>(key: &T) -> Result<String, Error> {
    match serde_json::to_value(OneKey(key))? {
        Value::Object(m) => m
            .into_iter()
            .next()
            .map(|(k, _)| k)
            .ok_or_else(key_must_be_a_string),
        _ => Err(key_must_be_a_string()),
    }
}

/// A map of one entry: `key` to `null`.
struct OneKey<'a, T: ?Sized>(&'a T);

impl<T: Serialize + ?Sized> Serialize for OneKey<'_, T> {
    fn serialize<S: ser::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use ser::SerializeMap;
        let mut m = s.serialize_map(Some(1))?;
        m.serialize_entry(self.0, &())?;
        m.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Serialize;
    use serde_json::json;
    use std::collections::{BTreeMap, HashMap};

    fn by_value<T: Serialize>(v: &T) -> Vec<u8> {
        let mut out = Vec::new();
        crate::envelope::canonical(&serde_json::to_value(v).unwrap(), &mut out);
        out
    }

    fn direct<T: Serialize>(v: &T) -> Vec<u8> {
        let mut out = Vec::new();
        write(v, &mut out).unwrap();
        out
    }

    struct Bytes;
    impl Serialize for Bytes {
        fn serialize<S: ser::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(b"\x00\xff")
        }
    }

    #[derive(Serialize)]
    enum Shape {
        Unit,
        New(u8),
        Pair(i32, String),
        Named { z: f64, a: Option<bool> },
    }

    #[derive(Serialize)]
    struct Flat {
        zeta: u32,
        #[serde(flatten)]
        shape: Tagged,
        #[serde(skip_serializing_if = "Option::is_none")]
        absent: Option<u8>,
    }

    #[derive(Serialize)]
    #[serde(tag = "type", content = "data")]
    enum Tagged {
        One { b: String, a: Vec<Shape> },
    }

    /// Every form serde has, the escapes JSON has, and numbers at their edges give the bytes
    /// the `Value` path gives.
    #[test]
    fn every_form_writes_what_the_value_path_writes() {
        let raw = serde_json::value::RawValue::from_string(
            r#"{ "z" : [1, 2.50, {"y":null,"b":"\u00e9"}], "a": -0.0 }"#.into(),
        )
        .unwrap();
        let mut hashed = HashMap::new();
        for k in ["q", "b", "é", "", "\u{1f600}", "B", "a\"b"] {
            hashed.insert(k.to_string(), k.len());
        }
        let numbered: BTreeMap<i64, &str> = [(10, "ten"), (-2, "minus two"), (9, "nine")].into();
        let flat = Flat {
            zeta: 7,
            shape: Tagged::One {
                b: "line\nbreak\t\u{0}\u{7f}\u{2028}".into(),
                a: vec![
                    Shape::Unit,
                    Shape::New(255),
                    Shape::Pair(-1, "x".into()),
                    Shape::Named {
                        z: f64::NAN,
                        a: Some(true),
                    },
                    Shape::Named { z: 1e300, a: None },
                ],
            },
            absent: None,
        };
        // Each value's bytes by the `Value` path, then written straight.
        fn both<T: Serialize>(v: &T) -> (Vec<u8>, Vec<u8>) {
            (by_value(v), direct(v))
        }
        let written = [
            both(&flat),
            both(&raw),
            both(&hashed),
            both(&numbered),
            both(
                &json!({"z": 1, "a": [true, null, 1.5, -3, 18446744073709551615u64], "m": {"b": {}, "a": []}}),
            ),
            both(&(1.5f32, 0.1f32, u128::from(u64::MAX), -5i128, 'c', "s")),
            both(&Bytes),
            both(&[f64::INFINITY, -0.0, 0.1, 123456789.0]),
        ];
        for (by_value, direct) in &written {
            assert_eq!(
                String::from_utf8_lossy(direct),
                String::from_utf8_lossy(by_value),
                "direct against the Value path"
            );
        }
        // The flattened tag and content are sorted in with the struct's own fields.
        assert!(String::from_utf8_lossy(&written[0].1).starts_with(r#"{"data":{"a":["Unit","#));
    }

    /// A key `serde_json` cannot make a string of is refused, as the `Value` path refuses it.
    #[test]
    fn a_key_that_is_no_string_is_refused_as_by_the_value_path() {
        let bad: BTreeMap<Vec<u8>, u8> = [(vec![1u8], 1)].into();
        assert!(serde_json::to_value(&bad).is_err());
        assert!(write(&bad, &mut Vec::new()).is_err());
        let ok: BTreeMap<bool, u8> = [(true, 1), (false, 0)].into();
        assert_eq!(direct(&ok), by_value(&ok));
    }
}
