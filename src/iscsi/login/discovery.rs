//! Text Requests in full feature phase (RFC 7143 §11.10, Appendix C): SendTargets (All, one
//! target name, or empty) answered with TargetName / TargetAddress ("ip:port,tpgt", IPv6 in
//! brackets), MaxRecvDataSegmentLength redeclared, every other key answered as the RFC says.
//! The answer can exceed one PDU: the session cuts it at the initiator's segment length.

use super::names;
use super::SessionType;
use crate::iscsi::text::{self, TextError};
use std::net::SocketAddr;

/// What a Text Request changed in the session.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TextOutcome {
    /// The initiator redeclared MaxRecvDataSegmentLength: the new limit on what we send.
    pub max_send_data_segment_length: Option<u32>,
}

/// A portal in the TargetAddress form: "10.0.0.1:3260,1", "[fd00::1]:3260,1".
pub fn target_address(addr: SocketAddr, portal_group_tag: u16) -> String {
    match addr {
        SocketAddr::V4(a) => format!("{}:{},{portal_group_tag}", a.ip(), a.port()),
        // The zone of a link-local address means nothing to the initiator: left out.
        SocketAddr::V6(a) => format!("[{}]:{},{portal_group_tag}", a.ip(), a.port()),
    }
}

/// Answers one (reassembled) Text Request. `targets` yields (target IQN, TargetAddress) for every
/// portal this session may learn about: every served target in a Discovery session, the
/// session's own target in a Normal one. The answer is appended to `out`.
pub fn text_request(
    text: &[u8],
    targets: &mut dyn Iterator<Item = (&str, &str)>,
    session_type: SessionType,
    out: &mut Vec<u8>,
) -> Result<TextOutcome, TextError> {
    let pairs = text::parse(text, text::PAIRS_MAX)?;
    let mut outcome = TextOutcome::default();
    // The targets are read once, only if asked for, grouped by name in first-seen order.
    let mut listed: Option<Vec<(String, Vec<String>)>> = None;
    for (key, value) in pairs {
        match key {
            "SendTargets" => {
                let all = listed.get_or_insert_with(|| group(targets));
                let wanted: Option<String> = match value {
                    "All" => None,
                    // RFC 7143 Appendix C: the empty value names the session's own target,
                    // which a Discovery session does not have.
                    "" if session_type == SessionType::Discovery => {
                        text::push(out, key, "Reject");
                        continue;
                    }
                    "" => None,
                    name if names::valid(name) => Some(names::normalize(name)),
                    _ => {
                        text::push(out, key, "Reject");
                        continue;
                    }
                };
                for (name, addrs) in all.iter().filter(|(n, _)| wanted.as_ref().is_none_or(|w| w == n)) {
                    text::push(out, "TargetName", name);
                    for a in addrs {
                        text::push(out, "TargetAddress", a);
                    }
                }
            }
            // Declarative, allowed in full feature phase (RFC 7143 §13.12): no answer.
            "MaxRecvDataSegmentLength" => match text::number(value, (1 << 24) - 1).filter(|&n| n >= 512) {
                Some(n) => outcome.max_send_data_segment_length = Some(n as u32),
                None => text::push(out, key, "Reject"),
            },
            // Keys whose use ends with the login.
            k if super::ops::is_operational_key(k) || super::is_security_key(k) => text::push(out, key, "Reject"),
            "InitiatorName" | "TargetName" | "SessionType" | "TargetAddress" | "TargetPortalGroupTag" | "TargetAlias" => {
                text::push(out, key, "Reject")
            }
            // Declarative keys we take note of nowhere.
            "InitiatorAlias" | "X#NodeArchitecture" => {}
            _ => text::push(out, key, "NotUnderstood"),
        }
    }
    Ok(outcome)
}

fn group(targets: &mut dyn Iterator<Item = (&str, &str)>) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for (name, addr) in targets {
        let name = names::normalize(name);
        match out.iter_mut().find(|(n, _)| *n == name) {
            Some((_, addrs)) => addrs.push(addr.to_string()),
            None => out.push((name, vec![addr.to_string()])),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const WIN: &str = "iqn.2026-12.org.bootfarm:win10";
    const LNX: &str = "iqn.2026-12.org.bootfarm:debian";

    fn portals() -> Vec<(&'static str, &'static str)> {
        vec![(WIN, "10.0.0.1:3260,1"), (LNX, "10.0.0.1:3260,1"), (WIN, "[fd00::1]:3260,1")]
    }

    fn run(text: &[u8], session: SessionType) -> (Vec<u8>, TextOutcome) {
        let p = portals();
        let mut it = p.iter().copied();
        let mut out = Vec::new();
        let o = text_request(text, &mut it, session, &mut out).unwrap();
        (out, o)
    }

    #[test]
    fn addresses() {
        assert_eq!(target_address("10.0.0.1:3260".parse().unwrap(), 1), "10.0.0.1:3260,1");
        assert_eq!(target_address("[fd00::1]:3260".parse().unwrap(), 7), "[fd00::1]:3260,7");
        assert_eq!(target_address("[fe80::1%2]:3261".parse().unwrap(), 1), "[fe80::1]:3261,1");
    }

    /// What `iscsiadm -m discovery -t st` and libiscsi's iscsi-ls send: SendTargets=All.
    #[test]
    fn send_targets_all_groups_portals_by_target() {
        let (out, o) = run(b"SendTargets=All\0", SessionType::Discovery);
        assert_eq!(
            out,
            format!("TargetName={WIN}\0TargetAddress=10.0.0.1:3260,1\0TargetAddress=[fd00::1]:3260,1\0TargetName={LNX}\0TargetAddress=10.0.0.1:3260,1\0")
                .into_bytes()
        );
        assert_eq!(o, TextOutcome::default());
    }

    #[test]
    fn send_targets_one_name_or_empty() {
        let (out, _) = run(b"SendTargets=IQN.2026-12.org.bootfarm:DEBIAN\0", SessionType::Discovery);
        assert_eq!(out, format!("TargetName={LNX}\0TargetAddress=10.0.0.1:3260,1\0").into_bytes());
        let (out, _) = run(b"SendTargets=iqn.2026-12.org.bootfarm:absent\0", SessionType::Discovery);
        assert_eq!(out, b"");
        let (out, _) = run(b"SendTargets=\0", SessionType::Discovery);
        assert_eq!(out, b"SendTargets=Reject\0");
        let (out, _) = run(b"SendTargets=not a name\0", SessionType::Discovery);
        assert_eq!(out, b"SendTargets=Reject\0");
        // A Normal session is given its own target only; the empty value lists it.
        let own = [(WIN, "10.0.0.1:3260,1")];
        let mut it = own.iter().copied();
        let mut out = Vec::new();
        text_request(b"SendTargets=\0", &mut it, SessionType::Normal, &mut out).unwrap();
        assert_eq!(out, format!("TargetName={WIN}\0TargetAddress=10.0.0.1:3260,1\0").into_bytes());
    }

    #[test]
    fn other_keys() {
        let (out, o) = run(b"MaxRecvDataSegmentLength=65536\0", SessionType::Normal);
        assert_eq!((out.as_slice(), o.max_send_data_segment_length), (&b""[..], Some(65536)));
        let (out, o) = run(b"MaxRecvDataSegmentLength=511\0", SessionType::Normal);
        assert_eq!((out.as_slice(), o.max_send_data_segment_length), (&b"MaxRecvDataSegmentLength=Reject\0"[..], None));
        let (out, _) =
            run(b"MaxBurstLength=65536\0AuthMethod=None\0X-com.example.Foo=1\0Bogus=2\0InitiatorAlias=pc\0", SessionType::Normal);
        assert_eq!(out, b"MaxBurstLength=Reject\0AuthMethod=Reject\0X-com.example.Foo=NotUnderstood\0Bogus=NotUnderstood\0".to_vec());
    }

    #[test]
    fn bad_text_is_an_error() {
        let p = portals();
        let mut out = Vec::new();
        assert!(text_request(b"SendTargets=All", &mut p.iter().copied(), SessionType::Discovery, &mut out).is_err());
        assert!(text_request(&b"A=1\0".repeat(text::PAIRS_MAX + 1), &mut p.iter().copied(), SessionType::Discovery, &mut out).is_err());
    }
}
