//! iSCSI names (RFC 7143 §4.2.7, RFC 3722): "iqn." + yyyy-mm + "." + reversed domain [":" ...],
//! "eui." + 16 hex digits, "naa." + 16 or 32 hex digits; at most 223 bytes. Names compare
//! case-insensitively (stringprep folds case), so `normalize` lowercases.

/// RFC 7143 §4.2.7.1: an iSCSI name is at most 223 bytes.
pub const NAME_LEN_MAX: usize = 223;

/// Whether `name` is a well-formed iSCSI name. ASCII only: the nameprep of non-ASCII names is
/// out of scope, and no initiator here sends one.
pub fn valid(name: &str) -> bool {
    if name.len() > NAME_LEN_MAX || name.len() < 5 || !name.is_ascii() {
        return false;
    }
    let (kind, body) = name.split_at(4);
    match kind.to_ascii_lowercase().as_str() {
        "iqn." => valid_iqn(body),
        "eui." => body.len() == 16 && body.bytes().all(|c| c.is_ascii_hexdigit()),
        "naa." => (body.len() == 16 || body.len() == 32) && body.bytes().all(|c| c.is_ascii_hexdigit()),
        _ => false,
    }
}

/// "yyyy-mm.naming-authority[:unique]"; the authority is a reversed DNS name (letters, digits,
/// '-', '.'), the unique part letters, digits, '-', '.', ':'.
fn valid_iqn(body: &str) -> bool {
    let b = body.as_bytes();
    if b.len() < 9 || !b[..4].iter().all(u8::is_ascii_digit) || b[4] != b'-' || !b[5..7].iter().all(u8::is_ascii_digit) || b[7] != b'.' {
        return false;
    }
    let month = (b[5] - b'0') * 10 + (b[6] - b'0');
    if !(1..=12).contains(&month) {
        return false;
    }
    let rest = &body[8..];
    let (authority, unique) = match rest.split_once(':') {
        Some((a, u)) => (a, Some(u)),
        None => (rest, None),
    };
    let name_char = |c: u8| c.is_ascii_alphanumeric() || c == b'-' || c == b'.';
    if authority.is_empty() || authority.starts_with('.') || authority.ends_with('.') || !authority.bytes().all(name_char) {
        return false;
    }
    unique.is_none_or(|u| !u.is_empty() && u.bytes().all(|c| name_char(c) || c == b':'))
}

/// The case-folded form names are compared and stored in.
pub fn normalize(name: &str) -> String {
    name.to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_real_initiators_use() {
        for good in [
            "iqn.2010-04.org.ipxe:00000000-0000-0000-0000-525400123456", // iPXE's default (UUID)
            "iqn.2010-04.org.ipxe:pc-01",
            "iqn.1993-08.org.debian:01:8f3d6f4c5b2a",              // open-iscsi's generated name
            "iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-test", // libiscsi's tools
            "iqn.1991-05.com.microsoft:desktop-7h2k1.corp.example.com", // Windows
            "iqn.2026-12.org.bootfarm:win10",
            "IQN.2026-12.ORG.BOOTFARM:WIN10",
            "eui.02004567A425678D",
            "naa.52004567BA64678D",
            "naa.52004567BA64678D52004567BA64678D",
            "iqn.2001-04.com.example",
        ] {
            assert!(valid(good), "{good}");
        }
        for bad in [
            "",
            "iqn.",
            "iqn.2001-13.com.example",
            "iqn.2001-00.com.example",
            "iqn.01-04.com.example",
            "iqn.2001-04.",
            "iqn.2001-04.com.example:",
            "iqn.2001-04.com example",
            "iqn.2001-04.com.example:disk/1",
            "iqn.2001-04.com.exa_mple",
            "eui.02004567A425678",
            "eui.02004567A425678DX",
            "naa.52004567BA64678D5",
            "fc.1234",
            "target0",
            "819\u{2fd}",
            "iqn\u{e9}2001-04.com.example",
            "iqn.2001-04.com.ex\u{e9}mple",
        ] {
            assert!(!valid(bad), "{bad}");
        }
        let long = format!("iqn.2001-04.com.example:{}", "a".repeat(NAME_LEN_MAX - 24));
        assert_eq!(long.len(), NAME_LEN_MAX);
        assert!(valid(&long));
        assert!(!valid(&format!("{long}a")));
    }
}
