//! CHAP for iSCSI logins (RFC 1994 with RFC 7143 §12.1.3): the target's challenge, the check of
//! the initiator's response in constant time, and the answer to the initiator's own challenge
//! (mutual CHAP). MD5 only (CHAP_A=5). The challenge bytes come from the caller (sans-IO: the
//! session draws them, and they must be unpredictable: the OS's random source, not the seeded
//! `crate::rng::XorShift`); this module keeps no clock and no randomness.

use super::md5::Md5;
use std::fmt;

/// The only algorithm offered: CHAP with MD5.
pub const ALGORITHM_MD5: u64 = 5;
/// Length of the challenge the target sends (16 bytes, the MD5 block of RFC 1994 practice).
pub const CHALLENGE_LEN: usize = 16;
/// RFC 7143 §12.1.3: challenges longer than 1024 bytes are refused.
pub const CHALLENGE_LEN_MAX: usize = 1024;
/// RFC 7143 §9.2.1: a CHAP secret must hold at least 96 bits (12 bytes); 255 is what the
/// initiators here accept (iPXE, open-iscsi: 256-byte buffers).
pub const SECRET_LEN_MIN: usize = 12;
pub const SECRET_LEN_MAX: usize = 255;
/// A CHAP name is an ordinary text value.
pub const NAME_LEN_MAX: usize = 255;

/// The configured credentials: the initiator must prove it knows `secret` for `user`; with
/// `mutual`, the target can prove itself to an initiator that asks (bidirectional CHAP).
#[derive(Clone, PartialEq, Eq)]
pub struct Chap {
    pub user: String,
    pub secret: Vec<u8>,
    pub mutual: Option<Credentials>,
}

#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub secret: Vec<u8>,
}

impl fmt::Debug for Chap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print a secret (logs, config dumps).
        f.debug_struct("Chap").field("user", &self.user).field("mutual_user", &self.mutual.as_ref().map(|m| &m.user)).finish()
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials").field("user", &self.user).finish()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChapError {
    /// A name or secret outside the limits (config).
    Config(String),
    /// The initiator's CHAP_N is not the configured user.
    WrongName,
    /// CHAP_R is malformed or not the expected response.
    WrongResponse,
    /// A CHAP_I / CHAP_C from the initiator that cannot be used.
    BadChallenge(&'static str),
    /// The initiator asked the target to authenticate itself and no mutual secret is configured.
    MutualNotConfigured,
}

impl fmt::Display for ChapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChapError::Config(s) => f.write_str(s),
            ChapError::WrongName => f.write_str("CHAP_N is not the configured CHAP user"),
            ChapError::WrongResponse => f.write_str("CHAP_R does not match the challenge and secret"),
            ChapError::BadChallenge(s) => write!(f, "initiator challenge refused: {s}"),
            ChapError::MutualNotConfigured => f.write_str("initiator asked for mutual CHAP; no mutual secret is configured"),
        }
    }
}

impl std::error::Error for ChapError {}

fn check_credentials(what: &str, user: &str, secret: &[u8]) -> Result<(), ChapError> {
    if user.is_empty() || user.len() > NAME_LEN_MAX || user.contains('\0') {
        return Err(ChapError::Config(format!("{what} user must be 1..={NAME_LEN_MAX} bytes without NUL")));
    }
    if !(SECRET_LEN_MIN..=SECRET_LEN_MAX).contains(&secret.len()) {
        return Err(ChapError::Config(format!(
            "{what} secret is {} bytes; RFC 7143 asks for at least {SECRET_LEN_MIN} (and at most {SECRET_LEN_MAX} here)",
            secret.len()
        )));
    }
    Ok(())
}

impl Chap {
    /// Validated credentials. RFC 7143 §9.2.1: the secret one direction uses must not be the
    /// other direction's.
    pub fn new(user: &str, secret: &[u8], mutual: Option<(&str, &[u8])>) -> Result<Chap, ChapError> {
        check_credentials("CHAP", user, secret)?;
        let mutual = match mutual {
            None => None,
            Some((u, s)) => {
                check_credentials("mutual CHAP", u, s)?;
                if s == secret {
                    return Err(ChapError::Config("the mutual CHAP secret must differ from the initiator's CHAP secret".into()));
                }
                Some(Credentials { user: u.to_string(), secret: s.to_vec() })
            }
        };
        Ok(Chap { user: user.to_string(), secret: secret.to_vec(), mutual })
    }
}

/// RFC 1994: MD5(identifier || secret || challenge).
pub fn response(identifier: u8, secret: &[u8], challenge: &[u8]) -> [u8; 16] {
    let mut h = Md5::new();
    h.update(&[identifier]);
    h.update(secret);
    h.update(challenge);
    h.finish()
}

/// Equal in time independent of where the first difference is (the length is not secret).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // black_box keeps the optimiser from turning the fold back into an early-exit compare.
    std::hint::black_box(diff) == 0
}

/// A large binary value (RFC 7143 §6.1): "0x" + hex digits or "0b" + base64; at most `max` bytes.
pub fn decode_binary(value: &str, max: usize) -> Option<Vec<u8>> {
    let (prefix, body) = (value.get(..2)?, value.get(2..)?);
    let bytes = match prefix {
        "0x" | "0X" => decode_hex(body)?,
        "0b" | "0B" => decode_base64(body)?,
        _ => return None,
    };
    (!bytes.is_empty() && bytes.len() <= max).then_some(bytes)
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    let s = s.as_bytes();
    // An odd digit count: RFC 7143 reads it as if a leading 0 were there.
    let mut out = Vec::with_capacity(s.len() / 2 + 1);
    let nibble = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut i = 0;
    if s.len() % 2 == 1 {
        out.push(nibble(s[0])?);
        i = 1;
    }
    while i < s.len() {
        out.push(nibble(s[i])? << 4 | nibble(s[i + 1])?);
        i += 2;
    }
    Some(out)
}

fn decode_base64(s: &str) -> Option<Vec<u8>> {
    let s = s.as_bytes();
    if s.is_empty() || s.len() % 4 != 0 {
        return None;
    }
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    for (n, quad) in s.chunks_exact(4).enumerate() {
        let last = n == s.len() / 4 - 1;
        let pad = quad.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut acc = 0u32;
        for &c in &quad[..4 - pad] {
            acc = acc << 6 | val(c)?;
        }
        acc <<= 6 * pad as u32;
        let bytes = acc.to_be_bytes();
        out.extend_from_slice(&bytes[1..4 - pad]);
    }
    Some(out)
}

/// "0x" + lowercase hex, the form every initiator reads.
pub fn encode_hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(2 + bytes.len() * 2);
    s.push_str("0x");
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// The target's half of one CHAP exchange: the challenge it sent, then the checks.
#[derive(Clone, Debug)]
pub struct Exchange {
    pub identifier: u8,
    pub challenge: [u8; CHALLENGE_LEN],
}

impl Exchange {
    /// The identifier is taken from the random bytes too (RFC 1994: it changes with every
    /// challenge; it need not be secret).
    pub fn new(random: &[u8; CHALLENGE_LEN]) -> Exchange {
        Exchange { identifier: random[0] ^ random[CHALLENGE_LEN - 1], challenge: *random }
    }

    /// CHAP_I and CHAP_C as sent.
    pub fn chap_i(&self) -> String {
        self.identifier.to_string()
    }

    pub fn chap_c(&self) -> String {
        encode_hex(&self.challenge)
    }

    /// The initiator's CHAP_N and CHAP_R against the configured credentials.
    pub fn verify(&self, chap: &Chap, name: &str, chap_r: &str) -> Result<(), ChapError> {
        let got = decode_binary(chap_r, 16).ok_or(ChapError::WrongResponse)?;
        let want = response(self.identifier, &chap.secret, &self.challenge);
        // Both compared before deciding, so a wrong name costs the same time as a wrong response.
        let name_ok = constant_time_eq(name.as_bytes(), chap.user.as_bytes());
        let response_ok = constant_time_eq(&got, &want);
        match (name_ok, response_ok) {
            (true, true) => Ok(()),
            (false, _) => Err(ChapError::WrongName),
            (true, false) => Err(ChapError::WrongResponse),
        }
    }

    /// Mutual CHAP: the initiator's CHAP_I and CHAP_C answered with (CHAP_N, CHAP_R).
    pub fn answer_mutual(&self, chap: &Chap, chap_i: &str, chap_c: &str) -> Result<(String, String), ChapError> {
        let Some(mutual) = &chap.mutual else {
            return Err(ChapError::MutualNotConfigured);
        };
        let id = super::text::number(chap_i, 255).ok_or(ChapError::BadChallenge("CHAP_I is not a number in 0..=255"))? as u8;
        let c = decode_binary(chap_c, CHALLENGE_LEN_MAX).ok_or(ChapError::BadChallenge("CHAP_C is not a 1..=1024-byte binary value"))?;
        // RFC 7143 §12.1.3: a target MUST refuse an initiator challenge equal to its own (else
        // the initiator could have the target compute the response it owes; a reflection attack).
        if c == self.challenge {
            return Err(ChapError::BadChallenge("CHAP_C equals the target's own challenge"));
        }
        Ok((mutual.user.clone(), encode_hex(&response(id, &mutual.secret, &c))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds() -> Chap {
        Chap::new("iqn.2010-04.org.ipxe:pc1", b"a-secret-of-16by", Some(("bootfarm", b"target-secret-xy"))).unwrap()
    }

    #[test]
    fn response_is_md5_of_id_secret_challenge() {
        // Computed independently: `printf '\x01secretsecret\x00\x11...' | md5sum` style, via the
        // definition with one buffer.
        let ch: Vec<u8> = (0..16).collect();
        let mut whole = vec![7u8];
        whole.extend_from_slice(b"secretsecret");
        whole.extend_from_slice(&ch);
        assert_eq!(response(7, b"secretsecret", &ch), crate::iscsi::md5::md5(&whole));
    }

    /// A CHAP response as iPXE's chap.c builds it (MD5 over id, password, challenge), checked by
    /// the target; with the wrong secret or name it is refused.
    #[test]
    fn verify_right_and_wrong() {
        let chap = creds();
        let random = [0x5au8; 16];
        let ex = Exchange::new(&random);
        let good = encode_hex(&response(ex.identifier, b"a-secret-of-16by", &random));
        assert_eq!(ex.verify(&chap, "iqn.2010-04.org.ipxe:pc1", &good), Ok(()));
        let bad = encode_hex(&response(ex.identifier, b"a-secret-of-16bz", &random));
        assert_eq!(ex.verify(&chap, "iqn.2010-04.org.ipxe:pc1", &bad), Err(ChapError::WrongResponse));
        assert_eq!(ex.verify(&chap, "someone-else", &good), Err(ChapError::WrongName));
        assert_eq!(ex.verify(&chap, "iqn.2010-04.org.ipxe:pc1", "0x1234"), Err(ChapError::WrongResponse));
        assert_eq!(ex.verify(&chap, "iqn.2010-04.org.ipxe:pc1", &good[2..]), Err(ChapError::WrongResponse), "no 0x prefix");
        // The same response in base64 is accepted (RFC 7143 allows either encoding).
        let raw = response(ex.identifier, b"a-secret-of-16by", &random);
        let b64 = format!("0b{}", base64(&raw));
        assert_eq!(ex.verify(&chap, "iqn.2010-04.org.ipxe:pc1", &b64), Ok(()));
    }

    fn base64(b: &[u8]) -> String {
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut s = String::new();
        for c in b.chunks(3) {
            let n = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
            for i in 0..4 {
                if i <= c.len() {
                    s.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    s.push('=');
                }
            }
        }
        s
    }

    #[test]
    fn binary_values() {
        assert_eq!(decode_binary("0x00ff10", 16), Some(vec![0, 255, 16]));
        assert_eq!(decode_binary("0XABC", 16), Some(vec![0x0a, 0xbc]));
        assert_eq!(decode_binary("0bAAEC", 16), Some(vec![0, 1, 2]));
        assert_eq!(decode_binary("0bAAE=", 16), Some(vec![0, 1]));
        assert_eq!(decode_binary("0bAA==", 16), Some(vec![0]));
        for bad in ["", "0x", "0b", "1234", "0xzz", "0bA", "0bA===", "0bAA==AAAA", "0b!!!!"] {
            assert_eq!(decode_binary(bad, 16), None, "{bad:?}");
        }
        assert_eq!(decode_binary(&encode_hex(&[1u8; 17]), 16), None, "over the length limit");
        for n in 1..40 {
            let v: Vec<u8> = (0..n as u8).map(|i| i.wrapping_mul(37)).collect();
            assert_eq!(decode_binary(&format!("0b{}", base64(&v)), 64), Some(v.clone()));
            assert_eq!(decode_binary(&encode_hex(&v), 64), Some(v));
        }
    }

    #[test]
    fn mutual_answer_and_reflection() {
        let chap = creds();
        let ex = Exchange::new(&[9u8; 16]);
        let their_c = [3u8; 16];
        let (n, r) = ex.answer_mutual(&chap, "200", &encode_hex(&their_c)).unwrap();
        assert_eq!(n, "bootfarm");
        assert_eq!(r, encode_hex(&response(200, b"target-secret-xy", &their_c)));
        // The target's own challenge sent back is refused.
        assert!(matches!(ex.answer_mutual(&chap, "1", &ex.chap_c()), Err(ChapError::BadChallenge(_))));
        assert!(matches!(ex.answer_mutual(&chap, "256", &encode_hex(&their_c)), Err(ChapError::BadChallenge(_))));
        assert!(matches!(ex.answer_mutual(&chap, "1", "0x"), Err(ChapError::BadChallenge(_))));
        assert!(matches!(ex.answer_mutual(&chap, "1", &encode_hex(&[1u8; 1025])), Err(ChapError::BadChallenge(_))));
        let one_way = Chap::new("u", b"twelve-bytes", None).unwrap();
        assert_eq!(ex.answer_mutual(&one_way, "1", &encode_hex(&their_c)), Err(ChapError::MutualNotConfigured));
    }

    #[test]
    fn config_limits() {
        assert!(Chap::new("u", &[b'x'; SECRET_LEN_MIN], None).is_ok());
        assert!(Chap::new("u", &[b'x'; SECRET_LEN_MIN - 1], None).is_err());
        assert!(Chap::new("u", &[b'x'; SECRET_LEN_MAX], None).is_ok());
        assert!(Chap::new("u", &[b'x'; SECRET_LEN_MAX + 1], None).is_err());
        assert!(Chap::new("", b"twelve-bytes", None).is_err());
        let e = Chap::new("u", b"twelve-bytes", Some(("t", b"twelve-bytes"))).unwrap_err();
        assert!(e.to_string().contains("differ"), "{e}");
        assert!(!format!("{:?}", creds()).contains("secret-of"), "Debug hides secrets");
    }

    #[test]
    fn constant_time_eq_is_eq() {
        assert!(constant_time_eq(b"", b""));
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
