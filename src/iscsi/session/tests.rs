//! The session driven as the engine drives it, over a real raw image in a temp dir and a real
//! target registry: PDU streams split anywhere give the same answers, reads match the disk,
//! writes (immediate, unsolicited, solicited) read back, and hostile input ends in a Reject, a
//! dropped command or a clean close, never a panic or a stall.

use super::*;
use crate::config::{self, Overrides};
use crate::iscsi::wire::{op, FLAG_FINAL, FLAG_IMMEDIATE, FLAG_READ, FLAG_WRITE};
use crate::metrics::WorkerCounters;
use crate::rng::XorShift;
use std::path::PathBuf;
mod reserve;
mod tmf;

const SIZE: usize = 1 << 20;
const TARGET: &str = "iqn.2026-12.org.bootfarm:disk";
const INITIATOR: &str = "iqn.1994-05.com.redhat:test-a";

struct Fixture {
    dir: PathBuf,
    snap: Arc<Snapshot>,
    content: Vec<u8>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A server over a raw disk of SIZE bytes of a pattern, `iscsi` lines in its [iscsi], `extra`
/// appended (more vdisks).
fn fixture(tag: &str, iscsi: &str, extra: &str) -> Fixture {
    fixture_nbd(tag, "", iscsi, extra)
}

/// As `fixture`, with `nbd` lines in [nbd] (the write cache's settings).
fn fixture_nbd(tag: &str, nbd: &str, iscsi: &str, extra: &str) -> Fixture {
    let dir = std::env::temp_dir().join(format!("bootfarm-iscsi-session-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("boot")).unwrap();
    std::fs::create_dir_all(dir.join("cache")).unwrap();
    let content: Vec<u8> = (0..SIZE as u64).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8 | 1).collect();
    std::fs::write(dir.join("disk.raw"), &content).unwrap();
    if extra.contains("priv.vhdx") {
        crate::image::write::create_vhdx(&dir.join("priv.vhdx"), 1 << 20, 1 << 20, 512, None).unwrap();
    }
    let text = format!(
        "[tftp]\nroot = \"boot\"\n[nbd]\ncache_dir = \"cache\"\n{nbd}\n[iscsi]\n{iscsi}\n[[vdisk]]\nname = \"disk\"\npath = \"disk.raw\"\n{extra}"
    );
    let snap = config::from_text(&dir.join("bootfarm.toml"), &text, &Overrides::default(), 1, None).unwrap();
    Fixture { dir, snap: Arc::new(snap), content }
}

struct TestEnv {
    snap: Arc<Snapshot>,
    registry: Registry,
    reservations: crate::iscsi::scsi::reserve::Table,
    counters: WorkerCounters,
}

impl ConnScope for TestEnv {}

impl Env for TestEnv {
    fn snapshot(&self) -> &Snapshot {
        &self.snap
    }
    fn registry(&self) -> &Registry {
        &self.registry
    }
    fn reservations(&self) -> &crate::iscsi::scsi::reserve::Table {
        &self.reservations
    }
    fn count(&self, c: Counter, n: u64) {
        self.counters.add(c, n);
    }
    fn token_key(&self) -> [u8; 16] {
        *b"0123456789abcdef"
    }
    fn now_unix(&self) -> u64 {
        1_800_000_000
    }
    fn random(&self) -> [u8; 16] {
        [7; 16]
    }
    fn portals(&self) -> Vec<SocketAddr> {
        vec!["192.0.2.1:3260".parse().unwrap()]
    }
}

fn env(f: &Fixture) -> TestEnv {
    TestEnv { snap: f.snap.clone(), registry: Registry::default(), reservations: Default::default(), counters: WorkerCounters::default() }
}

fn peer() -> SocketAddr {
    "192.0.2.7:40000".parse().unwrap()
}

// --- what an initiator sends -------------------------------------------------------------

fn pdu(opcode: u8, flags: u8, fields: &[(usize, u32)], data: &[u8]) -> Vec<u8> {
    let mut h = vec![0u8; BHS_LEN];
    h[0] = opcode;
    h[1] = flags;
    let n = data.len() as u32;
    h[5..8].copy_from_slice(&n.to_be_bytes()[1..]);
    for &(at, v) in fields {
        h[at..at + 4].copy_from_slice(&v.to_be_bytes());
    }
    h.extend_from_slice(data);
    h.resize(BHS_LEN + wire::pad4(data.len()), 0);
    h
}

fn text(keys: &[&str]) -> Vec<u8> {
    keys.iter().flat_map(|k| k.bytes().chain(std::iter::once(0))).collect()
}

/// The two Login Requests libiscsi sends (security, then operational), `ops` as its keys.
fn login_as(initiator: &str, target: &str, ops: &[&str]) -> Vec<u8> {
    let sec = text(&[&format!("InitiatorName={initiator}"), &format!("TargetName={target}"), "SessionType=Normal", "AuthMethod=None"]);
    let mut v = pdu(op::LOGIN | FLAG_IMMEDIATE, 0x80 | 1, &[(16, 1), (24, 2)], &sec);
    v.extend(pdu(op::LOGIN | FLAG_IMMEDIATE, 0x80 | (1 << 2) | 3, &[(16, 2), (24, 2)], &text(ops)));
    v
}

const OPS: &[&str] = &[
    "HeaderDigest=None",
    "DataDigest=None",
    "InitialR2T=No",
    "ImmediateData=Yes",
    "MaxBurstLength=16384",
    "FirstBurstLength=8192",
    "MaxRecvDataSegmentLength=4096",
    "MaxOutstandingR2T=1",
];

fn login() -> Vec<u8> {
    login_as(INITIATOR, TARGET, OPS)
}

fn cmd(itt: u32, cmdsn: u32, flags: u8, edtl: u32, cdb: &[u8], data: &[u8]) -> Vec<u8> {
    let mut v = pdu(op::SCSI_COMMAND, flags, &[(16, itt), (20, edtl), (24, cmdsn)], data);
    v[32..32 + cdb.len()].copy_from_slice(cdb);
    v
}

fn rw10(opcode: u8, lba: u32, blocks: u16) -> Vec<u8> {
    let mut c = vec![opcode, 0];
    c.extend_from_slice(&lba.to_be_bytes());
    c.push(0);
    c.extend_from_slice(&blocks.to_be_bytes());
    c.push(0);
    c
}

fn read(itt: u32, cmdsn: u32, lba: u32, blocks: u16) -> Vec<u8> {
    cmd(itt, cmdsn, FLAG_FINAL | FLAG_READ, blocks as u32 * 512, &rw10(0x28, lba, blocks), &[])
}

/// A WRITE 10 with `imm` immediate bytes of `data`; `f` clear announces unsolicited Data-Out.
fn write(itt: u32, cmdsn: u32, lba: u32, data: &[u8], imm: usize, f: bool) -> Vec<u8> {
    let fl = FLAG_WRITE | if f { FLAG_FINAL } else { 0 };
    cmd(itt, cmdsn, fl, data.len() as u32, &rw10(0x2A, lba, (data.len() / 512) as u16), &data[..imm])
}

fn data_out(itt: u32, ttt: u32, offset: u32, data: &[u8], f: bool) -> Vec<u8> {
    pdu(op::DATA_OUT, if f { FLAG_FINAL } else { 0 }, &[(16, itt), (20, ttt), (40, offset)], data)
}

// --- the driver --------------------------------------------------------------------------

/// Feeds `stream` cut at `cuts` into a fresh session as the driver does (bytes not taken are
/// offered again; each batch is released once "sent"). Returns what went out and whether the
/// session ended by itself.
fn drive(env: &mut TestEnv, stream: &[u8], cuts: &[usize], now: Instant) -> (Vec<u8>, bool) {
    let mut s = Session::new(env, peer(), now);
    let mut out = Vec::new();
    let mut rx: Vec<u8> = Vec::new();
    let mut from = 0;
    let mut ended = false;
    for &cut in cuts.iter().chain(std::iter::once(&stream.len())) {
        rx.extend_from_slice(&stream[from..cut]);
        from = cut;
        pump(&mut s, env, &mut rx, &mut out, now);
        if s.is_done() {
            ended = true;
            break;
        }
    }
    if !s.is_done() {
        s.on_eof(env, now);
        pump(&mut s, env, &mut rx, &mut out, now);
    }
    assert!(s.is_done());
    s.on_closed(env, false, now);
    (out, ended)
}

fn pump(s: &mut Session<TestEnv>, env: &mut TestEnv, rx: &mut Vec<u8>, out: &mut Vec<u8>, now: Instant) {
    for _ in 0..1_000_000 {
        let taken = s.on_input(env, rx, now);
        rx.drain(..taken);
        match s.poll_transmit(env, now) {
            Some(b) => {
                assert!(!b.is_empty() && b.pieces.len() <= Batch::PIECES_MAX);
                // Safety: held until on_released below.
                out.extend_from_slice(&unsafe { b.to_vec() });
                s.on_released(env, now);
            }
            None if taken == 0 => return,
            None => {}
        }
    }
    panic!("the session keeps asking to be polled");
}

/// A target PDU: its header and data.
#[derive(Debug, Clone)]
struct Pdu {
    h: [u8; BHS_LEN],
    data: Vec<u8>,
}

impl Pdu {
    fn opcode(&self) -> u8 {
        self.h[0] & 0x3F
    }
    fn u32(&self, at: usize) -> u32 {
        u32::from_be_bytes(self.h[at..at + 4].try_into().unwrap())
    }
}

fn pdus(out: &[u8]) -> Vec<Pdu> {
    let mut v = Vec::new();
    let mut at = 0;
    while at < out.len() {
        let b = Bhs::new(&out[at..]).unwrap();
        let l = wire::layout(&b, Digests::default());
        v.push(Pdu { h: *b.bytes(), data: out[at + l.data_off..at + l.data_off + l.data_len].to_vec() });
        at += l.total;
    }
    assert_eq!(at, out.len(), "whole PDUs only");
    v
}

/// The PDUs after the two login responses (which must have succeeded).
fn after_login(out: &[u8]) -> Vec<Pdu> {
    let p = pdus(out);
    assert!(p.len() >= 2 && p[..2].iter().all(|r| r.opcode() == op::LOGIN_RESPONSE && r.h[36] == 0), "{:?}", &p[..p.len().min(2)]);
    assert_eq!(p[1].h[1] & 0x83, 0x83, "the second response transits to full feature phase");
    p[2..].to_vec()
}

/// Data-In bytes and the status of command `itt`, from the PDUs.
fn result(p: &[Pdu], itt: u32) -> (Vec<u8>, Option<u8>) {
    let mut data = Vec::new();
    let mut st = None;
    for r in p.iter().filter(|r| r.u32(16) == itt) {
        match r.opcode() {
            op::DATA_IN => {
                assert_eq!(r.u32(40) as usize, data.len(), "Data-In in order");
                data.extend_from_slice(&r.data);
                if r.h[1] & wire::FLAG_STATUS != 0 {
                    st = Some(r.h[3]);
                }
            }
            op::SCSI_RESPONSE => st = Some(r.h[3]),
            _ => {}
        }
    }
    (data, st)
}

// --- tests -------------------------------------------------------------------------------

#[test]
fn login_read_and_data_in_cut_at_the_initiators_segment_and_burst() {
    let f = fixture("read", "", "");
    let mut e = env(&f);
    let mut s = login();
    s.extend(read(10, 2, 3, 64)); // 32 KiB: 8 PDUs of 4096, F at each 16 KiB burst
    let (out, ended) = drive(&mut e, &s, &[], Instant::now());
    assert!(!ended);
    let p = after_login(&out);
    let (data, st) = result(&p, 10);
    assert_eq!(st, Some(0));
    assert_eq!(data, f.content[3 * 512..67 * 512]);
    let din: Vec<&Pdu> = p.iter().filter(|r| r.opcode() == op::DATA_IN).collect();
    assert_eq!(din.len(), 8);
    assert!(din.iter().all(|r| r.data.len() == 4096));
    let finals: Vec<usize> = din.iter().enumerate().filter(|(_, r)| r.h[1] & FLAG_FINAL != 0).map(|(i, _)| i).collect();
    assert_eq!(finals, vec![3, 7], "F ends each MaxBurstLength sequence");
    assert_eq!(din.iter().map(|r| r.u32(36)).collect::<Vec<_>>(), (0..8).collect::<Vec<_>>(), "DataSN counts on");
    assert!(din[..7].iter().all(|r| r.h[1] & wire::FLAG_STATUS == 0), "status only in the last");
    assert_eq!(e.counters.get(Counter::IscsiLoginsNormal), 1);
    assert_eq!(e.counters.get(Counter::IscsiReadBytes), 32768);
}

/// A seeded stream of reads and writes of every kind (immediate data, unsolicited Data-Out,
/// R2T-solicited Data-Out in several bursts) with the answers an initiator expects, the R2Ts'
/// tags predicted (1, 2, ... in order of issue: nothing else takes a tag here).
fn mixed_stream(f: &Fixture, seed: u64, n: u32) -> (Vec<u8>, Vec<(u32, Vec<u8>)>) {
    let mut rng = XorShift::new(seed);
    let mut s = login();
    let mut model = f.content.clone();
    let mut reads = Vec::new();
    let mut ttt = 1u32;
    let mut read_blocks = vec![false; SIZE / 512];
    for (k, itt) in (100..100 + n).enumerate() {
        let cmdsn = 2 + k as u32;
        let lba = rng.below(1800) as u32;
        let blocks = 1 + rng.below(80) as u16;
        let at = lba as usize * 512;
        // Data-In points at cache pages: a later write over blocks an answer in the same batch
        // points at would change it (SCSI leaves overlapping simple tasks unordered). As a
        // block device's client, the stream never writes over blocks it has read.
        let span = lba as usize..lba as usize + blocks as usize;
        if rng.chance(0.5) || span.clone().any(|b| read_blocks[b]) {
            s.extend(read(itt, cmdsn, lba, blocks));
            span.for_each(|b| read_blocks[b] = true);
            reads.push((itt, model[at..at + blocks as usize * 512].to_vec()));
            continue;
        }
        let data: Vec<u8> = (0..blocks as usize * 512).map(|_| rng.next() as u8).collect();
        let imm = (rng.below(data.len() as u64 + 1) as usize).min(8192) & !511;
        let unsol = (8192 - imm).min(data.len() - imm) & !511;
        let with_unsol = unsol > 0 && rng.chance(0.5);
        s.extend(write(itt, cmdsn, lba, &data, imm, !with_unsol));
        let mut off = imm;
        if with_unsol {
            // Two PDUs, the second with F.
            let half = (unsol / 2) & !511;
            if half > 0 {
                s.extend(data_out(itt, TAG_NONE, off as u32, &data[off..off + half], false));
            }
            s.extend(data_out(itt, TAG_NONE, (off + half) as u32, &data[off + half..off + unsol], true));
            off += unsol;
        }
        while off < data.len() {
            let burst = (data.len() - off).min(16384);
            s.extend(data_out(itt, ttt, off as u32, &data[off..off + burst], true));
            ttt += 1;
            off += burst;
        }
        model[at..at + data.len()].copy_from_slice(&data);
        reads.push((itt, Vec::new()));
    }
    (s, reads)
}

fn check_mixed(out: &[u8], reads: &[(u32, Vec<u8>)]) {
    let p = after_login(out);
    for (itt, want) in reads {
        let (data, st) = result(&p, *itt);
        assert_eq!(st, Some(0), "command {itt}");
        assert!(data == *want, "command {itt}: {} bytes, expected {}", data.len(), want.len());
    }
}

#[test]
fn a_pdu_stream_split_anywhere_gives_identical_answers() {
    let f = fixture("split", "", "");
    let (s, reads) = mixed_stream(&f, 0x15c5, 60);
    let now = Instant::now();
    let (whole, _) = drive(&mut env(&f), &s, &[], now);
    check_mixed(&whole, &reads);
    let p = after_login(&whole);
    assert!(p.iter().any(|r| r.opcode() == op::R2T), "the stream needs R2Ts");
    let bytewise: Vec<usize> = (1..s.len()).collect();
    assert_eq!(drive(&mut env(&f), &s, &bytewise, now).0, whole, "byte by byte");
    let mut rng = XorShift::new(7);
    for _ in 0..20 {
        let mut cuts: Vec<usize> = (0..1 + rng.below(40)).map(|_| rng.below(s.len() as u64) as usize).collect();
        cuts.sort_unstable();
        assert_eq!(drive(&mut env(&f), &s, &cuts, now).0, whole, "cuts {cuts:?}");
    }
}

#[test]
fn writes_stay_in_the_targets_cache_and_reach_only_that_initiator() {
    let f = fixture("isolate", "", "");
    let mut e = env(&f);
    let now = Instant::now();
    let data = vec![0xAB; 1024];
    let mut s = login();
    s.extend(write(5, 2, 8, &data, 1024, true));
    let (out, _) = drive(&mut e, &s, &[], now);
    assert_eq!(result(&after_login(&out), 5).1, Some(0));
    // The same initiator again (within the keep time): its write is there.
    let mut s = login();
    s.extend(read(6, 2, 8, 2));
    let (out, _) = drive(&mut e, &s, &[], now);
    assert_eq!(result(&after_login(&out), 6).0, data);
    // Another initiator name: the image as it is; and the image file is untouched.
    let mut s = login_as("iqn.1994-05.com.redhat:test-b", TARGET, OPS);
    s.extend(read(7, 2, 8, 2));
    let (out, _) = drive(&mut e, &s, &[], now);
    assert_eq!(result(&after_login(&out), 7).0, f.content[8 * 512..10 * 512]);
    assert_eq!(std::fs::read(f.dir.join("disk.raw")).unwrap(), f.content);
    assert_eq!(e.counters.get(Counter::IscsiWrittenBytes), 1024);
}

#[test]
fn commands_outside_the_cmdsn_window_are_dropped_and_counted() {
    let f = fixture("window", "commands_in_flight_max = 4", "");
    let mut e = env(&f);
    let mut s = login();
    s.extend(read(1, 2, 0, 1)); // expected
    s.extend(read(2, 2, 0, 1)); // a repeat: below the window
    s.extend(read(3, 9, 0, 1)); // beyond MaxCmdSN
    s.extend(read(4, 3, 0, 1)); // expected again
    let (out, _) = drive(&mut e, &s, &[], Instant::now());
    let p = after_login(&out);
    assert_eq!(result(&p, 1).1, Some(0));
    assert_eq!(result(&p, 2).1, None);
    assert_eq!(result(&p, 3).1, None);
    assert_eq!(result(&p, 4).1, Some(0));
    assert_eq!(e.counters.get(Counter::IscsiWindowDrops), 2);
    // MaxCmdSN = ExpCmdSN + 3 in the login's last answer (window 4).
    let lr = &pdus(&out)[1];
    assert_eq!(lr.u32(32).wrapping_sub(lr.u32(28)), 3);
}

#[test]
fn data_out_beyond_its_burst_or_first_burst_is_a_protocol_error() {
    let f = fixture("burst", "", "");
    for (name, tail) in [
        // The R2T asks 16384 at 0 (InitialR2T=No but F set: no unsolicited data): 16896 sent.
        ("beyond R2T", data_out(9, 1, 0, &vec![1; 16896], true)),
        // Unsolicited Data-Out past FirstBurstLength (8192).
        ("beyond first burst", data_out(9, TAG_NONE, 0, &vec![1; 8704], true)),
    ] {
        let mut e = env(&f);
        let mut s = login();
        let f_bit = name == "beyond R2T";
        s.extend(write(9, 2, 0, &vec![1; 32768], 0, f_bit));
        s.extend(tail);
        s.extend(read(10, 3, 0, 1));
        let (out, ended) = drive(&mut e, &s, &[], Instant::now());
        assert!(ended, "{name}: the connection ends");
        let p = after_login(&out);
        let rej = p.iter().find(|r| r.opcode() == op::REJECT).unwrap_or_else(|| panic!("{name}: a Reject"));
        assert_eq!(rej.h[2], reject::PROTOCOL_ERROR);
        assert_eq!(rej.data[0], op::DATA_OUT, "the Reject carries the bad header");
        assert_eq!(result(&p, 10).1, None, "{name}: nothing after the error");
        assert_eq!(e.counters.get(Counter::IscsiProtocolErrors), 1);
    }
}

#[test]
fn unknown_tags_and_opcodes_get_a_reject_and_the_session_goes_on() {
    let f = fixture("reject", "", "");
    let mut e = env(&f);
    let mut s = login();
    s.extend(data_out(77, 5, 0, &[0; 512], true)); // no such task
    s.extend(pdu(0x1c, 0x80, &[(16, 3)], &[1, 2, 3, 4, 5])); // an unassigned opcode, with data
    s.extend(pdu(op::SNACK, 0x80, &[(16, 4)], &[])); // ERL 0: no SNACK
    s.extend(read(11, 2, 1, 1));
    let (out, ended) = drive(&mut e, &s, &[], Instant::now());
    assert!(!ended);
    let p = after_login(&out);
    let reasons: Vec<u8> = p.iter().filter(|r| r.opcode() == op::REJECT).map(|r| r.h[2]).collect();
    assert_eq!(reasons, vec![reject::INVALID_PDU_FIELD, reject::COMMAND_NOT_SUPPORTED, reject::SNACK]);
    assert_eq!(result(&p, 11), (f.content[512..1024].to_vec(), Some(0)));
}

#[test]
fn an_oversized_data_segment_closes_before_it_is_read() {
    let f = fixture("oversized", "max_recv_data_segment_length = 65536", "");
    let mut e = env(&f);
    let mut s = login();
    // Only the header of a PDU announcing 65537 bytes: refused at once, not waited for.
    let big = data_out(1, TAG_NONE, 0, &vec![0; 65537], true);
    s.extend_from_slice(&big[..BHS_LEN]);
    let (out, ended) = drive(&mut e, &s, &[], Instant::now());
    assert!(ended);
    let p = after_login(&out);
    assert_eq!(p.last().unwrap().opcode(), op::REJECT);
    // At the limit: taken (here a Data-Out for no task: Reject, and on).
    let mut s = login();
    s.extend(data_out(1, 9, 0, &vec![0; 65536], true));
    let (_, ended) = drive(&mut env(&f), &s, &[], Instant::now());
    assert!(!ended);
}

#[test]
fn login_failures_answer_with_the_rfc_status() {
    let f = fixture("loginfail", "", "");
    let mut e = env(&f);
    let (out, ended) = drive(&mut e, &login_as(INITIATOR, "iqn.2026-12.org.bootfarm:nope", OPS), &[], Instant::now());
    assert!(ended);
    let p = pdus(&out);
    assert_eq!((p[0].h[36], p[0].h[37]), (2, 3), "target not found");
    assert_eq!(e.counters.get(Counter::IscsiLoginFailedNotFound), 1);
    // A SCSI command before the login ends: the connection closes.
    let (out, ended) = drive(&mut e, &read(1, 0, 0, 1), &[], Instant::now());
    assert!(ended && out.is_empty());
}

#[test]
fn a_login_that_does_not_finish_in_time_is_cut_off() {
    let f = fixture("logintimeout", "login_timeout_ms = 500", "");
    let mut e = env(&f);
    let t0 = Instant::now();
    let mut s = Session::new(&e, peer(), t0);
    let first = &login()[..60]; // part of the first PDU
    assert_eq!(s.on_input(&mut e, first, t0), 0);
    let due = s.poll_timeout().unwrap();
    assert_eq!(due, t0 + Duration::from_millis(500));
    s.on_timeout(&mut e, due - Duration::from_millis(1));
    assert!(!s.is_done());
    s.on_timeout(&mut e, due);
    assert!(s.is_done());
    assert_eq!(e.counters.get(Counter::IscsiTimeoutLogin), 1);
}

#[test]
fn a_write_waiting_for_data_is_aborted_and_its_late_data_dropped() {
    let f = fixture("abort", "", "");
    let mut e = env(&f);
    let mut s = login();
    s.extend(write(20, 2, 0, &vec![9; 32768], 0, true)); // waits for R2T data
                                                         // ABORT TASK (immediate) of ITT 20, RefCmdSN 2.
    s.extend(pdu(op::TASK_MGMT | FLAG_IMMEDIATE, 0x80 | wire::tmf::ABORT_TASK, &[(16, 21), (20, 20), (24, 3), (32, 2)], &[]));
    s.extend(data_out(20, 1, 0, &vec![9; 16384], true)); // late: dropped, no Reject
    s.extend(read(22, 3, 0, 1));
    let (out, ended) = drive(&mut e, &s, &[], Instant::now());
    assert!(!ended);
    let p = after_login(&out);
    let t = p.iter().find(|r| r.opcode() == op::TASK_MGMT_RESPONSE).unwrap();
    assert_eq!((t.u32(16), t.h[2]), (21, wire::tmf::COMPLETE));
    assert!(p.iter().all(|r| r.opcode() != op::REJECT));
    assert_eq!(result(&p, 20).1, None, "an aborted task gets no status");
    assert_eq!(result(&p, 22), (f.content[..512].to_vec(), Some(0)), "the image, not the aborted write");
    // Nothing stays reserved in the target's cache.
    assert_eq!(e.registry.total.load(std::sync::atomic::Ordering::Relaxed), 0);
}

#[test]
fn aborting_a_write_that_is_already_done_answers_task_does_not_exist() {
    // libiscsi's iSCSITMF.AbortTaskSimpleAsync: the WRITE's data all came immediate, so it is
    // done (status GOOD sent) when the ABORT TASK for it arrives. Its RefCmdSN is now below
    // ExpCmdSN, outside the CmdSN window: RFC 7143 11.5.1 c, "Task does not exist".
    let f = fixture("abortdone", "", "");
    let mut e = env(&f);
    let data = vec![0x5A; 1024];
    let mut s = login();
    s.extend(write(40, 2, 0, &data, 1024, true));
    s.extend(pdu(op::TASK_MGMT | FLAG_IMMEDIATE, 0x80 | wire::tmf::ABORT_TASK, &[(16, 41), (20, 40), (24, 3), (32, 2)], &[]));
    s.extend(read(42, 3, 0, 2));
    let (out, ended) = drive(&mut e, &s, &[], Instant::now());
    assert!(!ended);
    let p = after_login(&out);
    assert_eq!(result(&p, 40).1, Some(0), "the write was done: GOOD");
    let t = p.iter().find(|r| r.opcode() == op::TASK_MGMT_RESPONSE).unwrap();
    assert_eq!((t.u32(16), t.h[2]), (41, wire::tmf::NO_TASK));
    assert_eq!(result(&p, 42), (data, Some(0)), "the write stays: it was not aborted");
}

#[test]
fn a_lun_reset_leaves_a_unit_attention_for_the_next_command() {
    let f = fixture("reset", "", "");
    let mut e = env(&f);
    let mut s = login();
    s.extend(pdu(op::TASK_MGMT | FLAG_IMMEDIATE, 0x80 | wire::tmf::LUN_RESET, &[(16, 30), (20, TAG_NONE), (24, 2)], &[]));
    s.extend(cmd(31, 2, FLAG_FINAL, 0, &[0; 6], &[])); // TEST UNIT READY: the UA
    s.extend(cmd(32, 3, FLAG_FINAL, 0, &[0; 6], &[])); // and then GOOD
    let (out, _) = drive(&mut e, &s, &[], Instant::now());
    let p = after_login(&out);
    let r = p.iter().find(|r| r.u32(16) == 31).unwrap();
    assert_eq!(r.h[3], wire::status::CHECK_CONDITION);
    assert_eq!((r.data[2 + 2] & 0x0F, r.data[2 + 12], r.data[2 + 13]), (6, 0x29, 0x03), "UNIT ATTENTION 29h/03h");
    assert_eq!(result(&p, 32).1, Some(0));
}

#[test]
fn nop_out_is_answered_and_an_idle_connection_is_pinged_then_closed() {
    let f = fixture("nop", "nop_in_interval_ms = 1000\nnop_in_timeout_ms = 2000", "");
    let mut e = env(&f);
    let t0 = Instant::now();
    let mut s = Session::new(&e, peer(), t0);
    let mut stream = login();
    stream.extend(pdu(op::NOP_OUT | FLAG_IMMEDIATE, 0x80, &[(16, 40), (20, TAG_NONE), (24, 2)], b"ping"));
    let (mut rx, mut out) = (stream, Vec::new());
    pump(&mut s, &mut e, &mut rx, &mut out, t0);
    let p = after_login(&out);
    assert_eq!((p[0].opcode(), p[0].u32(16), p[0].data.as_slice()), (op::NOP_IN, 40, &b"ping"[..]));
    // Idle for the interval: our ping (ITT reserved, a TTT to answer with).
    let due = s.poll_timeout().unwrap();
    assert_eq!(due, t0 + Duration::from_secs(1));
    s.on_timeout(&mut e, due);
    let mut out = Vec::new();
    pump(&mut s, &mut e, &mut rx, &mut out, due);
    let ping = &pdus(&out)[0];
    assert_eq!((ping.opcode(), ping.u32(16)), (op::NOP_IN, TAG_NONE));
    let ttt = ping.u32(20);
    assert_ne!(ttt, TAG_NONE);
    // Answered: no close. Not answered next time: closed after the timeout.
    let mut rx = pdu(op::NOP_OUT | FLAG_IMMEDIATE, 0x80, &[(16, TAG_NONE), (20, ttt), (24, 2)], &[]);
    pump(&mut s, &mut e, &mut rx, &mut Vec::new(), due);
    let due = s.poll_timeout().unwrap();
    s.on_timeout(&mut e, due);
    pump(&mut s, &mut e, &mut Vec::new(), &mut Vec::new(), due);
    let due = s.poll_timeout().unwrap();
    s.on_timeout(&mut e, due);
    assert!(s.is_done());
    assert_eq!(e.counters.get(Counter::IscsiTimeoutNop), 1);
}

#[test]
fn an_initiator_that_stops_reading_gets_no_more_input_taken() {
    let f = fixture("held", "", "");
    let mut e = env(&f);
    let now = Instant::now();
    let mut s = Session::new(&e, peer(), now);
    let l = login();
    let n = s.on_input(&mut e, &l, now);
    assert_eq!(n, l.len());
    assert!(s.poll_transmit(&mut e, now).is_some());
    // The batch is held (not released): nothing more is taken, TCP pushes back.
    assert!(!s.wants_input());
    assert_eq!(s.on_input(&mut e, &read(1, 2, 0, 1), now), 0);
    s.on_released(&mut e, now);
    assert!(s.wants_input());
    assert!(s.on_input(&mut e, &read(1, 2, 0, 1), now) > 0);
}

#[test]
fn a_private_vdisk_takes_one_writer() {
    let f = fixture("private", "", "[[vdisk]]\nname = \"priv\"\npath = \"priv.vhdx\"\nmode = \"private\"\n");
    let mut e = env(&f);
    let now = Instant::now();
    let mut first = Session::new(&e, peer(), now);
    let mut rx = login_as(INITIATOR, "iqn.2026-12.org.bootfarm:priv", OPS);
    let mut out = Vec::new();
    pump(&mut first, &mut e, &mut rx, &mut out, now);
    after_login(&out);
    // A second initiator while the first is connected: service unavailable (it retries).
    let (out, ended) = drive(&mut e, &login_as("iqn.1994-05.com.redhat:other", "iqn.2026-12.org.bootfarm:priv", OPS), &[], now);
    assert!(ended);
    let p = pdus(&out);
    let last = p.last().unwrap();
    assert_eq!((last.opcode(), last.h[36], last.h[37]), (op::LOGIN_RESPONSE, 3, 1));
    assert_eq!(e.counters.get(Counter::IscsiLoginFailedBusy), 1);
    first.on_closed(&mut e, false, now);
}

#[test]
fn discovery_lists_every_target_with_the_portal() {
    let f = fixture("discovery", "", "[[vdisk]]\nname = \"other\"\npath = \"disk.raw\"\n");
    let mut e = env(&f);
    let sec = text(&[&format!("InitiatorName={INITIATOR}"), "SessionType=Discovery", "AuthMethod=None"]);
    let mut s = pdu(op::LOGIN | FLAG_IMMEDIATE, 0x80 | 1, &[(16, 1), (24, 2)], &sec);
    s.extend(pdu(op::LOGIN | FLAG_IMMEDIATE, 0x80 | (1 << 2) | 3, &[(16, 2), (24, 2)], &text(&["MaxRecvDataSegmentLength=8192"])));
    s.extend(pdu(op::TEXT | FLAG_IMMEDIATE, 0x80, &[(16, 3), (20, TAG_NONE), (24, 2)], &text(&["SendTargets=All"])));
    s.extend(read(4, 2, 0, 1)); // no SCSI in a discovery session
    let (out, _) = drive(&mut e, &s, &[], Instant::now());
    let p = after_login(&out);
    assert_eq!(p[0].opcode(), op::TEXT_RESPONSE);
    let t = String::from_utf8(p[0].data.clone()).unwrap();
    assert_eq!(
        t,
        "TargetName=iqn.2026-12.org.bootfarm:disk\0TargetAddress=192.0.2.1:3260,1\0TargetName=iqn.2026-12.org.bootfarm:other\0TargetAddress=192.0.2.1:3260,1\0"
    );
    assert_eq!(p[1].opcode(), op::REJECT);
    assert_eq!(e.counters.get(Counter::IscsiLoginsDiscovery), 1);
}

#[test]
fn logout_answers_and_ends_the_connection() {
    let f = fixture("logout", "", "");
    let mut e = env(&f);
    let mut s = login();
    s.extend(pdu(op::LOGOUT | FLAG_IMMEDIATE, 0x80, &[(16, 50), (24, 2)], &[]));
    s.extend(read(51, 2, 0, 1));
    let (out, ended) = drive(&mut e, &s, &[], Instant::now());
    assert!(ended);
    let p = after_login(&out);
    assert_eq!(p.len(), 1);
    assert_eq!((p[0].opcode(), p[0].u32(16), p[0].h[2]), (op::LOGOUT_RESPONSE, 50, 0));
}

#[test]
fn header_and_data_digests_are_checked_and_sent() {
    let f = fixture("digest", "", "");
    let mut e = env(&f);
    let mut ops = OPS.to_vec();
    ops[0] = "HeaderDigest=CRC32C";
    ops[1] = "DataDigest=CRC32C";
    let mut s = login_as(INITIATOR, TARGET, &ops);
    // A READ 10 of one block with a header digest.
    let mut c = read(60, 2, 2, 1);
    let crc = wire::digest_bytes(wire::crc32c(&[&c[..BHS_LEN]]));
    c.extend_from_slice(&crc);
    s.extend(&c);
    let (out, ended) = drive(&mut e, &s, &[], Instant::now());
    assert!(!ended);
    // Login responses carry no digests; what follows does.
    let lr_len = {
        let b0 = Bhs::new(&out).unwrap();
        let l0 = wire::layout(&b0, Digests::default()).total;
        let b1 = Bhs::new(&out[l0..]).unwrap();
        l0 + wire::layout(&b1, Digests::default()).total
    };
    let rest = &out[lr_len..];
    let b = Bhs::new(rest).unwrap();
    assert_eq!(b.opcode(), op::DATA_IN);
    let l = wire::layout(&b, Digests { header: true, data: true });
    assert_eq!(&rest[BHS_LEN..BHS_LEN + 4], &wire::digest_bytes(wire::crc32c(&[&rest[..BHS_LEN]])));
    let data = &rest[l.data_off..l.data_off + 512];
    assert_eq!(data, &f.content[1024..1536]);
    assert_eq!(&rest[l.total - 4..l.total], &wire::digest_bytes(wire::crc32c(&[data])));
    // A bad header digest ends the connection.
    let mut s = login_as(INITIATOR, TARGET, &ops);
    let mut c = read(61, 2, 2, 1);
    c.extend_from_slice(&[0, 0, 0, 0]);
    s.extend(&c);
    let (_, ended) = drive(&mut env(&f), &s, &[], Instant::now());
    assert!(ended);
}

/// With no RAM tier every written block is in the overflow file: Data-In points into the
/// file's mappings without a data digest, and reads the blocks with pread under one (the
/// digest is computed over them on the server), with the same bytes either way.
#[test]
fn overflow_blocks_read_back_with_and_without_a_data_digest() {
    let f = fixture_nbd("overflow", "cache_ram_bytes_per_target = 0", "", "");
    let (s, reads) = mixed_stream(&f, 0x0f10, 60);
    let (out, _) = drive(&mut env(&f), &s, &[], Instant::now());
    check_mixed(&out, &reads);
    let mut ops = OPS.to_vec();
    ops[1] = "DataDigest=CRC32C";
    let mut s = login_as(INITIATOR, TARGET, &ops);
    let data: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
    let mut w = write(70, 2, 8, &data[..2048], 2048, true);
    w.extend_from_slice(&wire::digest_bytes(wire::crc32c(&[&data[..2048]])));
    s.extend(w);
    let mut w = write(71, 3, 12, &data[2048..], 2048, true);
    w.extend_from_slice(&wire::digest_bytes(wire::crc32c(&[&data[2048..]])));
    s.extend(w);
    s.extend(read(72, 4, 6, 12)); // image, then both writes, then image
    let (out, ended) = drive(&mut env(&f), &s, &[], Instant::now());
    assert!(!ended);
    let mut at = 0;
    for _ in 0..2 {
        at += wire::layout(&Bhs::new(&out[at..]).unwrap(), Digests::default()).total;
        // login responses
    }
    let (mut got, mut statuses) = (Vec::new(), 0);
    while at < out.len() {
        let b = Bhs::new(&out[at..]).unwrap();
        let l = wire::layout(&b, Digests { header: false, data: true });
        if b.opcode() == op::DATA_IN && b.itt() == 72 {
            let seg = &out[at + l.data_off..at + l.data_off + l.data_len];
            let crc_at = at + l.total - 4;
            assert_eq!(&out[crc_at..crc_at + 4], &wire::digest_bytes(wire::crc32c(&[seg])), "Data-In's digest");
            got.extend_from_slice(seg);
        }
        statuses += (b.opcode() == op::SCSI_RESPONSE || b.opcode() == op::DATA_IN && b.flags() & 1 != 0) as usize;
        at += l.total;
    }
    let mut want = f.content[6 * 512..18 * 512].to_vec();
    want[2 * 512..2 * 512 + data.len()].copy_from_slice(&data);
    assert!(got == want, "the READ over the overflow blocks, {} bytes", got.len());
    assert_eq!(statuses, 3, "two WRITEs and the READ answered");
}
