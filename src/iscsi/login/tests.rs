//! The login fed what real initiators send (the strings built by iPXE's
//! iscsi_build_login_request_strings, libiscsi's lib/login.c, open-iscsi's usr/login.c, and
//! Windows' documented defaults), and the failures of RFC 7143 §11.13.5 at their cause.

use super::*;
use crate::iscsi::chap::{encode_hex, response};

const TARGET: &str = "iqn.2026-12.org.bootfarm:win10";
const IPXE: &str = "iqn.2010-04.org.ipxe:00000000-0000-0000-0000-525400123456";

fn exists(t: &str) -> bool {
    t == TARGET
}
fn no_session(_: u16) -> bool {
    false
}

fn cfg<'a>(chap: Option<&'a Chap>) -> LoginConfig<'a> {
    LoginConfig { target_exists: &exists, session_exists: &no_session, chap, offer: Offer::default(), portal_group_tag: 1 }
}

fn req(csg: u8, nsg: u8, transit: bool) -> LoginRequest {
    LoginRequest { transit, csg, nsg, isid: [0x40, 0, 0x01, 0x37, 0, 0], itt: 7, ..LoginRequest::default() }
}

const CHALLENGE: [u8; 16] = [0xa5, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 0x5a];

fn send(login: &mut Login, cfg: &LoginConfig, r: LoginRequest, text: &str) -> (Step, String) {
    let mut out = Vec::new();
    let step = login.on_request(cfg, &r, text.as_bytes(), &CHALLENGE, &mut out);
    (step, String::from_utf8(out).unwrap())
}

fn answer(transit: bool, csg: u8, nsg: u8) -> Step {
    Step::Answer { transit, csg, nsg }
}

fn code(step: &Step) -> (u8, u8) {
    match step {
        Step::Fail { class, detail, .. } => (*class, *detail),
        other => panic!("expected a failure, got {other:?}"),
    }
}

fn done(step: Step) -> Negotiated {
    match step {
        Step::Done { negotiated, transit: true, nsg: STAGE_FULL_FEATURE, .. } => negotiated,
        other => panic!("expected Done, got {other:?}"),
    }
}

/// The value answered for `key` in a response (the first one).
fn value<'a>(resp: &'a str, key: &str) -> Option<&'a str> {
    resp.split('\0').find_map(|p| p.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

fn ipxe_security(auth: &str) -> String {
    format!("InitiatorName={IPXE}\0TargetName={TARGET}\0SessionType=Normal\0AuthMethod={auth}\0")
}

const IPXE_OPERATIONAL: &str = "HeaderDigest=None\0DataDigest=None\0MaxConnections=1\0InitialR2T=Yes\0ImmediateData=No\0\
MaxRecvDataSegmentLength=8192\0MaxBurstLength=262144\0FirstBurstLength=65536\0DefaultTime2Wait=0\0DefaultTime2Retain=0\0\
MaxOutstandingR2T=1\0DataPDUInOrder=Yes\0DataSequenceInOrder=Yes\0ErrorRecoveryLevel=0\0";

#[test]
fn ipxe_without_authentication() {
    let c = cfg(None);
    let mut l = Login::new();
    let (step, resp) = send(&mut l, &c, req(0, 1, true), &ipxe_security("None"));
    assert_eq!(step, answer(true, 0, 1));
    assert_eq!(resp, "AuthMethod=None\0TargetPortalGroupTag=1\0TargetAlias=win10\0");
    let (step, resp) = send(&mut l, &c, req(1, 3, true), IPXE_OPERATIONAL);
    assert_eq!(
        resp,
        "HeaderDigest=None\0DataDigest=None\0MaxConnections=1\0InitialR2T=Yes\0ImmediateData=No\0\
MaxRecvDataSegmentLength=262144\0MaxBurstLength=262144\0FirstBurstLength=65536\0DefaultTime2Wait=0\0DefaultTime2Retain=0\0\
MaxOutstandingR2T=1\0DataPDUInOrder=Yes\0DataSequenceInOrder=Yes\0ErrorRecoveryLevel=0\0"
    );
    let n = done(step);
    assert_eq!(
        n,
        Negotiated {
            session_type: SessionType::Normal,
            initiator_name: IPXE.into(),
            initiator_alias: None,
            target_name: Some(TARGET.into()),
            max_send_data_segment_length: 8192,
            max_recv_data_segment_length: 262144,
            max_burst_length: 262144,
            first_burst_length: 65536,
            initial_r2t: true,
            immediate_data: false,
            max_outstanding_r2t: 1,
            max_connections: 1,
            header_digest: false,
            data_digest: false,
            default_time2wait: 0,
            default_time2retain: 0,
            error_recovery_level: 0,
        }
    );
    // The login is over: another request is an error, not a second login.
    let (step, _) = send(&mut l, &c, req(1, 3, true), IPXE_OPERATIONAL);
    assert_eq!(code(&step), status::INITIATOR_ERROR);
}

/// iPXE with a username: "CHAP,None", CHAP_A=5, then CHAP_N + CHAP_R (always with T set), and
/// with a target username ("mutual") also CHAP_I + CHAP_C.
fn ipxe_chap(mutual: bool, secret: &[u8]) -> (Step, String, Login) {
    let creds = Chap::new("pc1", b"initiator-secret", Some(("bootfarm", b"target-secret!"))).unwrap();
    let c = cfg(Some(&creds));
    let mut l = Login::new();
    let (step, resp) = send(&mut l, &c, req(0, 1, true), &ipxe_security(if mutual { "CHAP" } else { "CHAP,None" }));
    assert_eq!(step, answer(false, 0, 0), "not ready to leave the security stage");
    assert_eq!(resp, "AuthMethod=CHAP\0TargetPortalGroupTag=1\0TargetAlias=win10\0");
    let (step, resp) = send(&mut l, &c, req(0, 1, true), "CHAP_A=5\0");
    assert_eq!(step, answer(false, 0, 0));
    let id: u8 = value(&resp, "CHAP_I").unwrap().parse().unwrap();
    let ch = crate::iscsi::chap::decode_binary(value(&resp, "CHAP_C").unwrap(), 1024).unwrap();
    assert_eq!(ch, CHALLENGE, "the challenge is the caller's random bytes");
    assert!(resp.starts_with("CHAP_A=5\0"));
    let mut t = format!("CHAP_N=pc1\0CHAP_R={}\0", encode_hex(&response(id, secret, &ch)));
    if mutual {
        t.push_str(&format!("CHAP_I=66\0CHAP_C={}\0", encode_hex(&[0x11; 16])));
    }
    let (step, resp) = send(&mut l, &c, req(0, 1, true), &t);
    (step, resp, l)
}

#[test]
fn ipxe_chap_one_way_and_mutual() {
    let (step, resp, mut l) = ipxe_chap(false, b"initiator-secret");
    assert_eq!((step, resp.as_str()), (answer(true, 0, 1), ""));
    let creds = Chap::new("pc1", b"initiator-secret", Some(("bootfarm", b"target-secret!"))).unwrap();
    let (step, _) = send(&mut l, &cfg(Some(&creds)), req(1, 3, true), IPXE_OPERATIONAL);
    assert_eq!(done(step).initiator_name, IPXE);

    let (step, resp, _) = ipxe_chap(true, b"initiator-secret");
    assert_eq!(step, answer(true, 0, 1));
    assert_eq!(value(&resp, "CHAP_N"), Some("bootfarm"));
    assert_eq!(value(&resp, "CHAP_R"), Some(encode_hex(&response(66, b"target-secret!", &[0x11; 16])).as_str()));
}

#[test]
fn wrong_chap_secret_is_an_authentication_failure() {
    let (step, resp, _) = ipxe_chap(false, b"initiator-secreT");
    assert_eq!(code(&step), status::AUTHENTICATION_FAILURE);
    assert_eq!(resp, "", "a failure carries no text");
}

#[test]
fn chap_refusals() {
    let creds = Chap::new("pc1", b"initiator-secret", None).unwrap();
    let c = cfg(Some(&creds));
    // The configuration requires CHAP: None alone is refused; skipping the stage too.
    let (step, _) = send(&mut Login::new(), &c, req(0, 1, true), &ipxe_security("None"));
    assert_eq!(code(&step), status::AUTHENTICATION_FAILURE);
    let (step, _) = send(&mut Login::new(), &c, req(1, 3, true), &format!("InitiatorName={IPXE}\0TargetName={TARGET}\0"));
    assert_eq!(code(&step), status::AUTHENTICATION_FAILURE);
    let (step, _) = send(&mut Login::new(), &c, req(0, 1, true), &format!("InitiatorName={IPXE}\0TargetName={TARGET}\0"));
    assert_eq!(code(&step), status::AUTHENTICATION_FAILURE, "T without AuthMethod: None by default, not allowed");
    // Only SHA-256 (libiscsi's CHAP_A=7) offered.
    let mut l = Login::new();
    send(&mut l, &c, req(0, 1, false), &ipxe_security("CHAP"));
    let (step, _) = send(&mut l, &c, req(0, 1, false), "CHAP_A=7,6\0");
    assert_eq!(code(&step), status::AUTHENTICATION_FAILURE);
    // A list with MD5 in it is fine.
    let mut l = Login::new();
    send(&mut l, &c, req(0, 1, false), &ipxe_security("CHAP"));
    let (step, resp) = send(&mut l, &c, req(0, 1, false), "CHAP_A=7,5\0");
    assert_eq!((step, value(&resp, "CHAP_A")), (answer(false, 0, 0), Some("5")));
    // Mutual CHAP asked, no mutual secret configured.
    let id = value(&resp, "CHAP_I").unwrap().parse().unwrap();
    let r = encode_hex(&response(id, b"initiator-secret", &CHALLENGE));
    let mut l2 = Login::new();
    send(&mut l2, &c, req(0, 1, false), &ipxe_security("CHAP"));
    send(&mut l2, &c, req(0, 1, false), "CHAP_A=5\0");
    let (step, _) = send(&mut l2, &c, req(0, 1, true), &format!("CHAP_N=pc1\0CHAP_R={r}\0CHAP_I=1\0CHAP_C=0x0102\0"));
    assert_eq!(code(&step), status::AUTHENTICATION_FAILURE);
    // The wrong user.
    let (step, _) = send(&mut l, &c, req(0, 1, true), &format!("CHAP_N=pc2\0CHAP_R={r}\0"));
    assert_eq!(code(&step), status::AUTHENTICATION_FAILURE);
    // CHAP keys out of order, and CHAP offered to a target without credentials.
    let mut l = Login::new();
    send(&mut l, &c, req(0, 1, false), &ipxe_security("CHAP"));
    let (step, _) = send(&mut l, &c, req(0, 1, false), &format!("CHAP_N=pc1\0CHAP_R={r}\0"));
    assert_eq!(code(&step), status::INITIATOR_ERROR);
    let (step, _) = send(&mut Login::new(), &cfg(None), req(0, 1, true), &ipxe_security("CHAP"));
    assert_eq!(code(&step), status::AUTHENTICATION_FAILURE);
}

#[test]
fn mutual_chap_reflection_is_refused() {
    let creds = Chap::new("pc1", b"initiator-secret", Some(("bootfarm", b"target-secret!"))).unwrap();
    let c = cfg(Some(&creds));
    let mut l = Login::new();
    send(&mut l, &c, req(0, 1, true), &ipxe_security("CHAP"));
    let (_, resp) = send(&mut l, &c, req(0, 1, true), "CHAP_A=5\0");
    let id = value(&resp, "CHAP_I").unwrap().parse().unwrap();
    let r = encode_hex(&response(id, b"initiator-secret", &CHALLENGE));
    let (step, _) = send(&mut l, &c, req(0, 1, true), &format!("CHAP_N=pc1\0CHAP_R={r}\0CHAP_I=9\0CHAP_C={}\0", encode_hex(&CHALLENGE)));
    assert_eq!(code(&step), status::AUTHENTICATION_FAILURE);
}

/// libiscsi without a user starts in the operational stage with everything in one request.
#[test]
fn libiscsi_normal_session() {
    let t = format!(
        "InitiatorName=iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-inq\0TargetName={TARGET}\0SessionType=Normal\0\
HeaderDigest=None,CRC32C\0DataDigest=None\0InitialR2T=No\0ImmediateData=Yes\0MaxBurstLength=262144\0FirstBurstLength=262144\0\
DefaultTime2Wait=2\0DefaultTime2Retain=0\0MaxOutstandingR2T=1\0ErrorRecoveryLevel=0\0IFMarker=No\0OFMarker=No\0MaxConnections=1\0\
MaxRecvDataSegmentLength=262144\0DataPDUInOrder=Yes\0DataSequenceInOrder=Yes\0"
    );
    let (step, resp) = send(&mut Login::new(), &cfg(None), req(1, 3, true), &t);
    assert_eq!(
        resp,
        "HeaderDigest=None\0DataDigest=None\0InitialR2T=No\0ImmediateData=Yes\0MaxBurstLength=262144\0FirstBurstLength=65536\0\
DefaultTime2Wait=2\0DefaultTime2Retain=0\0MaxOutstandingR2T=1\0ErrorRecoveryLevel=0\0IFMarker=No\0OFMarker=No\0MaxConnections=1\0\
MaxRecvDataSegmentLength=262144\0DataPDUInOrder=Yes\0DataSequenceInOrder=Yes\0TargetPortalGroupTag=1\0TargetAlias=win10\0"
    );
    let n = done(step);
    assert_eq!((n.initial_r2t, n.immediate_data, n.first_burst_length, n.max_send_data_segment_length), (false, true, 65536, 262144));
}

/// libiscsi's iscsi-ls: a Discovery session in the operational stage; the session-only keys are
/// "Irrelevant" (RFC 7143 §13), no TargetPortalGroupTag.
#[test]
fn libiscsi_discovery_session() {
    let t = "InitiatorName=iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-ls\0SessionType=Discovery\0HeaderDigest=None,CRC32C\0\
DataDigest=None\0InitialR2T=No\0ImmediateData=Yes\0MaxBurstLength=262144\0FirstBurstLength=262144\0DefaultTime2Wait=2\0\
DefaultTime2Retain=0\0MaxOutstandingR2T=1\0ErrorRecoveryLevel=0\0IFMarker=No\0OFMarker=No\0MaxConnections=1\0\
MaxRecvDataSegmentLength=262144\0DataPDUInOrder=Yes\0DataSequenceInOrder=Yes\0";
    let (step, resp) = send(&mut Login::new(), &cfg(None), req(1, 3, true), t);
    for k in ["InitialR2T", "ImmediateData", "MaxBurstLength", "FirstBurstLength", "MaxOutstandingR2T", "MaxConnections", "DataPDUInOrder"]
    {
        assert_eq!(value(&resp, k), Some("Irrelevant"), "{k}");
    }
    assert_eq!(value(&resp, "TargetPortalGroupTag"), None);
    let n = done(step);
    assert_eq!((n.session_type, n.target_name), (SessionType::Discovery, None));
}

/// open-iscsi: names + alias, then its operational keys; a discovery session with default
/// settings leaves the security stage straight for full feature phase.
#[test]
fn open_iscsi_sessions() {
    let names =
        format!("InitiatorName=iqn.1993-08.org.debian:01:8f3d6f4c5b2a\0InitiatorAlias=node1\0TargetName={TARGET}\0SessionType=Normal\0");
    let c = cfg(None);
    let mut l = Login::new();
    let (step, resp) = send(&mut l, &c, req(0, 1, true), &format!("{names}AuthMethod=None\0"));
    assert_eq!((step, resp.as_str()), (answer(true, 0, 1), "AuthMethod=None\0TargetPortalGroupTag=1\0TargetAlias=win10\0"));
    let op = "HeaderDigest=None\0DataDigest=None\0DefaultTime2Wait=2\0DefaultTime2Retain=0\0IFMarker=No\0OFMarker=No\0\
ErrorRecoveryLevel=0\0InitialR2T=No\0ImmediateData=Yes\0MaxBurstLength=16776192\0FirstBurstLength=262144\0MaxConnections=1\0\
DataPDUInOrder=Yes\0DataSequenceInOrder=Yes\0MaxOutstandingR2T=1\0MaxRecvDataSegmentLength=262144\0";
    let (step, resp) = send(&mut l, &c, req(1, 3, true), op);
    assert_eq!(value(&resp, "MaxBurstLength"), Some("262144"));
    assert_eq!(value(&resp, "FirstBurstLength"), Some("65536"));
    let n = done(step);
    assert_eq!(n.initiator_alias.as_deref(), Some("node1"));
    assert_eq!((n.max_burst_length, n.first_burst_length, n.max_outstanding_r2t), (262144, 65536, 1));

    let disc = "InitiatorName=iqn.1993-08.org.debian:01:8f3d6f4c5b2a\0SessionType=Discovery\0AuthMethod=None\0";
    let (step, resp) = send(&mut Login::new(), &c, req(0, 3, true), disc);
    assert_eq!(resp, "AuthMethod=None\0");
    let n = done(step);
    assert_eq!((n.max_recv_data_segment_length, n.max_send_data_segment_length), (8192, 8192), "nothing declared: defaults");
}

/// Windows' documented defaults (Microsoft iSCSI Initiator): ERL 2 asked, 0 answered;
/// Time2Retain 20 answered 0.
#[test]
fn windows_defaults() {
    let c = cfg(None);
    let mut l = Login::new();
    let sec = format!("InitiatorName=iqn.1991-05.com.microsoft:desktop-7h2k1\0SessionType=Normal\0TargetName={TARGET}\0AuthMethod=None\0");
    assert_eq!(send(&mut l, &c, req(0, 1, true), &sec).0, answer(true, 0, 1));
    let op = "HeaderDigest=None,CRC32C\0DataDigest=None,CRC32C\0ErrorRecoveryLevel=2\0InitialR2T=No\0ImmediateData=Yes\0\
MaxBurstLength=262144\0FirstBurstLength=65536\0MaxOutstandingR2T=1\0MaxConnections=1\0MaxRecvDataSegmentLength=262144\0\
DataPDUInOrder=Yes\0DataSequenceInOrder=Yes\0DefaultTime2Wait=2\0DefaultTime2Retain=20\0IFMarker=No\0OFMarker=No\0";
    let (step, resp) = send(&mut l, &c, req(1, 3, true), op);
    assert_eq!(value(&resp, "ErrorRecoveryLevel"), Some("0"));
    assert_eq!(value(&resp, "DefaultTime2Retain"), Some("0"));
    assert_eq!(value(&resp, "HeaderDigest"), Some("None"), "CRC32C not allowed by the offer");
    let n = done(step);
    assert_eq!((n.error_recovery_level, n.default_time2retain, n.default_time2wait), (0, 0, 2));
}

#[test]
fn digests_when_allowed() {
    let mut c = cfg(None);
    c.offer.header_digest = true;
    let t = format!("InitiatorName={IPXE}\0TargetName={TARGET}\0HeaderDigest=CRC32C,None\0DataDigest=CRC32C\0");
    let (step, resp) = send(&mut Login::new(), &c, req(1, 3, true), &t);
    assert_eq!(value(&resp, "HeaderDigest"), Some("CRC32C"));
    assert_eq!(value(&resp, "DataDigest"), Some("Reject"), "CRC32C only, not allowed: Reject, default None");
    let n = done(step);
    assert_eq!((n.header_digest, n.data_digest), (true, false));
}

/// A key sent twice with the same value gets the same answer again; with another value it is a
/// renegotiation, an initiator error. A T=0 round makes libiscsi resend everything.
#[test]
fn keys_sent_twice() {
    let c = cfg(None);
    let t = format!("InitiatorName={IPXE}\0TargetName={TARGET}\0MaxBurstLength=65536\0MaxBurstLength=65536\0InitialR2T=Yes\0");
    let mut l = Login::new();
    let (step, resp) = send(&mut l, &c, req(1, 3, false), &t);
    assert_eq!(step, answer(false, 1, 0));
    assert!(resp.starts_with("MaxBurstLength=65536\0MaxBurstLength=65536\0InitialR2T=Yes\0"), "{resp:?}");
    let (step, resp) = send(&mut l, &c, req(1, 3, true), &t);
    assert_eq!(resp, "MaxBurstLength=65536\0MaxBurstLength=65536\0InitialR2T=Yes\0");
    assert_eq!(done(step).max_burst_length, 65536);

    let mut l = Login::new();
    send(&mut l, &c, req(1, 3, false), &t);
    let (step, _) = send(&mut l, &c, req(1, 3, true), "MaxBurstLength=131072\0");
    assert_eq!(code(&step), status::INITIATOR_ERROR);
}

#[test]
fn extension_unknown_and_target_only_keys() {
    let t = format!(
        "InitiatorName={IPXE}\0TargetName={TARGET}\0X-com.example.Foo=1\0X#Bar=2\0X#NodeArchitecture=ipxe\0NoSuchKey=3\0\
TargetAlias=x\0SendTargets=All\0IFMarkInt=2048\0TaskReporting=FastAbort,RFC3720\0iSCSIProtocolLevel=2\0RDMAExtensions=Yes\0"
    );
    let (step, resp) = send(&mut Login::new(), &cfg(None), req(1, 3, true), &t);
    assert_eq!(
        resp,
        "X-com.example.Foo=NotUnderstood\0X#Bar=NotUnderstood\0NoSuchKey=NotUnderstood\0TargetAlias=Reject\0SendTargets=Reject\0\
IFMarkInt=Reject\0TaskReporting=RFC3720\0iSCSIProtocolLevel=1\0RDMAExtensions=No\0TargetPortalGroupTag=1\0TargetAlias=win10\0\
MaxRecvDataSegmentLength=262144\0"
    );
    done(step);
}

#[test]
fn bad_values_are_rejected_and_keep_defaults() {
    let t = format!(
        "InitiatorName={IPXE}\0TargetName={TARGET}\0MaxBurstLength=511\0FirstBurstLength=16777216\0MaxConnections=0\0InitialR2T=yes\0\
ImmediateData=Maybe\0MaxOutstandingR2T=0\0DefaultTime2Wait=3601\0ErrorRecoveryLevel=3\0HeaderDigest=MD5\0DataPDUInOrder=1\0\
MaxRecvDataSegmentLength=0x1ffffff\0IFMarker=Perhaps\0"
    );
    let (step, resp) = send(&mut Login::new(), &cfg(None), req(1, 3, true), &t);
    for k in [
        "MaxBurstLength",
        "FirstBurstLength",
        "MaxConnections",
        "InitialR2T",
        "ImmediateData",
        "MaxOutstandingR2T",
        "DefaultTime2Wait",
        "ErrorRecoveryLevel",
        "HeaderDigest",
        "DataPDUInOrder",
        "MaxRecvDataSegmentLength",
        "IFMarker",
    ] {
        assert_eq!(value(&resp, k), Some("Reject"), "{k} in {resp:?}");
    }
    assert_eq!(resp.matches("MaxRecvDataSegmentLength=").count(), 1, "rejected, not also declared");
    let n = done(step);
    assert_eq!(
        (n.max_burst_length, n.first_burst_length, n.max_send_data_segment_length, n.max_recv_data_segment_length),
        (262144, 65536, 8192, 8192)
    );
}

#[test]
fn numbers_at_their_edges() {
    let t =
        format!("InitiatorName={IPXE}\0TargetName={TARGET}\0MaxRecvDataSegmentLength=512\0MaxBurstLength=0xffffff\0FirstBurstLength=512\0");
    let mut c = cfg(None);
    c.offer.max_burst_length = (1 << 24) - 1;
    let (step, resp) = send(&mut Login::new(), &c, req(1, 3, true), &t);
    assert_eq!(value(&resp, "MaxBurstLength"), Some("16777215"));
    let n = done(step);
    assert_eq!((n.max_send_data_segment_length, n.max_burst_length, n.first_burst_length), (512, 16777215, 512));
    // FirstBurstLength is kept at or under MaxBurstLength, whichever comes first in the text.
    let t = format!("InitiatorName={IPXE}\0TargetName={TARGET}\0FirstBurstLength=65536\0MaxBurstLength=4096\0");
    let (step, resp) = send(&mut Login::new(), &cfg(None), req(1, 3, true), &t);
    assert_eq!((value(&resp, "FirstBurstLength"), value(&resp, "MaxBurstLength")), (Some("4096"), Some("4096")));
    assert_eq!(done(step).first_burst_length, 4096);
}

/// Our limits below the defaults of keys the initiator did not send: we offer them (T=0) and
/// the login ends only once they are answered.
#[test]
fn target_offers_for_unsent_keys() {
    let mut c = cfg(None);
    c.offer.max_burst_length = 65536;
    c.offer.first_burst_length = 16384;
    c.offer.immediate_data = false;
    let mut l = Login::new();
    let (step, resp) = send(&mut l, &c, req(1, 3, true), &format!("InitiatorName={IPXE}\0TargetName={TARGET}\0"));
    assert_eq!(step, answer(false, 1, 0));
    assert_eq!(
        resp,
        "TargetPortalGroupTag=1\0TargetAlias=win10\0MaxRecvDataSegmentLength=262144\0MaxBurstLength=65536\0FirstBurstLength=16384\0ImmediateData=No\0"
    );
    // Transit without answering them: missing parameter.
    let mut l2 = Login::new();
    send(&mut l2, &c, req(1, 3, true), &format!("InitiatorName={IPXE}\0TargetName={TARGET}\0"));
    assert_eq!(code(&send(&mut l2, &c, req(1, 3, true), "").0), status::MISSING_PARAMETER);
    // An answer over our offer is an error; the right answers end the login.
    let mut l3 = Login::new();
    send(&mut l3, &c, req(1, 3, true), &format!("InitiatorName={IPXE}\0TargetName={TARGET}\0"));
    assert_eq!(code(&send(&mut l3, &c, req(1, 3, true), "MaxBurstLength=131072\0").0), status::INITIATOR_ERROR);
    let (step, resp) = send(&mut l, &c, req(1, 3, true), "MaxBurstLength=65536\0FirstBurstLength=8192\0ImmediateData=No\0");
    assert_eq!(resp, "");
    let n = done(step);
    assert_eq!((n.max_burst_length, n.first_burst_length, n.immediate_data), (65536, 8192, false));
    // Security straight to full feature: the target picks the operational stage instead.
    let (step, _) = send(&mut Login::new(), &c, req(0, 3, true), &ipxe_security("None"));
    assert_eq!(step, answer(true, 0, 1));
}

#[test]
fn names_and_session_types() {
    let c = cfg(None);
    let (step, _) = send(&mut Login::new(), &c, req(0, 1, true), &format!("TargetName={TARGET}\0AuthMethod=None\0"));
    assert_eq!(code(&step), status::MISSING_PARAMETER);
    let (step, _) = send(&mut Login::new(), &c, req(0, 1, true), &format!("InitiatorName={IPXE}\0AuthMethod=None\0"));
    assert_eq!(code(&step), status::MISSING_PARAMETER);
    let (step, _) =
        send(&mut Login::new(), &c, req(0, 1, true), &format!("InitiatorName={IPXE}\0TargetName=iqn.2026-12.org.bootfarm:nope\0"));
    assert_eq!(code(&step), status::NOT_FOUND);
    let (step, _) = send(&mut Login::new(), &c, req(0, 1, true), &format!("InitiatorName={IPXE}\0TargetName=win10\0"));
    assert_eq!(code(&step), status::NOT_FOUND);
    let (step, _) = send(&mut Login::new(), &c, req(0, 1, true), &format!("InitiatorName=pc 1\0TargetName={TARGET}\0"));
    assert_eq!(code(&step), status::INITIATOR_ERROR);
    // Non-ASCII names (found by the fuzz target: a char boundary inside the "iqn." prefix).
    let (step, _) = send(&mut Login::new(), &c, req(0, 1, true), &format!("InitiatorName=819\u{2fd}\0TargetName={TARGET}\0"));
    assert_eq!(code(&step), status::INITIATOR_ERROR);
    let (step, _) = send(&mut Login::new(), &c, req(0, 1, true), &format!("InitiatorName={IPXE}\0TargetName=iqn\u{e9}2026-12.x\0"));
    assert_eq!(code(&step), status::NOT_FOUND);
    let (step, _) =
        send(&mut Login::new(), &c, req(0, 1, true), &format!("InitiatorName={IPXE}\0TargetName={TARGET}\0SessionType=Bogus\0"));
    assert_eq!(code(&step), status::SESSION_TYPE_NOT_SUPPORTED);
    // Target names are case-insensitive: stored lowercased.
    let (step, _) = send(&mut Login::new(), &c, req(1, 3, true), &format!("InitiatorName={IPXE}\0TargetName={}\0", TARGET.to_uppercase()));
    assert_eq!(done(step).target_name.as_deref(), Some(TARGET));
    // A leading-only key first sent in a later request.
    let mut l = Login::new();
    send(&mut l, &c, req(0, 1, false), &format!("InitiatorName={IPXE}\0TargetName={TARGET}\0"));
    assert_eq!(code(&send(&mut l, &c, req(0, 1, true), "SessionType=Normal\0").0), status::INITIATOR_ERROR);
}

#[test]
fn header_checks() {
    let c = cfg(None);
    let sec = ipxe_security("None");
    let mut r = req(0, 1, true);
    r.version_min = 1;
    r.version_max = 2;
    assert_eq!(code(&send(&mut Login::new(), &c, r, &sec).0), status::UNSUPPORTED_VERSION);
    let mut r = req(0, 1, true);
    r.tsih = 9;
    assert_eq!(code(&send(&mut Login::new(), &c, r, &sec).0), status::SESSION_DOES_NOT_EXIST);
    let live = |t: u16| t == 9;
    let c2 = LoginConfig { session_exists: &live, ..cfg(None) };
    assert_eq!(code(&send(&mut Login::new(), &c2, r, &sec).0), status::TOO_MANY_CONNECTIONS);
    assert_eq!(code(&send(&mut Login::new(), &c, req(3, 3, false), &sec).0), status::INITIATOR_ERROR, "start in full feature");
    assert_eq!(code(&send(&mut Login::new(), &c, req(0, 2, true), &sec).0), status::INITIATOR_ERROR, "NSG 2 is reserved");
    assert_eq!(code(&send(&mut Login::new(), &c, req(1, 1, true), &sec).0), status::INITIATOR_ERROR, "transit to the same stage");
    let mut r = req(0, 1, true);
    r.cont = true;
    assert_eq!(code(&send(&mut Login::new(), &c, r, &sec).0), status::TARGET_ERROR, "C bit: the session reassembles");
    // Stage mismatches and changed ids.
    let mut l = Login::new();
    send(&mut l, &c, req(0, 1, true), &sec);
    assert_eq!(code(&send(&mut l, &c, req(0, 1, true), "").0), status::INITIATOR_ERROR, "CSG 0 after transit to 1");
    let mut l = Login::new();
    send(&mut l, &c, req(0, 1, false), &sec);
    let mut r = req(0, 1, true);
    r.isid[5] = 1;
    assert_eq!(code(&send(&mut l, &c, r, "").0), status::INITIATOR_ERROR);
}

#[test]
fn keys_in_the_wrong_stage() {
    let c = cfg(None);
    let (step, _) = send(&mut Login::new(), &c, req(0, 1, true), &format!("{}MaxBurstLength=65536\0", ipxe_security("None")));
    assert_eq!(code(&step), status::INITIATOR_ERROR);
    let (step, _) = send(&mut Login::new(), &c, req(1, 3, true), &format!("InitiatorName={IPXE}\0TargetName={TARGET}\0AuthMethod=None\0"));
    assert_eq!(code(&step), status::INITIATOR_ERROR);
}

#[test]
fn text_limits() {
    let c = cfg(None);
    let mut t = ipxe_security("None");
    t.push_str(&"X-a=1\0".repeat(text::PAIRS_MAX - 4));
    let (step, _) = send(&mut Login::new(), &c, req(0, 1, true), &t);
    assert_eq!(step, answer(true, 0, 1), "exactly at the pair limit");
    t.push_str("X-b=1\0");
    assert_eq!(code(&send(&mut Login::new(), &c, req(0, 1, true), &t).0), status::INITIATOR_ERROR);
    let big = format!("{}X-big={}\0", ipxe_security("None"), "v".repeat(300));
    assert_eq!(code(&send(&mut Login::new(), &c, req(0, 1, true), &big).0), status::INITIATOR_ERROR);
    let huge = "\0".repeat(text::TEXT_BYTES_MAX + 1);
    assert_eq!(code(&send(&mut Login::new(), &c, req(0, 1, true), &huge).0), status::INITIATOR_ERROR);
    let unterminated = ipxe_security("None").trim_end_matches('\0').to_string();
    assert_eq!(code(&send(&mut Login::new(), &c, req(0, 1, true), &unterminated).0), status::INITIATOR_ERROR);
}

#[test]
fn request_limit() {
    let c = cfg(None);
    let mut l = Login::new();
    send(&mut l, &c, req(0, 1, false), &ipxe_security("None"));
    for _ in 1..REQUESTS_MAX {
        assert_eq!(send(&mut l, &c, req(0, 1, false), "").0, answer(false, 0, 0));
    }
    assert_eq!(code(&send(&mut l, &c, req(0, 1, true), "").0), status::INITIATOR_ERROR);
}

/// A Normal session may leave the security stage straight for full feature phase when the
/// defaults suit the target: RFC 7143's defaults are then the result.
#[test]
fn security_straight_to_full_feature() {
    let (step, resp) = send(&mut Login::new(), &cfg(None), req(0, 3, true), &ipxe_security("None"));
    assert_eq!(resp, "AuthMethod=None\0TargetPortalGroupTag=1\0TargetAlias=win10\0");
    let n = match step {
        Step::Done { negotiated, csg: STAGE_SECURITY, .. } => negotiated,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        (n.max_send_data_segment_length, n.max_recv_data_segment_length, n.max_burst_length, n.first_burst_length),
        (8192, 8192, 262144, 65536)
    );
    assert_eq!(
        (n.initial_r2t, n.immediate_data, n.max_outstanding_r2t, n.default_time2wait, n.default_time2retain),
        (true, true, 1, 2, 20)
    );
}

/// AuthMethod and CHAP_A in one request, the response with T clear, then an empty request with
/// T set: each step answered, the stage left only at the end.
#[test]
fn chap_compressed_and_transit_later() {
    let creds = Chap::new("pc1", b"initiator-secret", None).unwrap();
    let c = cfg(Some(&creds));
    let mut l = Login::new();
    let (step, resp) = send(&mut l, &c, req(0, 1, false), &format!("{}CHAP_A=5\0", ipxe_security("CHAP,None")));
    assert_eq!(step, answer(false, 0, 0));
    assert!(resp.starts_with("AuthMethod=CHAP\0CHAP_A=5\0CHAP_I="), "{resp:?}");
    let id = value(&resp, "CHAP_I").unwrap().parse().unwrap();
    let r = encode_hex(&response(id, b"initiator-secret", &CHALLENGE));
    let (step, resp) = send(&mut l, &c, req(0, 1, false), &format!("CHAP_N=pc1\0CHAP_R={r}\0"));
    assert_eq!((step, resp.as_str()), (answer(false, 0, 0), ""));
    assert_eq!(send(&mut l, &c, req(0, 1, true), "").0, answer(true, 0, 1));
    assert_eq!(done(send(&mut l, &c, req(1, 3, true), IPXE_OPERATIONAL).0).target_name.as_deref(), Some(TARGET));
}

/// With CHAP configured, a Discovery session authenticates too (iscsiadm discovery needs the
/// discovery credentials set).
#[test]
fn discovery_with_chap_configured() {
    let creds = Chap::new("pc1", b"initiator-secret", None).unwrap();
    let disc = format!("InitiatorName={IPXE}\0SessionType=Discovery\0AuthMethod=None\0");
    assert_eq!(code(&send(&mut Login::new(), &cfg(Some(&creds)), req(0, 3, true), &disc).0), status::AUTHENTICATION_FAILURE);
}
