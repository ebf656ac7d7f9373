//! Event arguments of any shape, binary attachments kept as bytes wherever they are nested,
//! so that a fixture can send back exactly what it received.

use bytes::Bytes;
use serde::{
    Deserialize, Serialize,
    de::{MapAccess, SeqAccess, Visitor},
    ser::{SerializeMap, SerializeSeq, SerializeTuple},
};

/// Any argument.
#[derive(Debug, Clone)]
pub enum Dyn {
    Null,
    Bool(bool),
    I64(i64),
    U64(u64),
    F64(f64),
    Str(String),
    Bytes(Bytes),
    Seq(Vec<Dyn>),
    Map(Vec<(String, Dyn)>),
}

impl Dyn {
    /// The value of `key` when this is an object.
    pub fn get(&self, key: &str) -> Option<&Dyn> {
        match self {
            Dyn::Map(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Dyn::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn is_bytes(&self) -> bool {
        matches!(self, Dyn::Bytes(_))
    }

    /// Whether a number equals `n`, however it was decoded.
    pub fn is_number(&self, n: i64) -> bool {
        match *self {
            Dyn::I64(v) => v == n,
            Dyn::U64(v) => i64::try_from(v) == Ok(n),
            Dyn::F64(v) => v == n as f64,
            _ => false,
        }
    }

    /// JavaScript truthiness.
    pub fn is_truthy(&self) -> bool {
        match self {
            Dyn::Null => false,
            Dyn::Bool(b) => *b,
            Dyn::I64(n) => *n != 0,
            Dyn::U64(n) => *n != 0,
            Dyn::F64(n) => *n != 0.0 && !n.is_nan(),
            Dyn::Str(s) => !s.is_empty(),
            Dyn::Bytes(_) | Dyn::Seq(_) | Dyn::Map(_) => true,
        }
    }
}

impl Serialize for Dyn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Dyn::Null => s.serialize_unit(),
            Dyn::Bool(b) => s.serialize_bool(*b),
            Dyn::I64(n) => s.serialize_i64(*n),
            Dyn::U64(n) => s.serialize_u64(*n),
            Dyn::F64(n) => s.serialize_f64(*n),
            Dyn::Str(v) => s.serialize_str(v),
            Dyn::Bytes(b) => s.serialize_bytes(b),
            Dyn::Seq(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for i in items {
                    seq.serialize_element(i)?;
                }
                seq.end()
            }
            Dyn::Map(entries) => {
                let mut map = s.serialize_map(Some(entries.len()))?;
                for (k, v) in entries {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Dyn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Dyn, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Dyn;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any value")
            }
            fn visit_unit<E>(self) -> Result<Dyn, E> {
                Ok(Dyn::Null)
            }
            fn visit_none<E>(self) -> Result<Dyn, E> {
                Ok(Dyn::Null)
            }
            fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Dyn, D::Error> {
                Dyn::deserialize(d)
            }
            fn visit_bool<E>(self, v: bool) -> Result<Dyn, E> {
                Ok(Dyn::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Dyn, E> {
                Ok(Dyn::I64(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Dyn, E> {
                Ok(Dyn::U64(v))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Dyn, E> {
                Ok(Dyn::F64(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<Dyn, E> {
                Ok(Dyn::Str(v.to_owned()))
            }
            fn visit_string<E>(self, v: String) -> Result<Dyn, E> {
                Ok(Dyn::Str(v))
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Dyn, E> {
                Ok(Dyn::Bytes(Bytes::copy_from_slice(v)))
            }
            fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Dyn, E> {
                Ok(Dyn::Bytes(Bytes::from(v)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Dyn, A::Error> {
                let mut items = Vec::new();
                while let Some(i) = a.next_element()? {
                    items.push(i);
                }
                Ok(Dyn::Seq(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Dyn, A::Error> {
                let mut entries = Vec::new();
                while let Some((k, v)) = a.next_entry()? {
                    entries.push((k, v));
                }
                Ok(Dyn::Map(entries))
            }
        }
        d.deserialize_any(V)
    }
}

/// All the arguments of an event or ack. Serialised as a tuple, so that each element
/// is an argument of its own; deserialised through `deserialize_tuple` for the same reason.
#[derive(Debug, Clone, Default)]
pub struct ArgList(pub Vec<Dyn>);

impl ArgList {
    /// The `i`th argument; a missing one is `undefined`, taken as null.
    pub fn arg(&self, i: usize) -> &Dyn {
        self.0.get(i).unwrap_or(&Dyn::Null)
    }
}

impl Serialize for ArgList {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut t = s.serialize_tuple(self.0.len())?;
        for a in &self.0 {
            t.serialize_element(a)?;
        }
        t.end()
    }
}

impl<'de> Deserialize<'de> for ArgList {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<ArgList, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ArgList;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("arguments")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<ArgList, A::Error> {
                let mut items = Vec::new();
                while let Some(i) = a.next_element()? {
                    items.push(i);
                }
                Ok(ArgList(items))
            }
        }
        d.deserialize_tuple(usize::MAX, V)
    }
}
