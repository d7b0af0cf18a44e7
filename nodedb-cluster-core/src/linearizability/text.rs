//! Keys and values as people read them: in reports, printable UTF-8 is shown quoted and
//! anything else as hex; in human-readable serde formats (JSON) the same rule applies, so a
//! failure report is legible, while compact formats (postcard) keep raw bytes.

use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// Bytes longer than this are shortened in reports.
const SHOWN_BYTES_MAX: usize = 48;

/// `bytes` for a report: `"text"` when printable UTF-8, else `0x…` hex; long values shortened.
pub fn show(bytes: &[u8]) -> String {
    let (shown, rest) = bytes.split_at(bytes.len().min(SHOWN_BYTES_MAX));
    let mut text = match std::str::from_utf8(shown) {
        Ok(text) if text.chars().all(|c| !c.is_control()) => format!("{text:?}"),
        _ => format!("0x{}", hex(shown)),
    };
    if !rest.is_empty() {
        text.push_str(&format!("…({} bytes)", bytes.len()));
    }
    text
}

/// A value that may be absent, for a report.
pub fn show_value(value: Option<&[u8]>) -> String {
    match value {
        Some(bytes) => show(bytes),
        None => "absent".to_string(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|index| u8::from_str_radix(&text[index..index + 2], 16).ok())
        .collect()
}

/// Serde adapter for `Vec<u8>`: a string (or `{"hex": "…"}`) in human-readable formats.
pub mod text_bytes {
    use super::TextBytes;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        TextBytes(bytes.to_vec()).serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        TextBytes::deserialize(deserializer).map(|bytes| bytes.0)
    }
}

/// Serde adapter for `Option<Vec<u8>>`, `null` when absent.
pub mod text_bytes_option {
    use super::TextBytes;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(
        bytes: &Option<Vec<u8>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        bytes.clone().map(TextBytes).serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Vec<u8>>, D::Error> {
        Option::<TextBytes>::deserialize(deserializer).map(|bytes| bytes.map(|bytes| bytes.0))
    }
}

struct TextBytes(Vec<u8>);

impl Serialize for TextBytes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if !serializer.is_human_readable() {
            return serializer.serialize_bytes(&self.0);
        }
        match std::str::from_utf8(&self.0) {
            Ok(text) => serializer.serialize_str(text),
            Err(_) => {
                use serde::ser::SerializeMap;
                let mut map = serializer.serialize_map(Some(1))?;
                map.serialize_entry("hex", &hex(&self.0))?;
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for TextBytes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<TextBytes, D::Error> {
        if deserializer.is_human_readable() {
            deserializer.deserialize_any(TextBytesVisitor)
        } else {
            deserializer.deserialize_byte_buf(TextBytesVisitor)
        }
    }
}

struct TextBytesVisitor;

impl<'de> Visitor<'de> for TextBytesVisitor {
    type Value = TextBytes;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a string, {\"hex\": \"…\"}, or bytes")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<TextBytes, E> {
        Ok(TextBytes(text.as_bytes().to_vec()))
    }

    fn visit_bytes<E: de::Error>(self, bytes: &[u8]) -> Result<TextBytes, E> {
        Ok(TextBytes(bytes.to_vec()))
    }

    fn visit_byte_buf<E: de::Error>(self, bytes: Vec<u8>) -> Result<TextBytes, E> {
        Ok(TextBytes(bytes))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<TextBytes, A::Error> {
        let mut bytes = Vec::new();
        while let Some(byte) = seq.next_element::<u8>()? {
            bytes.push(byte);
        }
        Ok(TextBytes(bytes))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TextBytes, A::Error> {
        let Some((field, text)) = map.next_entry::<String, String>()? else {
            return Err(de::Error::custom(
                "expected {\"hex\": \"…\"}, found an empty map",
            ));
        };
        if field != "hex" {
            return Err(de::Error::unknown_field(&field, &["hex"]));
        }
        if map.next_key::<String>()?.is_some() {
            return Err(de::Error::custom("expected only the field \"hex\""));
        }
        unhex(&text)
            .map(TextBytes)
            .ok_or_else(|| de::Error::invalid_value(de::Unexpected::Str(&text), &"hex digits"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_text_is_quoted_and_binary_is_hex() {
        assert_eq!(show(b"v1"), "\"v1\"");
        assert_eq!(show(&[0, 255]), "0x00ff");
        assert_eq!(show(b"a\nb"), "0x610a62");
        assert_eq!(show_value(None), "absent");
        let long = vec![b'x'; SHOWN_BYTES_MAX + 2];
        assert!(show(&long).ends_with(&format!("…({} bytes)", SHOWN_BYTES_MAX + 2)));
    }

    #[test]
    fn hex_round_trips_and_rejects_garbage() {
        assert_eq!(unhex(&hex(&[0, 1, 254, 255])), Some(vec![0, 1, 254, 255]));
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex("zz"), None);
        assert_eq!(unhex("é1"), None);
    }
}
