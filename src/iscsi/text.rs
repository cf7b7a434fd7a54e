//! iSCSI text: the `key=value\0` lists of Login and Text PDUs (RFC 7143 §6.1), parsed as borrowed
//! pairs under limits (pair count, key 63 bytes, value 255 bytes or 8192 for the large binary
//! CHAP values, whole text 64 KiB), emitted into a Vec. Values are not interpreted here, except by
//! the small helpers for the RFC's value forms (lists, numbers, booleans).

use std::fmt;

/// Longest key name (RFC 7143 §6.1: "up to 63 bytes").
pub const KEY_LEN_MAX: usize = 63;
/// Longest ordinary value (RFC 7143 §6.1: "maximum length of an individual value ... 255 bytes").
pub const VALUE_LEN_MAX: usize = 255;
/// Longest value of the keys that carry large binary values (CHAP_C / CHAP_R hold up to 1024
/// bytes, which base64 or hex make longer; RFC 7143 asks every node to take 8192 bytes of text).
pub const LARGE_VALUE_LEN_MAX: usize = 8192;
/// Most text bytes one negotiation step may hold, reassembled across C-bit PDUs (the session's
/// reassembly limit; RFC 7143 asks for at least 8192).
pub const TEXT_BYTES_MAX: usize = 64 * 1024;
/// Default pair count limit: iPXE sends 18 pairs in its biggest request, Linux about 20.
pub const PAIRS_MAX: usize = 64;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TextError {
    /// The text (after reassembly) is longer than the limit.
    TooLong {
        len: usize,
        max: usize,
    },
    /// More pairs than the limit.
    TooManyPairs {
        max: usize,
    },
    /// The last pair has no terminating NUL.
    Unterminated {
        offset: usize,
    },
    /// A pair without '='.
    NoEquals {
        offset: usize,
    },
    /// Key or value bytes that are not UTF-8.
    NotUtf8 {
        offset: usize,
    },
    /// An empty key, or one with characters outside the RFC's key alphabet.
    BadKey {
        key: String,
    },
    KeyTooLong {
        key: String,
        len: usize,
    },
    ValueTooLong {
        key: String,
        len: usize,
        max: usize,
    },
}

impl fmt::Display for TextError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TextError::TooLong { len, max } => write!(f, "text of {len} bytes exceeds the limit of {max}"),
            TextError::TooManyPairs { max } => write!(f, "more than {max} key=value pairs"),
            TextError::Unterminated { offset } => write!(f, "pair at offset {offset} has no terminating NUL"),
            TextError::NoEquals { offset } => write!(f, "pair at offset {offset} has no '='"),
            TextError::NotUtf8 { offset } => write!(f, "pair at offset {offset} is not UTF-8"),
            TextError::BadKey { key } => write!(f, "key {key:?} is not a valid key name"),
            TextError::KeyTooLong { key, len } => write!(f, "key {key:?}... is {len} bytes, over the limit of {KEY_LEN_MAX}"),
            TextError::ValueTooLong { key, len, max } => write!(f, "value of {key} is {len} bytes, over the limit of {max}"),
        }
    }
}

impl std::error::Error for TextError {}

/// Keys whose value is a large binary value (RFC 7143 §12.1.3 CHAP_C/CHAP_R; §6.1's 8192).
fn is_large_value_key(key: &str) -> bool {
    matches!(key, "CHAP_C" | "CHAP_R")
}

/// RFC 7143 §6.1: key names are letters, digits, '.', '-', '+', '@', '_' (and X-/X# keys use them
/// too: '#' appears in "X#NodeArchitecture").
fn key_char_ok(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'+' | b'@' | b'_' | b'#')
}

/// A key=value list, every pair NUL-terminated. Empty strings between NULs (zero padding some
/// initiators leave inside the data segment) are skipped. Pairs are returned in order; a key sent
/// twice appears twice (what to do with it is the negotiation's business).
pub fn parse(data: &[u8], pairs_max: usize) -> Result<Vec<(&str, &str)>, TextError> {
    if data.len() > TEXT_BYTES_MAX {
        return Err(TextError::TooLong { len: data.len(), max: TEXT_BYTES_MAX });
    }
    let mut pairs = Vec::new();
    let mut offset = 0;
    while offset < data.len() {
        let rest = &data[offset..];
        let Some(end) = rest.iter().position(|&b| b == 0) else {
            return Err(TextError::Unterminated { offset });
        };
        let pair = &rest[..end];
        if !pair.is_empty() {
            if pairs.len() == pairs_max {
                return Err(TextError::TooManyPairs { max: pairs_max });
            }
            pairs.push(parse_pair(pair, offset)?);
        }
        offset += end + 1;
    }
    Ok(pairs)
}

fn parse_pair(pair: &[u8], offset: usize) -> Result<(&str, &str), TextError> {
    let Some(eq) = pair.iter().position(|&b| b == b'=') else {
        return Err(TextError::NoEquals { offset });
    };
    let (key, value) = (&pair[..eq], &pair[eq + 1..]);
    let shown = || String::from_utf8_lossy(&key[..key.len().min(KEY_LEN_MAX)]).into_owned();
    if key.len() > KEY_LEN_MAX {
        return Err(TextError::KeyTooLong { key: shown(), len: key.len() });
    }
    if key.is_empty() || !key.iter().all(|&c| key_char_ok(c)) {
        return Err(TextError::BadKey { key: shown() });
    }
    let key = std::str::from_utf8(key).expect("checked ASCII");
    let max = if is_large_value_key(key) { LARGE_VALUE_LEN_MAX } else { VALUE_LEN_MAX };
    if value.len() > max {
        return Err(TextError::ValueTooLong { key: key.to_string(), len: value.len(), max });
    }
    let value = std::str::from_utf8(value).map_err(|_| TextError::NotUtf8 { offset })?;
    Ok((key, value))
}

/// Appends `key=value\0`.
pub fn push(out: &mut Vec<u8>, key: &str, value: &str) {
    debug_assert!(!key.is_empty() && key.len() <= KEY_LEN_MAX && key.bytes().all(key_char_ok), "key {key:?}");
    out.extend_from_slice(key.as_bytes());
    out.push(b'=');
    out.extend_from_slice(value.as_bytes());
    out.push(0);
}

/// A numerical value (RFC 7143 §6.1 decimal-constant or hex-constant "0x..."), at most `max`.
/// Leading '+', '-', blanks or an empty string are not numbers.
pub fn number(value: &str, max: u64) -> Option<u64> {
    let n = if let Some(hex) = value.strip_prefix("0x").or_else(|| value.strip_prefix("0X")) {
        if hex.is_empty() || !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        u64::from_str_radix(hex, 16).ok()?
    } else {
        if value.is_empty() || !value.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        value.parse::<u64>().ok()?
    };
    (n <= max).then_some(n)
}

/// A boolean value: "Yes" or "No" (RFC 7143 §6.1, case-sensitive).
pub fn boolean(value: &str) -> Option<bool> {
    match value {
        "Yes" => Some(true),
        "No" => Some(false),
        _ => None,
    }
}

pub fn yes_no(b: bool) -> &'static str {
    if b {
        "Yes"
    } else {
        "No"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pairs_in_order_with_duplicates() {
        let t = b"InitiatorName=iqn.2010-04.org.ipxe:host\0TargetName=iqn.2026-12.org.bootfarm:win10\0AuthMethod=CHAP,None\0AuthMethod=CHAP,None\0";
        let pairs = parse(t, PAIRS_MAX).unwrap();
        assert_eq!(
            pairs,
            vec![
                ("InitiatorName", "iqn.2010-04.org.ipxe:host"),
                ("TargetName", "iqn.2026-12.org.bootfarm:win10"),
                ("AuthMethod", "CHAP,None"),
                ("AuthMethod", "CHAP,None"),
            ]
        );
    }

    #[test]
    fn empty_text_and_zero_padding() {
        assert_eq!(parse(b"", 4).unwrap(), vec![]);
        assert_eq!(parse(b"\0\0\0", 4).unwrap(), vec![]);
        assert_eq!(parse(b"A=1\0\0\0B=\0", 4).unwrap(), vec![("A", "1"), ("B", "")]);
        // A value may hold '=' itself: only the first one splits.
        assert_eq!(parse(b"X-a=b=c\0", 4).unwrap(), vec![("X-a", "b=c")]);
    }

    #[test]
    fn malformed_text_is_refused_with_the_place() {
        assert_eq!(parse(b"A=1\0B=2", 8), Err(TextError::Unterminated { offset: 4 }));
        assert_eq!(parse(b"A=1\0Bogus\0", 8), Err(TextError::NoEquals { offset: 4 }));
        assert_eq!(parse(b"=1\0", 8), Err(TextError::BadKey { key: String::new() }));
        assert_eq!(parse(b"Key With Space=1\0", 8), Err(TextError::BadKey { key: "Key With Space".into() }));
        assert_eq!(parse(b"A=\xff\xfe\0", 8), Err(TextError::NotUtf8 { offset: 0 }));
        assert!(parse(b"K\xc3\xa9=1\0", 8).is_err(), "keys are ASCII");
    }

    #[test]
    fn limits_at_their_edge() {
        let key = "K".repeat(KEY_LEN_MAX);
        let t = format!("{key}=1\0");
        assert_eq!(parse(t.as_bytes(), 4).unwrap(), vec![(key.as_str(), "1")]);
        let t = format!("{key}K=1\0");
        assert!(matches!(parse(t.as_bytes(), 4), Err(TextError::KeyTooLong { len: 64, .. })));

        let v = "v".repeat(VALUE_LEN_MAX);
        let t = format!("TargetAlias={v}\0");
        assert_eq!(parse(t.as_bytes(), 4).unwrap().len(), 1);
        let t = format!("TargetAlias={v}v\0");
        assert_eq!(parse(t.as_bytes(), 4), Err(TextError::ValueTooLong { key: "TargetAlias".into(), len: 256, max: 255 }));

        let big = format!("0x{}", "a".repeat(LARGE_VALUE_LEN_MAX - 2));
        assert_eq!(parse(format!("CHAP_C={big}\0").as_bytes(), 4).unwrap().len(), 1);
        assert!(matches!(parse(format!("CHAP_R={big}0\0").as_bytes(), 4), Err(TextError::ValueTooLong { max: 8192, .. })));

        let t = "A=1\0".repeat(5);
        assert_eq!(parse(t.as_bytes(), 5).unwrap().len(), 5);
        assert_eq!(parse(t.as_bytes(), 4), Err(TextError::TooManyPairs { max: 4 }));

        let t = vec![0u8; TEXT_BYTES_MAX];
        assert_eq!(parse(&t, 4).unwrap(), vec![]);
        let t = vec![0u8; TEXT_BYTES_MAX + 1];
        assert_eq!(parse(&t, 4), Err(TextError::TooLong { len: TEXT_BYTES_MAX + 1, max: TEXT_BYTES_MAX }));
    }

    #[test]
    fn errors_name_the_key() {
        let e = parse(format!("MaxBurstLength={}\0", "9".repeat(300)).as_bytes(), 4).unwrap_err();
        assert!(e.to_string().contains("MaxBurstLength"), "{e}");
    }

    #[test]
    fn emit_then_parse() {
        let mut out = Vec::new();
        push(&mut out, "TargetAlias", "win10");
        push(&mut out, "AuthMethod", "None");
        assert_eq!(out, b"TargetAlias=win10\0AuthMethod=None\0");
        assert_eq!(parse(&out, 4).unwrap(), vec![("TargetAlias", "win10"), ("AuthMethod", "None")]);
    }

    #[test]
    fn numbers_and_booleans() {
        assert_eq!(number("262144", u64::MAX), Some(262144));
        assert_eq!(number("0x40000", u64::MAX), Some(262144));
        assert_eq!(number("16777215", 16777215), Some(16777215));
        assert_eq!(number("16777216", 16777215), None);
        for bad in ["", "+1", "-1", " 1", "1 ", "0x", "0xg", "1e3", "99999999999999999999999"] {
            assert_eq!(number(bad, u64::MAX), None, "{bad:?}");
        }
        assert_eq!(boolean("Yes"), Some(true));
        assert_eq!(boolean("No"), Some(false));
        assert_eq!(boolean("yes"), None);
    }
}
