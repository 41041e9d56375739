//! The decoding of an [`Envelope`] in one pass.
//!
//! The derived decoding of a struct with a `#[serde(flatten)]` field buffers every entry it
//! does not know as serde's private `Content` (a tree of allocations for the event's whole
//! `data`), then decodes the event from that. Every reader decodes every event, so this one
//! reads the envelope's own fields straight, and the event's `data` straight into its variant
//! once its `type` is known: the writer puts `type` before `data`, so the usual event is read
//! with nothing buffered. An envelope whose `data` comes first (another writer's order) buffers
//! it as a `serde_json::Value` and decodes it after. Unknown fields are skipped, as before.

use std::fmt;

use serde::de::{
    self, DeserializeSeed, Deserializer, IgnoredAny, IntoDeserializer, MapAccess, Visitor,
};
use serde::Deserialize;

use super::{Actor, Envelope};
use crate::event::JobEvent;

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum Field {
    EventId,
    SchemaVersion,
    TenantId,
    JobId,
    At,
    Actor,
    PrevHash,
    #[serde(rename = "type")]
    Type,
    Data,
    #[serde(other)]
    Other,
}

impl<'de> Deserialize<'de> for Envelope {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(EnvelopeVisitor)
    }
}

struct EnvelopeVisitor;

/// Sets a field once; a second time is an error, as in a derived decoding.
fn once<T, E: de::Error>(slot: &mut Option<T>, name: &'static str, v: T) -> Result<(), E> {
    if slot.is_some() {
        return Err(E::duplicate_field(name));
    }
    *slot = Some(v);
    Ok(())
}

impl<'de> Visitor<'de> for EnvelopeVisitor {
    type Value = Envelope;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an event envelope")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Envelope, A::Error> {
        let (mut event_id, mut schema_version, mut tenant_id, mut job_id) =
            (None, None, None, None);
        let (mut at, mut actor, mut prev_hash) = (None, None::<Actor>, None::<Option<String>>);
        let mut tag: Option<String> = None;
        let mut event: Option<JobEvent> = None;
        // `data` seen before `type`.
        let mut early_data: Option<serde_json::Value> = None;
        while let Some(field) = map.next_key::<Field>()? {
            match field {
                Field::EventId => once(&mut event_id, "event_id", map.next_value()?)?,
                Field::SchemaVersion => {
                    once(&mut schema_version, "schema_version", map.next_value()?)?
                }
                Field::TenantId => once(&mut tenant_id, "tenant_id", map.next_value()?)?,
                Field::JobId => once(&mut job_id, "job_id", map.next_value()?)?,
                Field::At => once(&mut at, "at", map.next_value()?)?,
                Field::Actor => once(&mut actor, "actor", map.next_value()?)?,
                Field::PrevHash => once(&mut prev_hash, "prev_hash", map.next_value()?)?,
                Field::Type => once(&mut tag, "type", map.next_value()?)?,
                Field::Data => {
                    if event.is_some() || early_data.is_some() {
                        return Err(de::Error::duplicate_field("data"));
                    }
                    match &tag {
                        Some(t) => event = Some(map.next_value_seed(DataOf(t))?),
                        None => early_data = Some(map.next_value()?),
                    }
                }
                Field::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let tag = tag.ok_or_else(|| de::Error::missing_field("type"))?;
        let event = match (event, early_data) {
            (Some(e), _) => e,
            (None, Some(data)) => JobEvent::deserialize(Tagged {
                tag: &tag,
                data: Some(data),
            })
            .map_err(de::Error::custom)?,
            // An event with no `data` (a variant without fields may be written so).
            (None, None) => {
                JobEvent::deserialize(Tagged::<serde::de::value::UnitDeserializer<A::Error>> {
                    tag: &tag,
                    data: None,
                })?
            }
        };
        Ok(Envelope {
            event_id: event_id.ok_or_else(|| de::Error::missing_field("event_id"))?,
            schema_version: schema_version
                .ok_or_else(|| de::Error::missing_field("schema_version"))?,
            tenant_id: tenant_id.ok_or_else(|| de::Error::missing_field("tenant_id"))?,
            job_id: job_id.ok_or_else(|| de::Error::missing_field("job_id"))?,
            at: at.ok_or_else(|| de::Error::missing_field("at"))?,
            actor: actor.ok_or_else(|| de::Error::missing_field("actor"))?,
            prev_hash: prev_hash.flatten(),
            event,
        })
    }
}

/// The event whose `type` is known, decoded from its `data` as it is read.
struct DataOf<'t>(&'t str);

impl<'de> DeserializeSeed<'de> for DataOf<'_> {
    type Value = JobEvent;
    fn deserialize<D: Deserializer<'de>>(self, data: D) -> Result<JobEvent, D::Error> {
        JobEvent::deserialize(Tagged {
            tag: self.0,
            data: Some(data),
        })
    }
}

/// `{"type": tag, "data": <data>}` as a deserializer: what the event's own (adjacently tagged)
/// decoding reads, with `data` handed on from wherever it is.
struct Tagged<'t, D> {
    tag: &'t str,
    data: Option<D>,
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Tagged<'_, D> {
    type Error = D::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        visitor.visit_map(TaggedEntries {
            tag: Some(self.tag),
            data: self.data,
            next: Next::Tag,
        })
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map struct enum
        identifier ignored_any
    }
}

#[derive(PartialEq)]
enum Next {
    Tag,
    Data,
    Done,
}

struct TaggedEntries<'t, D> {
    tag: Option<&'t str>,
    data: Option<D>,
    next: Next,
}

impl<'de, D: Deserializer<'de>> MapAccess<'de> for TaggedEntries<'_, D> {
    type Error = D::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, D::Error> {
        let key = match self.next {
            Next::Tag => "type",
            Next::Data if self.data.is_some() => "data",
            _ => return Ok(None),
        };
        seed.deserialize(IntoDeserializer::<D::Error>::into_deserializer(key))
            .map(Some)
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, D::Error> {
        match self.next {
            Next::Tag => {
                self.next = Next::Data;
                let tag = self.tag.take().unwrap_or_default();
                seed.deserialize(IntoDeserializer::<D::Error>::into_deserializer(tag))
            }
            _ => {
                self.next = Next::Done;
                match self.data.take() {
                    Some(data) => seed.deserialize(data),
                    None => Err(de::Error::custom("the event's data was read already")),
                }
            }
        }
    }
}
