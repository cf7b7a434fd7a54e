//! Feeds arbitrary bytes to the iSCSI parsers that face initiators: the BHS codec (every PDU
//! type, the layout for each digest setting, the AHS walk, LUN fields), the text key lists and
//! their value forms, the login state machine (fed the input as a stream of PDUs, and the whole
//! input as the text of a first Login Request in each stage, with and without CHAP), and Text
//! Requests in full feature phase. Checks: no panic; a failed step appends no text; every text
//! the target writes parses; the target never transits unasked or backwards; what a login
//! negotiates is inside the RFC's ranges (FirstBurstLength <= MaxBurstLength, one connection,
//! ERL 0, a Normal session's target exists).
//! Run: RUSTC_BOOTSTRAP=1 cargo fuzz run -O iscsi_parse -- -dict=fuzz/iscsi.dict
#![no_main]

use bootfarm::iscsi::chap::{self, Chap};
use bootfarm::iscsi::login::{self, names, Login, LoginConfig, LoginRequest, Offer, SessionType, Step};
use bootfarm::iscsi::text;
use bootfarm::iscsi::wire::{self, Bhs, Digests, Request};
use libfuzzer_sys::fuzz_target;

const TARGET: &str = "iqn.2026-12.org.bootfarm:win10";
/// PDUs of one input walked at most (a login needs a handful).
const PDUS_MAX: usize = 64;

fn exists(t: &str) -> bool {
    t == TARGET
}

fn session_exists(tsih: u16) -> bool {
    tsih % 2 == 0
}

/// The checks that hold after every login step.
fn check_step(cfg: &LoginConfig, req: &LoginRequest, step: &Step, out: &[u8], before: usize) {
    match step {
        Step::Fail { class, .. } => {
            assert_eq!(out.len(), before, "a failure appends no text");
            assert!(*class == 2 || *class == 3);
        }
        Step::Answer { transit, csg, nsg } => {
            assert_eq!(*csg, req.csg);
            if *transit {
                assert!(req.transit, "the target transits only when the initiator asks");
                assert!(*nsg > *csg && *nsg <= req.nsg && *nsg != 2);
            }
        }
        Step::Done { negotiated: n, transit, csg, nsg } => {
            assert!(*transit && req.transit && *nsg == login::STAGE_FULL_FEATURE && *csg == req.csg);
            assert!(n.first_burst_length <= n.max_burst_length);
            assert!((512..1 << 24).contains(&n.max_send_data_segment_length));
            assert!((512..1 << 24).contains(&n.max_recv_data_segment_length));
            assert!(n.max_burst_length <= cfg.offer.max_burst_length.max(512));
            assert_eq!((n.max_connections, n.error_recovery_level), (1, 0));
            assert!(names::valid(&n.initiator_name));
            match n.session_type {
                SessionType::Discovery => assert!(n.target_name.is_none()),
                SessionType::Normal => assert!(n.target_name.as_deref().is_some_and(exists)),
            }
        }
    }
    // Whatever the target wrote is a well-formed text (answers echo only keys that parsed).
    text::parse(&out[before..], usize::MAX).expect("the target's text parses");
}

fn values(t: &[u8]) {
    if let Ok(pairs) = text::parse(t, text::PAIRS_MAX) {
        for (_, v) in pairs {
            let _ = chap::decode_binary(v, chap::CHALLENGE_LEN_MAX);
            let _ = text::number(v, u64::MAX);
            if names::valid(v) {
                assert!(names::valid(&names::normalize(v)));
            }
        }
    }
}

/// The input as a stream of PDUs: logins fed to one Login, Text Requests answered.
fn stream(data: &[u8], cfg: &LoginConfig, challenge: &[u8; 16]) {
    let mut login = Login::new();
    let mut out = Vec::new();
    let mut off = 0;
    for _ in 0..PDUS_MAX {
        let Ok(bhs) = Bhs::new(&data[off..]) else { break };
        for (header, data_digest) in [(false, false), (true, false), (false, true), (true, true)] {
            let l = wire::layout(&bhs, Digests { header, data: data_digest });
            assert!(l.data_off >= wire::BHS_LEN && l.data_off + l.data_len <= l.total && l.total % 4 == 0);
        }
        let layout = wire::layout(&bhs, Digests { header: false, data: false });
        let end = data.len().min(off + layout.total);
        let ahs = &data[(off + wire::BHS_LEN).min(end)..(off + wire::BHS_LEN + layout.ahs_len).min(end)];
        for _ in wire::ahs_entries(ahs).take(64) {}
        let lun = wire::lun_id(bhs.lun());
        if lun != u64::MAX {
            assert_eq!(wire::lun_id(wire::lun_field(lun)), lun);
        }
        let seg = &data[(off + layout.data_off).min(end)..(off + layout.data_off + layout.data_len).min(end)];
        match Request::parse(&bhs) {
            Ok(Request::Login(l)) => {
                let req = LoginRequest::from(&l);
                let before = out.len();
                let step = login.on_request(cfg, &req, seg, challenge, &mut out);
                check_step(cfg, &req, &step, &out, before);
            }
            Ok(Request::Text(t)) => {
                let portals = [(TARGET, "10.0.0.1:3260,1"), ("iqn.2026-12.org.bootfarm:debian", "[fd00::1]:3260,1")];
                let session = if t.lun & 1 == 0 { SessionType::Discovery } else { SessionType::Normal };
                let mut o = Vec::new();
                if login::text_request(seg, &mut portals.iter().copied(), session, &mut o).is_ok() {
                    text::parse(&o, usize::MAX).expect("a text answer parses");
                }
            }
            Ok(r) => {
                let _ = r.cmdsn();
            }
            Err(_) => {}
        }
        values(seg);
        if end == data.len() {
            break;
        }
        off = end;
    }
}

fuzz_target!(|data: &[u8]| {
    let mut challenge = [0u8; 16];
    for (c, d) in challenge.iter_mut().zip(data) {
        *c = *d;
    }
    let creds = Chap::new("pc1", b"initiator-secret", Some(("bootfarm", b"target-secret!"))).expect("valid credentials");
    let small = Offer { max_burst_length: 65536, first_burst_length: 4096, immediate_data: false, header_digest: true, ..Offer::default() };
    let cfgs = [
        LoginConfig { target_exists: &exists, session_exists: &session_exists, chap: None, offer: Offer::default(), portal_group_tag: 1 },
        LoginConfig { target_exists: &exists, session_exists: &session_exists, chap: Some(&creds), offer: small, portal_group_tag: 2 },
    ];
    let cfg = &cfgs[data.first().map_or(0, |b| (b & 1) as usize)];
    stream(data, cfg, &challenge);
    values(data);
    // The whole input as the text of a first request, so the key handling is reached at once;
    // the stage and the configuration come from the first bytes (one login per input keeps the
    // executions fast enough for 10M runs on a shared 2-core machine).
    let (csg, nsg) = [(0, 1), (0, 3), (1, 3)][data.get(1).map_or(0, |b| (b % 3) as usize)];
    let cfg = &cfgs[data.get(2).map_or(0, |b| (b & 1) as usize)];
    let req = LoginRequest { transit: true, csg, nsg, ..LoginRequest::default() };
    let mut out = Vec::new();
    let mut login = Login::new();
    let step = login.on_request(cfg, &req, data, &challenge, &mut out);
    check_step(cfg, &req, &step, &out, 0);
    // CHAP takes at least three requests (method, algorithm, response): never one.
    assert!(cfg.chap.is_none() || !matches!(step, Step::Done { .. }), "CHAP skipped");
    // And once more with an empty follow-up, as an initiator continuing the login would.
    if let Step::Answer { transit, nsg, .. } = step {
        let next = LoginRequest { transit: true, csg: if transit { nsg } else { csg }, nsg: 3, ..LoginRequest::default() };
        let before = out.len();
        let step = login.on_request(cfg, &next, b"", &challenge, &mut out);
        check_step(cfg, &next, &step, &out, before);
        assert!(cfg.chap.is_none() || !matches!(step, Step::Done { .. }), "CHAP skipped");
    }
});
