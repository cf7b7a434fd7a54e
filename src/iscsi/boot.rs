//! A boot token in an iSCSI initiator name. The `/ipxe` script gives iPXE an `initiator-iqn`
//! that carries the boot token NBD uses (`nbd::token`), so that the session finds the target
//! machine (its MAC) and its boot, and iPXE's iBFT hands the same name to the OS's initiator.
//! IQNs are case-insensitive (initiators and stringprep lowercase them), so base64url does not
//! survive: the token's bytes travel as lowercase hex. Form:
//! `<iscsi.iqn_prefix>:initiator.<mac, 12 hex>.<token, 68 hex>` (~115 bytes of the 223 allowed).

use crate::nbd::token;

const MARK: &str = ":initiator.";

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 || !s.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok()).collect()
}

/// The initiator name for a boot token issued for `mac`; None when `tok` is not a token's
/// spelling.
pub fn initiator_iqn(prefix: &str, mac: [u8; 6], tok: &str) -> Option<String> {
    let raw = token::unb64(tok)?;
    Some(format!("{prefix}{MARK}{}.{}", hex(&mac), hex(&raw)))
}

/// The boot token (base64url, as `nbd::token::check` takes it) an initiator name carries, if it
/// has the form above; `name` lowercased. The MAC part must be the one inside the token.
pub fn token_of(prefix: &str, name: &str) -> Option<String> {
    let rest = name.strip_prefix(prefix)?.strip_prefix(MARK)?;
    let (mac, raw) = rest.split_once('.')?;
    let mac = unhex(mac).filter(|m| m.len() == 6)?;
    let raw = unhex(raw)?;
    // The token's layout: nonce (16) | expiry (4) | MAC (6) | tag (8).
    if raw.len() != 34 || raw[20..26] != mac[..] {
        return None;
    }
    Some(token::b64(&raw))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::valid_iqn;

    const P: &str = "iqn.2026-12.org.bootfarm";

    #[test]
    fn a_token_survives_the_trip_through_a_lowercase_iqn() {
        let key = *b"0123456789abcdef";
        let mac = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
        let ip = "10.0.0.9".parse().unwrap();
        let tok = token::issue(&key, [7; 16], 2_000_000_000, mac, ip, "win10");
        assert!(tok.bytes().any(|b| b.is_ascii_uppercase()), "base64url has capitals: {tok}");
        let iqn = initiator_iqn(P, mac, &tok).unwrap();
        assert!(valid_iqn(&iqn), "{iqn}");
        assert!(iqn.starts_with("iqn.2026-12.org.bootfarm:initiator.525400123456."), "{iqn}");
        assert!(iqn.len() < 223);
        // Initiators may send it in any case: the session lowercases first.
        let back = token_of(P, &iqn.to_ascii_uppercase().to_ascii_lowercase()).unwrap();
        assert_eq!(back, tok);
        assert_eq!(token::check(&key, &back, ip, "win10", 1_900_000_000), Ok((mac, false)));
    }

    #[test]
    fn other_names_carry_no_token() {
        let tok = token::issue(b"0123456789abcdef", [1; 16], 5, [1, 2, 3, 4, 5, 6], "10.0.0.1".parse().unwrap(), "v");
        let good = initiator_iqn(P, [1, 2, 3, 4, 5, 6], &tok).unwrap();
        assert!(token_of(P, &good).is_some());
        for bad in [
            "iqn.1991-05.com.microsoft:pc1".to_string(),
            good.replace(P, "iqn.2026-12.org.other"),
            good.replace(".010203040506.", ".010203040507."), // a MAC that is not the token's
            good[..good.len() - 2].to_string(),
            format!("{good}0g"),
        ] {
            assert_eq!(token_of(P, &bad), None, "{bad}");
        }
        assert_eq!(initiator_iqn(P, [0; 6], "not a token!"), None);
    }
}
