//! Raw bytes (guest-written paths, file contents, a seccomp filter) as a standard base64
//! string in JSON, much denser than serde's arrays of numbers: the RFC 4648 alphabet
//! (`+`, `/`) with `=` padding. Used as `#[serde(with = "crate::base64_field")]`.
//!
//! Decoding is strict: a string that is not canonical padded base64 fails the frame.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serializer};

/// Encodes `data` with padding.
pub fn encode(data: &[u8]) -> String {
    STANDARD.encode(data)
}

/// Decodes padded base64; `None` for anything else.
pub fn decode(text: &str) -> Option<Vec<u8>> {
    STANDARD.decode(text).ok()
}

pub fn serialize<S: Serializer>(data: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&encode(data))
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
    decode(&text).ok_or_else(|| serde::de::Error::custom("invalid base64"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the hand-written codec this replaced produced, byte for byte: the wire format
    /// older guests and hosts speak.
    const WIRE: [(&[u8], &str); 9] = [
        (b"", ""),
        (b"f", "Zg=="),
        (b"fo", "Zm8="),
        (b"foo", "Zm9v"),
        (b"foob", "Zm9vYg=="),
        (b"fooba", "Zm9vYmE="),
        (b"foobar", "Zm9vYmFy"),
        (b"etc/\xff\n name", "ZXRjL/8KIG5hbWU="),
        (b"\xfb\xff\xbf", "+/+/"),
    ];

    #[test]
    fn the_wire_format_is_the_old_one() {
        for (bytes, text) in WIRE {
            assert_eq!(encode(bytes), text);
            assert_eq!(decode(text).unwrap(), bytes, "{text}");
        }
        // The old codec's own round trip, over every length of a padding cycle and more.
        for len in 0..70 {
            let data: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let text = encode(&data);
            assert_eq!(text.len() % 4, 0);
            assert_eq!(decode(&text).unwrap(), data, "{text}");
        }
    }

    #[test]
    fn anything_but_padded_standard_base64_is_refused() {
        // Missing padding, a foreign byte, too much padding, padding inside, the URL-safe
        // alphabet, a newline.
        for bad in [
            "Zm8",
            "Zm8*",
            "Z===",
            "Zm==Zm8=",
            "====",
            "Zm9v\n",
            "-_-_",
            "Zm9v Zm9v",
        ] {
            assert!(decode(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn fields_are_strings_in_json() {
        #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
        struct Field {
            #[serde(with = "crate::base64_field")]
            data: Vec<u8>,
        }
        let json = serde_json::to_string(&Field {
            data: b"fo".to_vec(),
        })
        .unwrap();
        assert_eq!(json, r#"{"data":"Zm8="}"#);
        let back: Field = serde_json::from_str(&json).unwrap();
        assert_eq!(back.data, b"fo");
        assert!(serde_json::from_str::<Field>(r#"{"data":"Zm8"}"#).is_err());
    }
}
