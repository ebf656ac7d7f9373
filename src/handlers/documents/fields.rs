//! The validators of documents' payload fields, and the binary (attachment) field.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value as Json;

use crate::error::AppError;

/// A non-negative integer field, else `INVALID_PAYLOAD` naming it.
pub(super) fn count_field(field: &str, v: &Json) -> Result<u64, AppError> {
    v.as_u64()
        .filter(|n| *n <= (1u64 << 53))
        .ok_or_else(|| AppError::invalid(format!("{field} must be a non-negative integer")))
}

/// The file name without directories, control, bidi or other invisible characters
/// ([`crate::sanitize::is_invisible`]), 1 to 255 characters. A name that is blank once
/// they are gone is `INVALID_PAYLOAD`, as a blank one is (and as in the Node backend).
pub(super) fn clean_filename(v: &Json) -> Result<String, AppError> {
    let Some(raw) = v.as_str() else {
        return Err(AppError::invalid("filename is required"));
    };
    let unix = raw.replace('\\', "/");
    let base = unix.rsplit('/').next().unwrap_or("");
    let name: String = base
        .chars()
        .filter(|c| !crate::sanitize::is_invisible(*c))
        .collect();
    let name = name.trim();
    if name.is_empty() || name == "." || name == ".." || name.chars().count() > 255 {
        return Err(AppError::invalid("filename must be 1 to 255 characters"));
    }
    Ok(name.to_owned())
}

pub(super) fn document_type(v: Option<&Json>) -> Result<String, AppError> {
    match v.filter(|v| !v.is_null()) {
        None => Ok("document".to_owned()),
        Some(Json::String(s))
            if (1..=64).contains(&s.len())
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_./-".contains(&b)) =>
        {
            Ok(s.clone())
        }
        Some(_) => Err(AppError::invalid(
            "documentType must be 1 to 64 characters of [A-Za-z0-9_./-]",
        )),
    }
}

pub(super) fn sha256_field(v: Option<&Json>) -> Result<Option<String>, AppError> {
    match v.filter(|v| !v.is_null()) {
        None => Ok(None),
        Some(Json::String(s)) if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Ok(Some(s.to_ascii_lowercase()))
        }
        Some(_) => Err(AppError::invalid("sha256 must be 64 hex digits")),
    }
}

/// A field that is binary data (a Socket.IO attachment) or something else (or missing).
#[derive(Default)]
pub(super) enum MaybeBinary {
    Binary(Bytes),
    #[default]
    Other,
}

impl<'de> Deserialize<'de> for MaybeBinary {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = MaybeBinary;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("binary data")
            }
            fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<MaybeBinary, E> {
                Ok(MaybeBinary::Binary(Bytes::from(v)))
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<MaybeBinary, E> {
                Ok(MaybeBinary::Binary(Bytes::copy_from_slice(v)))
            }
            fn visit_str<E>(self, _: &str) -> Result<MaybeBinary, E> {
                Ok(MaybeBinary::Other)
            }
            fn visit_bool<E>(self, _: bool) -> Result<MaybeBinary, E> {
                Ok(MaybeBinary::Other)
            }
            fn visit_i64<E>(self, _: i64) -> Result<MaybeBinary, E> {
                Ok(MaybeBinary::Other)
            }
            fn visit_u64<E>(self, _: u64) -> Result<MaybeBinary, E> {
                Ok(MaybeBinary::Other)
            }
            fn visit_f64<E>(self, _: f64) -> Result<MaybeBinary, E> {
                Ok(MaybeBinary::Other)
            }
            fn visit_unit<E>(self) -> Result<MaybeBinary, E> {
                Ok(MaybeBinary::Other)
            }
            fn visit_none<E>(self) -> Result<MaybeBinary, E> {
                Ok(MaybeBinary::Other)
            }
            fn visit_seq<S: serde::de::SeqAccess<'de>>(
                self,
                mut s: S,
            ) -> Result<MaybeBinary, S::Error> {
                while s.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(MaybeBinary::Other)
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut m: M,
            ) -> Result<MaybeBinary, M::Error> {
                while m
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(MaybeBinary::Other)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn filenames_lose_directories_and_control_characters() {
        let name = |s: &str| clean_filename(&json!(s));
        assert_eq!(name("plans/A-101.pdf").unwrap(), "A-101.pdf");
        assert_eq!(name("C:\\site\\report.docx").unwrap(), "report.docx");
        assert_eq!(name("  a\u{0}b\n.txt ").unwrap(), "ab.txt");
        assert_eq!(name("invoice\u{202E}fdp.exe").unwrap(), "invoicefdp.exe");
        assert_eq!(name("\u{2066}a\u{200F}\u{2028}b\u{FEFF}").unwrap(), "ab");
        assert!(name("\u{202E}\u{200E} ").is_err());
        assert!(name("dir/").is_err());
        assert!(name("..").is_err());
        assert!(name(&"x".repeat(256)).is_err());
        assert!(clean_filename(&json!(5)).is_err());
    }
}

/// Property tests: the upload and stream payload decoders never panic.
#[cfg(test)]
mod props {
    use proptest::prelude::*;

    use serde_json::json;

    use super::*;
    use crate::handlers::documents::upload::ChunkPayload;

    proptest! {
        #[test]
        fn prop_field_decoders_never_panic(s in ".{0,300}", n in any::<i64>(), f in any::<f64>()) {
            for v in [json!(s), json!(n), json!(f), json!(null), json!([s]), json!({ "k": n })] {
                let _ = clean_filename(&v);
                let _ = document_type(Some(&v));
                let _ = sha256_field(Some(&v));
                let _ = count_field("f", &v);
            }
        }

        #[test]
        fn prop_clean_filenames_are_plain(s in ".{0,300}") {
            if let Ok(name) = clean_filename(&json!(s)) {
                prop_assert!(!name.contains('/') && !name.contains('\\'));
                prop_assert!(!name.chars().any(crate::sanitize::is_invisible));
                prop_assert!((1..=255).contains(&name.chars().count()));
            }
        }

        #[test]
        fn prop_chunk_payloads_decode_or_are_refused(v in prop::collection::vec(any::<u8>(), 0..64), s in ".{0,64}") {
            // The shapes a client can send for `data`, through the same serde path.
            for data in [json!(s), json!(v), json!({ "a": s }), json!(null)] {
                let p: Result<ChunkPayload, _> =
                    serde_json::from_value(json!({ "uploadId": s, "index": 0, "data": data }));
                if let Ok(p) = p {
                    prop_assert!(matches!(p.data, MaybeBinary::Other));
                }
            }
        }
    }
}
