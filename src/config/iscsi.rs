//! The `[iscsi]` section: the iSCSI target's naming (one IQN per vdisk under `iqn_prefix`),
//! CHAP, what login offers (RFC 7143 operational keys) and the limits of a connection. The
//! write caches are NBD's (same registry, same `[nbd]` cache limits and keep rules).

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Iscsi {
    /// Target IQN of vdisk `v`: `<iqn_prefix>:<v>`.
    pub iqn_prefix: String,
    /// CHAP (RFC 1994, MD5) user name the initiators log in with; unset = AuthMethod None.
    pub chap_user: Option<String>,
    /// The CHAP secret, 12 to 255 bytes (a trailing newline is dropped).
    pub chap_secret_file: Option<PathBuf>,
    pub connections_max: usize,
    pub connections_per_ip_max: usize,
    /// At a connection limit, a connection idle at least this long is cut for the newcomer
    /// (as nbd.idle_evict_ms).
    pub idle_evict_ms: u64,
    /// The login phase (first PDU to full feature phase) must end within this time.
    pub login_timeout_ms: u64,
    /// Key=value text of one login or text exchange, reassembled across PDUs (C bit).
    pub text_bytes_max: usize,
    /// MaxRecvDataSegmentLength we declare: the largest data segment an initiator may send.
    pub max_recv_data_segment_length: u32,
    /// MaxBurstLength offered (solicited data per R2T, Data-In per sequence).
    pub max_burst_length: u32,
    /// FirstBurstLength offered (unsolicited data: immediate + Data-Out before the first R2T).
    pub first_burst_length: u32,
    /// ImmediateData offered (the result is the AND of both sides).
    pub immediate_data: bool,
    /// InitialR2T offered (the result is the OR: true forbids unsolicited Data-Out).
    pub initial_r2t: bool,
    /// CmdSN window: commands an initiator may have in flight (MaxCmdSN - ExpCmdSN + 1).
    pub commands_in_flight_max: u32,
    /// Persistent-reservation registrants kept per vdisk (past it: INSUFFICIENT REGISTRATION
    /// RESOURCES); bounds the table and a READ KEYS answer.
    pub registrants_max: u32,
    /// MaxOutstandingR2T offered: R2Ts in flight per command.
    pub max_outstanding_r2t: u32,
    /// A connection idle this long gets a NOP-In ping (0 = never ping).
    pub nop_in_interval_ms: u64,
    /// A ping not answered within this time closes the connection.
    pub nop_in_timeout_ms: u64,
    /// A send must make progress within this time (an initiator that stops reading).
    pub send_timeout_ms: u64,
    /// Batches of at least this many bytes use SEND_ZC (0 = never), as nbd.send_zc_min_bytes.
    pub send_zc_min_bytes: u64,
    /// TargetPortalGroupTag of this node's portal.
    pub portal_group_tag: u16,
}

impl Default for Iscsi {
    fn default() -> Self {
        Iscsi {
            iqn_prefix: IQN_PREFIX_DEFAULT.into(),
            chap_user: None,
            chap_secret_file: None,
            connections_max: 2048,
            connections_per_ip_max: 64,
            idle_evict_ms: 60_000,
            login_timeout_ms: 15_000,
            text_bytes_max: 64 * 1024,
            max_recv_data_segment_length: 256 * 1024,
            max_burst_length: 1 << 20,
            first_burst_length: 64 * 1024,
            immediate_data: true,
            initial_r2t: false,
            commands_in_flight_max: 128,
            registrants_max: 64,
            max_outstanding_r2t: 8,
            nop_in_interval_ms: 30_000,
            nop_in_timeout_ms: 30_000,
            send_timeout_ms: 30_000,
            send_zc_min_bytes: 0,
            portal_group_tag: 1,
        }
    }
}

pub const IQN_PREFIX_DEFAULT: &str = "iqn.2026-12.org.bootfarm";
/// RFC 7143 6.1: an iSCSI name is at most 223 bytes.
pub const IQN_BYTES_MAX: usize = 223;
/// RFC 7143 13.12: data segment lengths 512 .. 2^24 - 1.
pub const SEGMENT_MIN: u32 = 512;
pub const SEGMENT_MAX: u32 = (1 << 24) - 1;
/// CHAP secrets: RFC 7143 12.1.3 wants at least 96 bits; Windows refuses more than 16 bytes
/// only for its own secret, so longer ones are allowed.
pub const CHAP_SECRET_MIN: usize = 12;
pub const CHAP_SECRET_MAX: usize = 255;

/// Characters of an iSCSI name after stringprep (RFC 3722): lowercase letters, digits, '-',
/// '.', ':'. bootfarm accepts only these ASCII ones.
fn iqn_char(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.:".contains(&b)
}

/// `iqn.YYYY-MM.reversed.domain[:anything]`, lowercase.
pub fn valid_iqn(s: &str) -> bool {
    let b = s.as_bytes();
    s.len() <= IQN_BYTES_MAX
        && s.len() > 12
        && s.starts_with("iqn.")
        && b[4..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'-'
        && b[9..11].iter().all(u8::is_ascii_digit)
        && b[11] == b'.'
        && b.len() > 12
        && b[12].is_ascii_alphanumeric()
        && b.iter().all(|&c| iqn_char(c))
}

/// Whether vdisk name `v` can end an IQN (lowercase letters, digits, '.', '-').
pub fn valid_suffix(v: &str) -> bool {
    !v.is_empty() && v.bytes().all(|b| iqn_char(b) && b != b':')
}

impl Iscsi {
    /// The target IQN of vdisk `name`.
    pub fn target_iqn(&self, name: &str) -> String {
        format!("{}:{name}", self.iqn_prefix)
    }

    /// The vdisk a target IQN names (IQNs compare case-insensitively), if it is under our prefix.
    pub fn vdisk_of<'a>(&self, iqn: &'a str) -> Option<&'a str> {
        let p = self.iqn_prefix.len();
        if iqn.len() > p + 1 && iqn.is_char_boundary(p) && iqn[..p].eq_ignore_ascii_case(&self.iqn_prefix) && iqn.as_bytes()[p] == b':' {
            Some(&iqn[p + 1..])
        } else {
            None
        }
    }

    /// Checks the keys; an error is (key, value, why).
    pub fn validate(&self) -> Result<(), (&'static str, String, String)> {
        let e = |k: &'static str, v: &dyn std::fmt::Display, why: &str| Err((k, v.to_string(), why.to_string()));
        if !valid_iqn(&self.iqn_prefix) || self.iqn_prefix.len() > IQN_BYTES_MAX - 2 {
            return e(
                "iscsi.iqn_prefix",
                &format!("{:?}", self.iqn_prefix),
                "must be an iSCSI qualified name such as \"iqn.2026-12.org.example\" (lowercase letters, digits, '.', '-', ':'; RFC 7143 3.2.6)",
            );
        }
        if self.iqn_prefix.ends_with(':') {
            return e("iscsi.iqn_prefix", &format!("{:?}", self.iqn_prefix), "must not end in ':' (the vdisk name is added after a ':')");
        }
        match (&self.chap_user, &self.chap_secret_file) {
            (Some(u), Some(_)) => {
                if u.is_empty() || u.len() > 255 || !u.bytes().all(|b| b.is_ascii_graphic()) {
                    return e("iscsi.chap_user", &format!("{u:?}"), "must be 1-255 printable characters without spaces");
                }
            }
            (Some(_), None) => {
                return e("iscsi.chap_secret_file", &"unset", "is needed with iscsi.chap_user (the file holding the secret)")
            }
            (None, Some(f)) => {
                return e("iscsi.chap_user", &"unset", &format!("is needed with iscsi.chap_secret_file = {:?}", f.display()))
            }
            (None, None) => {}
        }
        let nonzero = [
            ("iscsi.connections_max", self.connections_max as u64),
            ("iscsi.connections_per_ip_max", self.connections_per_ip_max as u64),
            ("iscsi.idle_evict_ms", self.idle_evict_ms),
            ("iscsi.login_timeout_ms", self.login_timeout_ms),
            ("iscsi.commands_in_flight_max", self.commands_in_flight_max as u64),
            ("iscsi.registrants_max", self.registrants_max as u64),
            ("iscsi.max_outstanding_r2t", self.max_outstanding_r2t as u64),
            ("iscsi.nop_in_timeout_ms", self.nop_in_timeout_ms),
            ("iscsi.send_timeout_ms", self.send_timeout_ms),
        ];
        if let Some((k, v)) = nonzero.iter().find(|(_, v)| *v == 0) {
            return e(k, v, "a limit of 0 would refuse every initiator; raise it");
        }
        if !(4096..=1 << 20).contains(&self.text_bytes_max) {
            return e(
                "iscsi.text_bytes_max",
                &self.text_bytes_max,
                "must be between 4096 and 1048576 (RFC 7143 asks at least 8192 of login text)",
            );
        }
        for (k, v) in [
            ("iscsi.max_recv_data_segment_length", self.max_recv_data_segment_length),
            ("iscsi.max_burst_length", self.max_burst_length),
            ("iscsi.first_burst_length", self.first_burst_length),
        ] {
            if !(SEGMENT_MIN..=SEGMENT_MAX).contains(&v) {
                return e(k, &v, "must be between 512 and 16777215 (RFC 7143 13.12-13.14)");
            }
        }
        if self.first_burst_length > self.max_burst_length {
            return e("iscsi.first_burst_length", &self.first_burst_length, "must be at most iscsi.max_burst_length (RFC 7143 13.14)");
        }
        if self.commands_in_flight_max > 4096 {
            return e("iscsi.commands_in_flight_max", &self.commands_in_flight_max, "at most 4096 (each holds a task slot)");
        }
        if self.registrants_max > 4096 {
            return e("iscsi.registrants_max", &self.registrants_max, "at most 4096 (READ KEYS answers fit 32 KiB)");
        }
        if self.max_outstanding_r2t > 64 {
            return e("iscsi.max_outstanding_r2t", &self.max_outstanding_r2t, "at most 64");
        }
        if self.nop_in_interval_ms > 0 && self.nop_in_interval_ms < 100 {
            return e("iscsi.nop_in_interval_ms", &self.nop_in_interval_ms, "must be 0 (no pings) or at least 100");
        }
        if self.portal_group_tag == 0 {
            return e("iscsi.portal_group_tag", &0, "must be between 1 and 65535");
        }
        Ok(())
    }
}

/// How `/ipxe` boots a vdisk (every vdisk is served over iSCSI and HTTP either way).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Sanboot {
    /// `sanboot http://.../vdisk/<name>`: iPXE reads it over HTTP; an OS needs its own driver.
    #[default]
    Http,
    /// `sanboot iscsi:<server>::<port>:0:<iqn>`: iPXE publishes an iBFT and the OS's iSCSI
    /// initiator (Windows, open-iscsi) takes the disk over.
    Iscsi,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iqns_and_suffixes() {
        assert!(valid_iqn(IQN_PREFIX_DEFAULT));
        assert!(valid_iqn("iqn.1991-05.com.microsoft:host-1.example"));
        for bad in ["", "iqn.2026-12", "iqn.2026-12.", "iqn.26-12.org.x", "iqn.2026-12.Org.x", "eui.02004567a425678d", "iqn.2026-12.org_x"]
        {
            assert!(!valid_iqn(bad), "{bad}");
        }
        assert!(valid_iqn(&format!("iqn.2026-12.o{}", "a".repeat(IQN_BYTES_MAX - 13))));
        assert!(!valid_iqn(&format!("iqn.2026-12.o{}", "a".repeat(IQN_BYTES_MAX - 12))));
        assert!(valid_suffix("win10") && valid_suffix("lab-2.x"));
        for bad in ["", "Win10", "a_b", "a:b"] {
            assert!(!valid_suffix(bad), "{bad}");
        }
    }

    #[test]
    fn target_names_round_trip_case_insensitively() {
        let c = Iscsi::default();
        assert_eq!(c.target_iqn("win10"), "iqn.2026-12.org.bootfarm:win10");
        assert_eq!(c.vdisk_of("iqn.2026-12.org.bootfarm:win10"), Some("win10"));
        assert_eq!(c.vdisk_of("IQN.2026-12.ORG.BOOTFARM:win10"), Some("win10"));
        assert_eq!(c.vdisk_of("iqn.2026-12.org.bootfarm:"), None);
        assert_eq!(c.vdisk_of("iqn.2026-12.org.bootfarmx:win10"), None);
        assert_eq!(c.vdisk_of("iqn.2026-12.org.other:win10"), None);
    }

    #[test]
    fn limits_are_checked_at_their_edges() {
        assert!(Iscsi::default().validate().is_ok());
        let key = |f: &dyn Fn(&mut Iscsi)| {
            let mut c = Iscsi::default();
            f(&mut c);
            c.validate().err().map(|e| e.0)
        };
        assert_eq!(key(&|c| c.max_recv_data_segment_length = 511), Some("iscsi.max_recv_data_segment_length"));
        assert_eq!(key(&|c| c.max_recv_data_segment_length = 512), None);
        assert_eq!(key(&|c| c.max_burst_length = SEGMENT_MAX + 1), Some("iscsi.max_burst_length"));
        assert_eq!(key(&|c| c.max_burst_length = SEGMENT_MAX), None);
        assert_eq!(key(&|c| c.first_burst_length = c.max_burst_length + 1), Some("iscsi.first_burst_length"));
        assert_eq!(key(&|c| c.commands_in_flight_max = 0), Some("iscsi.commands_in_flight_max"));
        assert_eq!(key(&|c| c.commands_in_flight_max = 4097), Some("iscsi.commands_in_flight_max"));
        assert_eq!(key(&|c| c.commands_in_flight_max = 4096), None);
        assert_eq!(key(&|c| c.registrants_max = 0), Some("iscsi.registrants_max"));
        assert_eq!(key(&|c| c.registrants_max = 4097), Some("iscsi.registrants_max"));
        assert_eq!(key(&|c| c.registrants_max = 4096), None);
        assert_eq!(key(&|c| c.max_outstanding_r2t = 65), Some("iscsi.max_outstanding_r2t"));
        assert_eq!(key(&|c| c.text_bytes_max = 4095), Some("iscsi.text_bytes_max"));
        assert_eq!(key(&|c| c.nop_in_interval_ms = 99), Some("iscsi.nop_in_interval_ms"));
        assert_eq!(key(&|c| c.nop_in_interval_ms = 0), None);
        assert_eq!(key(&|c| c.iqn_prefix = "iqn.2026-12.org.x:".into()), Some("iscsi.iqn_prefix"));
        assert_eq!(key(&|c| c.iqn_prefix = "bootfarm".into()), Some("iscsi.iqn_prefix"));
        assert_eq!(key(&|c| c.chap_user = Some("u".into())), Some("iscsi.chap_secret_file"));
        assert_eq!(key(&|c| c.chap_secret_file = Some("s".into())), Some("iscsi.chap_user"));
        assert_eq!(key(&|c| c.portal_group_tag = 0), Some("iscsi.portal_group_tag"));
    }
}
