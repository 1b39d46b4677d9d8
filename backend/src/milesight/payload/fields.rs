//! Reading an MDP event's fields straight from its JSON text: strings are borrowed from the
//! body where they have no escapes, everything the webhook does not use is skipped without
//! being built, and `payload` and `message` are kept as their JSON text. A `serde_json::Value`
//! tree of every event, re-serialised to be stored, had cost the HTTP workers about 8 µs an
//! event (docs/benchmarks.md).
//!
//! Lenient like a `Value` lookup: a field of an unexpected JSON type reads as absent (or, for
//! a nested object, as no object), and a repeated key keeps its last value.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

/// One JSON value as far as the webhook needs it; arrays and objects are skipped.
#[derive(Debug, Default)]
pub(super) enum Loose<'a> {
    #[default]
    Null,
    Text(Cow<'a, str>),
    Int(i64),
    /// A number that is not an `i64` (a float, or an integer past `i64::MAX`).
    Number(serde_json::Number),
    /// A boolean, an array or an object.
    Other,
}

impl<'a> Loose<'a> {
    /// Strings stay strings; numbers (64-bit ids, Unix times) become their decimal text.
    pub(super) fn scalar_text(self) -> Option<String> {
        match self {
            Loose::Text(text) => Some(text.into_owned()),
            Loose::Int(n) => Some(n.to_string()),
            Loose::Number(n) => Some(n.to_string()),
            Loose::Null | Loose::Other => None,
        }
    }

    pub(super) fn text(self) -> Option<Cow<'a, str>> {
        match self {
            Loose::Text(text) => Some(text),
            _ => None,
        }
    }

    pub(super) fn as_i64(&self) -> Option<i64> {
        match self {
            Loose::Int(n) => Some(*n),
            _ => None,
        }
    }

    pub(super) fn as_f64(&self) -> Option<f64> {
        match self {
            Loose::Int(n) => Some(*n as f64),
            Loose::Number(n) => n.as_f64(),
            _ => None,
        }
    }

    pub(super) fn is_null(&self) -> bool {
        matches!(self, Loose::Null)
    }
}

impl<'de> Deserialize<'de> for Loose<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(LooseVisitor)
    }
}

struct LooseVisitor;

impl<'de> Visitor<'de> for LooseVisitor {
    type Value = Loose<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Loose::Null)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Loose::Other)
    }
    fn visit_i64<E>(self, n: i64) -> Result<Self::Value, E> {
        Ok(Loose::Int(n))
    }
    fn visit_u64<E>(self, n: u64) -> Result<Self::Value, E> {
        Ok(i64::try_from(n).map_or(Loose::Number(n.into()), Loose::Int))
    }
    fn visit_f64<E>(self, n: f64) -> Result<Self::Value, E> {
        Ok(serde_json::Number::from_f64(n).map_or(Loose::Other, Loose::Number))
    }
    fn visit_borrowed_str<E>(self, text: &'de str) -> Result<Self::Value, E> {
        Ok(Loose::Text(Cow::Borrowed(text)))
    }
    fn visit_str<E>(self, text: &str) -> Result<Self::Value, E> {
        Ok(Loose::Text(Cow::Owned(text.to_owned())))
    }
    fn visit_string<E>(self, text: String) -> Result<Self::Value, E> {
        Ok(Loose::Text(Cow::Owned(text)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Loose::Other)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Loose::Other)
    }
}

/// An object's fields, one `read` call per key; any other JSON value reads as `None`.
trait ObjectFields<'de>: Default {
    /// Reads the value of `key` if it is a field of ours; skips it otherwise.
    fn read<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error>;
}

/// `Some(fields)` for a JSON object, `None` for anything else.
pub(super) struct MaybeObject<T>(pub Option<T>);

impl<'de, T: ObjectFields<'de>> Deserialize<'de> for MaybeObject<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ObjectVisitor(std::marker::PhantomData))
    }
}

struct ObjectVisitor<T>(std::marker::PhantomData<T>);

impl<'de, T: ObjectFields<'de>> Visitor<'de> for ObjectVisitor<T> {
    type Value = MaybeObject<T>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = T::default();
        while let Some(key) = map.next_key::<Loose<'de>>()? {
            match key {
                Loose::Text(key) => fields.read(&key, &mut map)?,
                _ => map.next_value::<IgnoredAny>().map(drop)?,
            }
        }
        Ok(MaybeObject(Some(fields)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(MaybeObject(None))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(MaybeObject(None))
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(MaybeObject(None))
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(MaybeObject(None))
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(MaybeObject(None))
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(MaybeObject(None))
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(MaybeObject(None))
    }
}

/// The top level of an MDP event.
#[derive(Default)]
pub(super) struct EventFields<'a> {
    pub event_id: Loose<'a>,
    pub event_id_upper: Loose<'a>,
    pub event_type: Loose<'a>,
    pub created: Loose<'a>,
    pub data: Option<DataFields<'a>>,
}

impl<'de> ObjectFields<'de> for EventFields<'de> {
    fn read<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error> {
        match key {
            "eventId" => self.event_id = map.next_value()?,
            "eventID" => self.event_id_upper = map.next_value()?,
            "eventType" => self.event_type = map.next_value()?,
            "eventCreatedTime" => self.created = map.next_value()?,
            "data" => self.data = map.next_value::<MaybeObject<DataFields>>()?.0,
            _ => drop(map.next_value::<IgnoredAny>()?),
        }
        Ok(())
    }
}

/// An event's `data` object.
#[derive(Default)]
pub(super) struct DataFields<'a> {
    pub ts: Loose<'a>,
    pub data_type: Loose<'a>,
    pub profile: Option<ProfileFields<'a>>,
    pub payload: Option<&'a RawValue>,
    pub message: Option<&'a RawValue>,
}

impl<'de> ObjectFields<'de> for DataFields<'de> {
    fn read<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error> {
        match key {
            "ts" => self.ts = map.next_value()?,
            "type" => self.data_type = map.next_value()?,
            "deviceProfile" => self.profile = map.next_value::<MaybeObject<ProfileFields>>()?.0,
            "payload" => self.payload = Some(map.next_value()?),
            "message" => self.message = Some(map.next_value()?),
            _ => drop(map.next_value::<IgnoredAny>()?),
        }
        Ok(())
    }
}

/// A device's `deviceProfile`.
#[derive(Default)]
pub(super) struct ProfileFields<'a> {
    pub sn: Loose<'a>,
    pub dev_eui: Loose<'a>,
    pub device_id: Loose<'a>,
    pub name: Loose<'a>,
    pub model: Loose<'a>,
}

impl<'de> ObjectFields<'de> for ProfileFields<'de> {
    fn read<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error> {
        match key {
            "sn" => self.sn = map.next_value()?,
            "devEUI" => self.dev_eui = map.next_value()?,
            "deviceId" => self.device_id = map.next_value()?,
            "name" => self.name = map.next_value()?,
            "model" => self.model = map.next_value()?,
            _ => drop(map.next_value::<IgnoredAny>()?),
        }
        Ok(())
    }
}

/// A payload's `battery`, the one reading the device row keeps apart.
#[derive(Default)]
pub(super) struct BatteryField<'a> {
    pub battery: Loose<'a>,
}

impl<'de> ObjectFields<'de> for BatteryField<'de> {
    fn read<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error> {
        match key {
            "battery" => self.battery = map.next_value()?,
            _ => drop(map.next_value::<IgnoredAny>()?),
        }
        Ok(())
    }
}

/// Whether no array or object in `json` (valid JSON) is nested deeper than `limit`.
/// serde_json skips a raw value without a depth limit, but reads it back (API, UI) with one,
/// so what is stored must stay within it.
pub(super) fn nesting_within(json: &[u8], limit: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &byte in json {
        if in_string {
            if escaped {
                escaped = false;
            } else if byte == b'\\' {
                escaped = true;
            } else if byte == b'"' {
                in_string = false;
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return false;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    true
}
