//! The session driven as the engine drives it, over a real raw image in a temp dir and a real
//! target registry: byte streams split anywhere give the same replies, replies match a flat
//! model of the disk, and hostile input ends in an NBD error or a clean close.

use super::*;
use crate::config::{self, Overrides};
use crate::metrics::WorkerCounters;
use crate::rng::XorShift;
use std::path::PathBuf;

const SIZE: usize = (1 << 20) + 1536; // a short last block
const KEY: [u8; 16] = *b"0123456789abcdef";

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

/// A server over `disk` (raw, SIZE bytes of a fixed pattern) with `nbd` lines in its [nbd].
fn fixture(tag: &str, nbd: &str) -> Fixture {
    fixture_vdisk(tag, nbd, "")
}

/// As `fixture`, with `extra` appended to the file (more vdisks).
fn fixture_vdisk(tag: &str, nbd: &str, extra: &str) -> Fixture {
    let dir = std::env::temp_dir().join(format!("bootfarm-nbd-session-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("boot")).unwrap();
    std::fs::create_dir_all(dir.join("cache")).unwrap();
    std::fs::create_dir_all(dir.join("traces")).unwrap();
    let content: Vec<u8> = (0..SIZE as u64).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8 | 1).collect();
    std::fs::write(dir.join("disk.raw"), &content).unwrap();
    let text = format!(
        "[tftp]\nroot = \"boot\"\n[nbd]\ncache_dir = \"cache\"\n{nbd}\n[[vdisk]]\nname = \"disk\"\npath = \"disk.raw\"\n[[vdisk]]\nname = \"other\"\npath = \"disk.raw\"\n{extra}"
    );
    if extra.contains("priv.vhdx") {
        crate::image::write::create_vhdx(&dir.join("priv.vhdx"), 1 << 20, 1 << 20, 512, None).unwrap();
    }
    let snap = config::from_text(&dir.join("bootfarm.toml"), &text, &Overrides::default(), 1, None).unwrap();
    Fixture { dir, snap: Arc::new(snap), content }
}

struct TestEnv {
    snap: Arc<Snapshot>,
    registry: Registry,
    counters: WorkerCounters,
    /// The wall clock boot tokens expire by (seconds since the epoch).
    unix: u64,
    /// Trace chunks handed out (nbd.trace_dir), and whether the writer's queue is full.
    traced: std::sync::Mutex<Vec<trace::Chunk>>,
    trace_full: bool,
}

impl ConnScope for TestEnv {}

impl Env for TestEnv {
    fn snapshot(&self) -> &Snapshot {
        &self.snap
    }
    fn registry(&self) -> &Registry {
        &self.registry
    }
    fn count(&self, c: Counter, n: u64) {
        self.counters.add(c, n);
    }
    fn farm_place(&self, _vdisk: &str, _target: &str, _client: IpAddr, _now: Instant) -> Vec<usize> {
        vec![0]
    }
    fn token_key(&self) -> [u8; 16] {
        KEY
    }
    fn now_unix(&self) -> u64 {
        self.unix
    }
    fn trace_start(&self) -> (u64, u64) {
        (42, self.unix * 1000)
    }
    fn trace_out(&self, chunk: trace::Chunk) -> bool {
        if self.trace_full {
            return false;
        }
        self.traced.lock().unwrap().push(chunk);
        true
    }
}

fn env(f: &Fixture) -> TestEnv {
    TestEnv {
        snap: f.snap.clone(),
        registry: Registry::default(),
        counters: WorkerCounters::default(),
        unix: 1_800_000_000,
        traced: Default::default(),
        trace_full: false,
    }
}

fn peer() -> SocketAddr {
    "192.0.2.7:40000".parse().unwrap()
}

// --- what a client sends -----------------------------------------------------------------

fn client_flags(f: u32) -> Vec<u8> {
    f.to_be_bytes().to_vec()
}

fn opt(o: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = wire::IHAVEOPT.to_be_bytes().to_vec();
    v.extend_from_slice(&o.to_be_bytes());
    v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    v.extend_from_slice(payload);
    v
}

fn go(name: &str) -> Vec<u8> {
    let mut p = (name.len() as u32).to_be_bytes().to_vec();
    p.extend_from_slice(name.as_bytes());
    p.extend_from_slice(&1u16.to_be_bytes());
    p.extend_from_slice(&wire::INFO_BLOCK_SIZE.to_be_bytes());
    opt(wire::OPT_GO, &p)
}

fn set_meta(name: &str, query: &str) -> Vec<u8> {
    let mut p = (name.len() as u32).to_be_bytes().to_vec();
    p.extend_from_slice(name.as_bytes());
    p.extend_from_slice(&1u32.to_be_bytes());
    p.extend_from_slice(&(query.len() as u32).to_be_bytes());
    p.extend_from_slice(query.as_bytes());
    opt(wire::OPT_SET_META_CONTEXT, &p)
}

fn request(kind: u16, flags: u16, cookie: u64, offset: u64, length: u32) -> Vec<u8> {
    let mut v = wire::REQUEST_MAGIC.to_be_bytes().to_vec();
    v.extend_from_slice(&flags.to_be_bytes());
    v.extend_from_slice(&kind.to_be_bytes());
    v.extend_from_slice(&cookie.to_be_bytes());
    v.extend_from_slice(&offset.to_be_bytes());
    v.extend_from_slice(&length.to_be_bytes());
    v
}

/// The handshake of a client that wants structured replies and base:allocation, or not.
fn handshake(structured: bool) -> Vec<u8> {
    let mut v = client_flags(1 | 2);
    if structured {
        v.extend(opt(wire::OPT_STRUCTURED_REPLY, &[]));
        v.extend(set_meta("disk", wire::BASE_ALLOCATION));
    }
    v.extend(go("disk"));
    v
}

// --- the driver, as engine/tcp.rs runs a session -----------------------------------------

struct Run {
    out: Vec<u8>,
    batches: usize,
}

/// Feeds `stream` cut at `cuts` (sorted offsets) into a fresh session, as the driver does: the
/// received bytes not taken are offered again with the next ones and after each release; a
/// batch is released once "sent". Ends with EOF and the close.
fn drive(env: &mut TestEnv, stream: &[u8], cuts: &[usize], now: Instant) -> Run {
    let mut s = Session::new(env, peer(), now);
    let mut run = Run { out: Vec::new(), batches: 0 };
    let mut rx: Vec<u8> = Vec::new();
    let mut from = 0;
    for &cut in cuts.iter().chain(std::iter::once(&stream.len())) {
        rx.extend_from_slice(&stream[from..cut]);
        from = cut;
        pump(&mut s, env, &mut rx, &mut run, now);
        if s.is_done() {
            break;
        }
    }
    if !s.is_done() {
        s.on_eof(env, now);
        pump(&mut s, env, &mut rx, &mut run, now);
    }
    assert!(s.is_done(), "EOF ends the session");
    s.on_closed(env, false, now);
    run
}

/// Offers input and sends batches until neither makes progress (bounded).
fn pump(s: &mut Session<TestEnv>, env: &mut TestEnv, rx: &mut Vec<u8>, run: &mut Run, now: Instant) {
    for _ in 0..1_000_000 {
        let taken = s.on_input(env, rx, now);
        assert!(taken <= rx.len());
        rx.drain(..taken);
        match s.poll_transmit(env, now) {
            Some(b) => {
                assert!(!b.is_empty() && b.pieces.len() <= Batch::PIECES_MAX);
                // Safety: the batch is held until on_released below.
                let bytes = unsafe { b.to_vec() };
                assert_eq!(bytes.len() as u64, b.len);
                run.out.extend_from_slice(&bytes);
                run.batches += 1;
                s.on_released(env, now);
            }
            None if taken == 0 => return,
            None => {}
        }
    }
    panic!("the session keeps asking to be polled");
}

// --- what a client reads -----------------------------------------------------------------

/// One reply as a client sees it.
#[derive(Debug, PartialEq, Eq, Clone)]
struct Reply {
    cookie: u64,
    error: u32,
    data: Vec<u8>,
}

/// Parses the transmission-phase replies. `reads` names the cookies whose simple replies carry
/// data, and how much.
fn replies(out: &[u8], structured: bool, reads: &dyn Fn(u64) -> Option<usize>) -> Vec<Reply> {
    let be32 = |b: &[u8]| u32::from_be_bytes(b[..4].try_into().unwrap());
    let be64 = |b: &[u8]| u64::from_be_bytes(b[..8].try_into().unwrap());
    let mut v: Vec<Reply> = Vec::new();
    // Structured: whether the last reply has had its DONE chunk.
    let mut complete = true;
    let mut at = 0;
    while at < out.len() {
        if !structured {
            assert_eq!(be32(&out[at..]), wire::SIMPLE_REPLY_MAGIC, "at {at}");
            let (error, cookie) = (be32(&out[at + 4..]), be64(&out[at + 8..]));
            at += 16;
            let n = if error == 0 { reads(cookie).unwrap_or(0) } else { 0 };
            v.push(Reply { cookie, error, data: out[at..at + n].to_vec() });
            at += n;
            continue;
        }
        assert_eq!(be32(&out[at..]), wire::STRUCTURED_REPLY_MAGIC, "at {at}");
        let flags = u16::from_be_bytes([out[at + 4], out[at + 5]]);
        let kind = u16::from_be_bytes([out[at + 6], out[at + 7]]);
        let cookie = be64(&out[at + 8..]);
        let len = be32(&out[at + 16..]) as usize;
        let p = &out[at + 20..at + 20 + len];
        at += 20 + len;
        if complete {
            v.push(Reply { cookie, error: 0, data: Vec::new() });
        }
        let r = v.last_mut().unwrap();
        assert_eq!(r.cookie, cookie, "chunks of one reply are not interleaved with another's");
        match kind {
            wire::REPLY_TYPE_NONE => {}
            wire::REPLY_TYPE_OFFSET_DATA => r.data.extend_from_slice(&p[8..]),
            wire::REPLY_TYPE_OFFSET_HOLE => r.data.extend(std::iter::repeat_n(0u8, be32(&p[8..]) as usize)),
            wire::REPLY_TYPE_ERROR => r.error = be32(p),
            wire::REPLY_TYPE_BLOCK_STATUS => r.data.extend_from_slice(p),
            k => panic!("chunk type {k}"),
        }
        complete = flags & wire::REPLY_FLAG_DONE != 0;
    }
    assert!(complete, "the last reply has its DONE chunk");
    v
}

/// The length of the server's handshake replies for `handshake(structured)`.
fn handshake_len(f: &Fixture, structured: bool) -> usize {
    let mut e = env(f);
    drive(&mut e, &handshake(structured), &[], Instant::now()).out.len()
}

/// A seeded mix of commands, with the flat model of what each READ must return. Like a block
/// device's client, it never has a write in flight over blocks a read in flight covers (the
/// protocol leaves the outcome undefined: a reply may point at a cache page a later write of
/// its batch changes): a write over blocks read in the last `window` requests (the queue
/// depth) becomes a FLUSH.
struct Script {
    bytes: Vec<u8>,
    reads: std::collections::HashMap<u64, usize>,
    expect: Vec<Reply>,
}

fn script(seed: u64, f: &Fixture, structured: bool, count: usize, len_max: u64, window: usize) -> Script {
    let mut rng = XorShift::new(seed);
    let mut model = f.content.clone();
    let mut s = Script { bytes: handshake(structured), reads: Default::default(), expect: Vec::new() };
    let size = SIZE as u64;
    // The blocks each of the last `window` requests read.
    let mut recent: std::collections::VecDeque<(u64, u64)> = Default::default();
    let blocks = |off: u64, len: u64| (off / cache::BLOCK, (off + len.max(1) - 1) / cache::BLOCK);
    for cookie in 1..=count as u64 {
        let off = rng.below(size);
        let len = rng.below((size - off).min(len_max) + 1);
        let mut op = rng.below(10);
        let (b0, b1) = blocks(off, len);
        if (5..=7).contains(&op) && recent.iter().any(|&(r0, r1)| r0 <= b1 && b0 <= r1) {
            op = 8;
        }
        recent.push_back(if op <= 4 { (b0, b1) } else { (u64::MAX, 0) });
        if recent.len() > window {
            recent.pop_front();
        }
        match op {
            0..=4 => {
                s.bytes.extend(request(wire::CMD_READ, 0, cookie, off, len as u32));
                s.reads.insert(cookie, len as usize);
                s.expect.push(Reply { cookie, error: 0, data: model[off as usize..(off + len) as usize].to_vec() });
            }
            5 | 6 => {
                let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                s.bytes.extend(request(wire::CMD_WRITE, 0, cookie, off, len as u32));
                s.bytes.extend_from_slice(&data);
                model[off as usize..(off + len) as usize].copy_from_slice(&data);
                s.expect.push(Reply { cookie, error: 0, data: Vec::new() });
            }
            7 => {
                let kind = if rng.chance(0.5) { wire::CMD_TRIM } else { wire::CMD_WRITE_ZEROES };
                s.bytes.extend(request(kind, 0, cookie, off, len as u32));
                model[off as usize..(off + len) as usize].fill(0);
                s.expect.push(Reply { cookie, error: 0, data: Vec::new() });
            }
            8 => {
                s.bytes.extend(request(wire::CMD_FLUSH, 0, cookie, 0, 0));
                s.expect.push(Reply { cookie, error: 0, data: Vec::new() });
            }
            _ => {
                recent.pop_back();
                recent.push_back(blocks(size - 10, 11));
                // Past the end: refused, and the session goes on.
                s.bytes.extend(request(wire::CMD_READ, 0, cookie, size - 10, 11));
                s.expect.push(Reply { cookie, error: wire::EINVAL, data: Vec::new() });
            }
        }
    }
    s.bytes.extend(request(wire::CMD_DISC, 0, 0, 0, 0));
    s
}

fn check_against_model(f: &Fixture, s: &Script, structured: bool, out: &[u8]) {
    let hs = handshake_len(f, structured);
    let got = replies(&out[hs..], structured, &|c| s.reads.get(&c).copied());
    assert_eq!(got.len(), s.expect.len());
    for (g, e) in got.iter().zip(&s.expect) {
        assert_eq!((g.cookie, g.error, g.data.len()), (e.cookie, e.error, e.data.len()));
        let first = g.data.iter().zip(&e.data).position(|(a, b)| a != b);
        assert!(g.data == e.data, "reply {} (structured {structured}) differs from the model at {first:?}", g.cookie);
    }
}

#[test]
fn replies_match_a_flat_model_of_the_disk() {
    let f = fixture("model", "queue_depth_max = 8");
    for structured in [false, true] {
        let s = script(0x5eed, &f, structured, 300, 40_000, 8);
        let mut e = env(&f);
        let run = drive(&mut e, &s.bytes, &[], Instant::now());
        check_against_model(&f, &s, structured, &run.out);
        assert_eq!(e.counters.get(Counter::NbdErrors), s.expect.iter().filter(|r| r.error != 0).count() as u64);
    }
}

/// Overflow-file blocks are copied into the scratch, at most reply_scratch_bytes_max per
/// batch: long reads of them go out over several batches, with the same bytes.
#[test]
fn reads_of_overflow_blocks_continue_across_batches() {
    let wide = fixture("overflow-wide", "queue_depth_max = 8\ncache_ram_bytes_per_target = 0");
    let narrow = fixture("overflow", "queue_depth_max = 8\ncache_ram_bytes_per_target = 0\nreply_scratch_bytes_max = 8192");
    for structured in [false, true] {
        let s = script(0x0fe1, &narrow, structured, 200, 40_000, 8);
        let a = drive(&mut env(&wide), &s.bytes, &[], Instant::now());
        let b = drive(&mut env(&narrow), &s.bytes, &[], Instant::now());
        check_against_model(&wide, &s, structured, &a.out);
        check_against_model(&narrow, &s, structured, &b.out);
        // Structured replies split into more data chunks where a part ends.
        assert!(structured || a.out == b.out, "the same bytes, in more batches");
        assert!(b.batches > a.batches + 20, "scratch-bounded batches: {} against {}", b.batches, a.batches);
    }
}

#[test]
fn the_same_stream_gives_the_same_replies_whatever_the_split() {
    let f = fixture("split", "queue_depth_max = 3\ncache_ram_bytes_per_target = 16384\nreply_scratch_bytes_max = 8192");
    let now = Instant::now();
    for structured in [false, true] {
        let s = script(0x5917 + structured as u64, &f, structured, 30, 6000, 3);
        let whole = drive(&mut env(&f), &s.bytes, &[], now);
        assert!(s.bytes.len() > 10_000 && whole.batches >= 30 / 3, "{} bytes, {} batches", s.bytes.len(), whole.batches);
        check_against_model(&f, &s, structured, &whole.out);
        // Every single cut, then seeded sets of many cuts, then byte by byte.
        for k in 0..=s.bytes.len() {
            assert!(drive(&mut env(&f), &s.bytes, &[k], now).out == whole.out, "cut at {k}");
        }
        let mut rng = XorShift::new(99);
        for _ in 0..200 {
            let mut cuts: Vec<usize> = (0..rng.below(40) + 1).map(|_| rng.below(s.bytes.len() as u64) as usize).collect();
            cuts.sort();
            assert!(drive(&mut env(&f), &s.bytes, &cuts, now).out == whole.out, "cuts {cuts:?}");
        }
        let cuts: Vec<usize> = (1..s.bytes.len()).collect();
        assert!(drive(&mut env(&f), &s.bytes, &cuts, now).out == whole.out, "byte by byte");
    }
}

/// Runs `stream` whole and returns (handshake length, the replies after it, the env).
fn run_after_handshake(f: &Fixture, structured: bool, stream: &[u8]) -> (Vec<Reply>, TestEnv) {
    let mut e = env(f);
    let mut bytes = handshake(structured);
    bytes.extend_from_slice(stream);
    let run = drive(&mut e, &bytes, &[], Instant::now());
    let hs = handshake_len(f, structured);
    let got = replies(&run.out[hs..], structured, &|_| Some(512));
    (got, e)
}

#[test]
fn pipelined_requests_stop_at_the_queue_depth_and_go_on_after_the_release() {
    let f = fixture("depth", "queue_depth_max = 4");
    let mut e = env(&f);
    let now = Instant::now();
    let mut s = Session::new(&e, peer(), now);
    let mut rx = handshake(false);
    let hs_len = rx.len();
    for cookie in 0..10u64 {
        rx.extend(request(wire::CMD_READ, 0, cookie, cookie * 512, 512));
    }
    // The greeting went first, alone.
    let g = s.poll_transmit(&mut e, now).expect("greeting");
    assert_eq!(g.len, 18);
    assert!(!s.wants_input(), "a held batch takes no input");
    assert_eq!(s.on_input(&mut e, &rx, now), 0);
    s.on_released(&mut e, now);
    assert!(s.wants_input());
    // GO and three READs fill the batch of four; the rest waits in the receive buffer.
    let taken = s.on_input(&mut e, &rx, now);
    assert_eq!(taken, hs_len + 3 * 28);
    assert!(!s.wants_input(), "the batch is full: TCP pushes back");
    assert_eq!(s.on_input(&mut e, &rx[taken..], now), 0);
    rx.drain(..taken);
    let mut replies_seen = 3;
    assert!(s.poll_transmit(&mut e, now).is_some());
    s.on_released(&mut e, now);
    while !rx.is_empty() {
        let taken = s.on_input(&mut e, &rx, now);
        assert_eq!(taken, (rx.len() / 28).min(4) * 28, "four requests a batch");
        rx.drain(..taken);
        let b = s.poll_transmit(&mut e, now).expect("replies");
        assert_eq!(b.len, (taken / 28 * (16 + 512)) as u64);
        // Safety: held until the release below.
        let bytes = unsafe { b.to_vec() };
        for (i, r) in replies(&bytes, false, &|_| Some(512)).iter().enumerate() {
            let c = (replies_seen + i) as u64;
            assert_eq!((r.cookie, r.error), (c, 0));
            assert!(r.data[..] == f.content[c as usize * 512..][..512]);
        }
        replies_seen += taken / 28;
        s.on_released(&mut e, now);
    }
    assert_eq!(replies_seen, 10);
    assert!(s.poll_transmit(&mut e, now).is_none() && s.idle_since() == Some(now));
    assert_eq!(e.counters.get(Counter::NbdReads), 10);
}

#[test]
fn requests_out_of_bounds_get_an_error_reply_and_the_session_goes_on() {
    let f = fixture("bounds", "request_bytes_max = 4096");
    let size = SIZE as u64;
    for structured in [false, true] {
        let mut st = Vec::new();
        st.extend(request(wire::CMD_READ, 0, 1, size - 511, 512)); // past the end
        st.extend(request(wire::CMD_READ, 0, 2, 0, 8192)); // over request_bytes_max
        st.extend(request(wire::CMD_READ, 0, 3, u64::MAX - 10, 100)); // offset + length overflows
        st.extend(request(wire::CMD_WRITE, 0, 4, 0, 8192)); // over the maximum: payload skipped
        st.extend(std::iter::repeat_n(0xEEu8, 8192));
        st.extend(request(wire::CMD_WRITE, 0, 5, size - 100, 200)); // past the end: skipped
        st.extend(std::iter::repeat_n(0xEEu8, 200));
        st.extend(request(42, 0, 6, 0, 0)); // unknown command
        st.extend(request(wire::CMD_TRIM, 0, 7, size, 1));
        st.extend(request(wire::CMD_BLOCK_STATUS, 0, 8, 0, 512)); // no meta context for simple
        st.extend(request(wire::CMD_READ, 0, 9, 0, 512)); // still serving, the disk unchanged
        st.extend(request(wire::CMD_DISC, 0, 0, 0, 0));
        let (got, e) = run_after_handshake(&f, structured, &st);
        let errors: Vec<(u64, u32)> = got.iter().map(|r| (r.cookie, r.error)).collect();
        let block_status = if structured { 0 } else { wire::EINVAL };
        assert_eq!(
            errors,
            [
                (1, wire::EINVAL),
                (2, wire::EOVERFLOW),
                (3, wire::EINVAL),
                (4, wire::EOVERFLOW),
                (5, wire::EINVAL),
                (6, wire::EINVAL),
                (7, wire::EINVAL),
                (8, block_status),
                (9, 0)
            ],
            "structured {structured}"
        );
        assert!(got[8].data[..] == f.content[..512], "nothing of the refused writes landed");
        assert_eq!(e.counters.get(Counter::NbdErrors), if structured { 7 } else { 8 });
        assert_eq!(e.counters.get(Counter::NbdWrittenBytes), 0);
    }
}

#[test]
fn block_status_reports_written_and_zeroed_blocks() {
    let f = fixture("status", "");
    let mut st = request(wire::CMD_WRITE, 0, 1, 8192, 4096);
    st.extend(std::iter::repeat_n(7u8, 4096));
    st.extend(request(wire::CMD_WRITE_ZEROES, 0, 2, 16384, 8192));
    st.extend(request(wire::CMD_BLOCK_STATUS, 0, 3, 0, 32768));
    st.extend(request(wire::CMD_BLOCK_STATUS, wire::CMD_FLAG_REQ_ONE, 4, 0, 32768));
    st.extend(request(wire::CMD_BLOCK_STATUS, 0, 5, 0, 0)); // empty: refused
    let (got, _) = run_after_handshake(&f, true, &st);
    assert_eq!(got.iter().map(|r| (r.cookie, r.error)).collect::<Vec<_>>(), [(1, 0), (2, 0), (3, 0), (4, 0), (5, wire::EINVAL)]);
    let extents = |d: &[u8]| -> Vec<(u32, u32)> {
        assert_eq!(u32::from_be_bytes(d[..4].try_into().unwrap()), wire::BASE_ALLOCATION_ID);
        d[4..].chunks(8).map(|c| (u32::from_be_bytes(c[..4].try_into().unwrap()), u32::from_be_bytes(c[4..].try_into().unwrap()))).collect()
    };
    let all = extents(&got[2].data);
    assert_eq!(all.iter().map(|e| e.0 as u64).sum::<u64>(), 32768, "{all:?}");
    assert!(all.iter().any(|&(_, flags)| flags & 2 != 0), "the zeroed range reads as zero: {all:?}");
    assert_eq!(extents(&got[3].data).len(), 1, "REQ_ONE: one extent");
}

#[test]
fn handshake_options_answer_errors_and_go_on() {
    let f = fixture("options", "");
    let mut e = env(&f);
    let mut st = client_flags(1);
    st.extend(opt(99, b"xyz")); // unknown: ERR_UNSUP
    st.extend(opt(wire::OPT_LIST, &[])); // two exports
    st.extend(opt(wire::OPT_LIST, b"x")); // LIST takes no payload: ERR_INVALID
    st.extend(opt(wire::OPT_STRUCTURED_REPLY, b"x")); // ERR_INVALID
    st.extend(set_meta("disk", wire::BASE_ALLOCATION)); // before structured replies: ERR_INVALID
    st.extend(opt(wire::OPT_INFO, b"\x00")); // malformed: ERR_INVALID
    st.extend(go("nosuch")); // ERR_UNKNOWN
    st.extend(go("disk@a/b")); // bad target id: ERR_UNKNOWN
    st.extend(go("other"));
    st.extend(request(wire::CMD_READ, 0, 1, 0, 16));
    let run = drive(&mut e, &st, &[], Instant::now());
    let mut at = 18;
    let mut kinds = Vec::new();
    while at + 20 <= run.out.len() && u64::from_be_bytes(run.out[at..at + 8].try_into().unwrap()) == wire::OPT_REPLY_MAGIC {
        let kind = u32::from_be_bytes(run.out[at + 12..at + 16].try_into().unwrap());
        kinds.push(kind);
        at += 20 + u32::from_be_bytes(run.out[at + 16..at + 20].try_into().unwrap()) as usize;
    }
    let (unknown, invalid) = (wire::REP_ERR_UNKNOWN, wire::REP_ERR_INVALID);
    let want =
        [wire::REP_ERR_UNSUP, wire::REP_SERVER, wire::REP_SERVER, wire::REP_ACK, invalid, invalid, invalid, invalid, unknown, unknown]
            .into_iter()
            .chain([wire::REP_INFO, wire::REP_INFO, wire::REP_ACK]) // GO: export, block size, ack
            .collect::<Vec<_>>();
    assert_eq!(kinds, want);
    let r = replies(&run.out[at..], false, &|_| Some(16));
    assert!(r.len() == 1 && r[0].error == 0 && r[0].data[..] == f.content[..16]);
}

#[test]
fn protocol_violations_close_the_connection_cleanly() {
    let f = fixture("violations", "");
    let mut too_long = client_flags(1);
    too_long.extend(wire::IHAVEOPT.to_be_bytes());
    too_long.extend(wire::OPT_GO.to_be_bytes());
    too_long.extend((wire::OPTION_BYTES_MAX + 1).to_be_bytes());
    let mut bad_magic = client_flags(1);
    bad_magic.extend(opt(wire::OPT_LIST, &[]));
    bad_magic[4] ^= 0xFF;
    let mut bad_request = handshake(false);
    bad_request.extend(request(wire::CMD_READ, 0, 1, 0, 512));
    bad_request.extend(request(wire::CMD_READ, 0, 2, 0, 512));
    let n = bad_request.len();
    bad_request[n - 28] ^= 1;
    let mut export_name_unknown = client_flags(1);
    export_name_unknown.extend(opt(wire::OPT_EXPORT_NAME, b"nosuch"));
    let mut abort = client_flags(1);
    abort.extend(opt(wire::OPT_ABORT, &[]));
    abort.extend(go("disk")); // never read
    let hs = handshake_len(&f, false);
    let mut not_fixed_go = client_flags(0);
    not_fixed_go.extend(go("disk"));
    let cases: [(&str, Vec<u8>, usize); 6] = [
        ("GO from a client without fixed newstyle", not_fixed_go, 18),
        ("option over OPTION_BYTES_MAX", too_long, 18),
        ("bad option magic", bad_magic, 18),
        ("bad request magic", bad_request, hs + 16 + 512),
        ("EXPORT_NAME of no export", export_name_unknown, 18),
        ("ABORT", abort, 18 + 20),
    ];
    for (what, stream, out_len) in cases {
        let mut e = env(&f);
        let now = Instant::now();
        let mut s = Session::new(&e, peer(), now);
        let mut run = Run { out: Vec::new(), batches: 0 };
        let mut rx = stream.clone();
        pump(&mut s, &mut e, &mut rx, &mut run, now);
        assert!(s.is_done(), "{what}: the session ends without waiting for EOF");
        assert!(!s.wants_input());
        assert_eq!(run.out.len(), out_len, "{what}");
        s.on_closed(&mut e, false, now);
    }
    // Seeded garbage in every phase: the session answers or ends, never panics.
    let mut rng = XorShift::new(0xbad);
    for prefix in [Vec::new(), client_flags(1), handshake(false), handshake(true)] {
        for _ in 0..300 {
            let mut st = prefix.clone();
            st.extend((0..rng.below(300)).map(|_| rng.next() as u8));
            let cuts: Vec<usize> = (1..st.len()).step_by(rng.below(50) as usize + 1).collect();
            drive(&mut env(&f), &st, &cuts, Instant::now());
        }
    }
}

#[test]
fn a_client_that_stops_reading_holds_its_batch_and_asks_nothing_more() {
    let f = fixture("stall", "");
    let mut e = env(&f);
    let now = Instant::now();
    let mut s = Session::new(&e, peer(), now);
    let mut rx = handshake(false);
    for c in 0..4u64 {
        rx.extend(request(wire::CMD_READ, 0, c, 0, 65536));
    }
    let mut run = Run { out: Vec::new(), batches: 0 };
    pump(&mut s, &mut e, &mut rx, &mut run, now); // greeting, then GO and the four reads
    let mut more = Vec::new();
    for c in 4..8u64 {
        more.extend(request(wire::CMD_READ, 0, c, 0, 65536));
    }
    assert_eq!(s.on_input(&mut e, &more, now), 4 * 28, "taken while no batch is held");
    let b = s.poll_transmit(&mut e, now).expect("replies");
    assert_eq!(b.len, 4 * (16 + 65536));
    // The client reads nothing: the batch stays held; nothing more is taken or asked.
    for i in 1..100u64 {
        let t = now + Duration::from_millis(i * 100);
        assert_eq!(s.on_input(&mut e, &more, t), 0);
        assert!(s.poll_transmit(&mut e, t).is_none());
        assert!(!s.wants_input() && !s.is_done() && s.idle_since().is_none());
    }
    assert_eq!(s.poll_timeout(), None, "no handshake deadline after GO: the driver's send deadline applies");
    s.on_closed(&mut e, true, now + Duration::from_secs(30));
    assert_eq!(e.registry.counts(), (1, 0), "detached at the close");
    drop(s);
    assert_eq!(e.registry.counts(), (1, 0), "the target is kept for a reconnect, with no connection");
}

#[test]
fn the_handshake_times_out() {
    let f = fixture("hs-timeout", "handshake_timeout_ms = 500");
    let mut e = env(&f);
    let t0 = Instant::now();
    let mut s = Session::new(&e, peer(), t0);
    assert!(s.poll_transmit(&mut e, t0).is_some());
    s.on_released(&mut e, t0);
    assert_eq!(s.on_input(&mut e, &client_flags(1), t0), 4);
    assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_millis(500)));
    s.on_timeout(&mut e, t0 + Duration::from_millis(499));
    assert!(!s.is_done(), "not before the deadline");
    s.on_timeout(&mut e, t0 + Duration::from_millis(500));
    assert!(s.is_done() && s.close_reason().contains("handshake"));
    assert_eq!(e.counters.get(Counter::NbdTimeoutHandshake), 1);
    assert!(s.poll_transmit(&mut e, t0).is_none());
    // After GO, no deadline.
    let mut s = Session::new(&e, peer(), t0);
    let mut rx = handshake(false);
    pump(&mut s, &mut e, &mut rx, &mut Run { out: Vec::new(), batches: 0 }, t0);
    assert_eq!(s.poll_timeout(), None);
}

#[test]
fn a_write_cut_by_eof_gives_its_reservation_back() {
    let f = fixture("write-eof", "");
    let mut e = env(&f);
    let now = Instant::now();
    let mut s = Session::new(&e, peer(), now);
    let mut rx = handshake(false);
    rx.extend(request(wire::CMD_WRITE, 0, 1, 0, 8 * 4096));
    rx.extend(std::iter::repeat_n(0x5Au8, 3 * 4096 + 100));
    let mut run = Run { out: Vec::new(), batches: 0 };
    pump(&mut s, &mut e, &mut rx, &mut run, now);
    assert_eq!(rx.len(), 100, "whole blocks are applied; the partial one waits");
    assert_eq!(e.registry.total.load(std::sync::atomic::Ordering::Relaxed), 8 * 4096, "the whole write is reserved");
    assert!(s.idle_since().is_none(), "a write in progress is not idle");
    s.on_eof(&mut e, now);
    assert!(s.is_done() && s.poll_transmit(&mut e, now).is_none(), "no reply to a write never finished");
    s.on_closed(&mut e, false, now);
    drop(s);
    assert_eq!(e.registry.total.load(std::sync::atomic::Ordering::Relaxed), 3 * 4096, "the unused part went back");
    // A reconnect (the target is kept) reads the three blocks written and the image after.
    let mut st = request(wire::CMD_READ, 0, 2, 0, 5 * 4096);
    st.extend(request(wire::CMD_DISC, 0, 0, 0, 0));
    let mut bytes = handshake(false);
    bytes.extend(st);
    let out = drive(&mut e, &bytes, &[], now).out;
    let r = replies(&out[handshake_len(&f, false)..], false, &|_| Some(5 * 4096));
    assert!(r[0].data[..3 * 4096].iter().all(|&b| b == 0x5A));
    assert!(r[0].data[3 * 4096..] == f.content[3 * 4096..5 * 4096]);
}

#[test]
fn a_damaged_image_is_refused() {
    let f = fixture("damaged", "");
    let mut e = env(&f);
    let now = Instant::now();
    let mut s = Session::new(&e, peer(), now);
    let mut rx = handshake(true);
    let mut run = Run { out: Vec::new(), batches: 0 };
    pump(&mut s, &mut e, &mut rx, &mut run, now);
    let hs = run.out.len();
    // Truncated under its mapping: a partial-block write copies the rest of its block from the
    // image, past the new end: that load faults, reads zeros and marks the mapping damaged.
    std::fs::OpenOptions::new().write(true).open(f.dir.join("disk.raw")).unwrap().set_len(65536).unwrap();
    let mut rx = request(wire::CMD_WRITE, 0, 1, 512 * 1024, 512);
    rx.extend(std::iter::repeat_n(1u8, 512));
    rx.extend(request(wire::CMD_READ, 0, 2, 0, 512));
    rx.extend(request(wire::CMD_WRITE, 0, 3, 0, 512));
    rx.extend(std::iter::repeat_n(1u8, 512));
    pump(&mut s, &mut e, &mut rx, &mut run, now);
    let got = replies(&run.out[hs..], true, &|_| None);
    assert_eq!(got.iter().map(|r| (r.cookie, r.error)).collect::<Vec<_>>(), [(1, wire::EIO), (2, wire::EIO), (3, wire::EIO)]);
    assert!(got.iter().all(|r| r.data.is_empty()), "no byte of the damaged image is sent");
    assert!(e.counters.get(Counter::NbdDamaged) >= 1);
    // A new connection is refused at GO.
    let mut e2 = env(&f);
    let out = drive(&mut e2, &handshake(false), &[], now).out;
    let kind = u32::from_be_bytes(out[18 + 12..18 + 16].try_into().unwrap());
    assert_eq!(kind, wire::REP_ERR_UNKNOWN);
    assert!(String::from_utf8_lossy(&out).contains("changed on the server"));
}

/// Well-formed requests with hostile fields (every command number, flag bits, offsets and
/// lengths at and past the edges, payloads cut short): no panic, and every reply that comes is
/// whole, for a request that was sent, in request order. NBD_SEED and NBD_ROUNDS search longer
/// (45,000 rounds of three seeds passed).
#[test]
fn requests_with_hostile_fields_get_whole_replies_in_order() {
    let f = fixture("hostile-fields", "request_bytes_max = 65536\ncache_ram_bytes_per_target = 8192\nreply_scratch_bytes_max = 8192");
    let size = SIZE as u64;
    let mut rng = XorShift::new(std::env::var("NBD_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0xf1e1d5));
    let rounds = std::env::var("NBD_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    for round in 0..rounds {
        let structured = round % 2 == 1;
        let mut st = handshake(structured);
        let (mut lens, mut sent) = (std::collections::HashMap::new(), Vec::new());
        for cookie in 1..=rng.below(12) + 1 {
            let pick = |rng: &mut XorShift, edges: &[u64]| {
                if rng.chance(0.5) {
                    edges[rng.below(edges.len() as u64) as usize]
                } else {
                    rng.next()
                }
            };
            let kind = if rng.chance(0.8) { [0u16, 1, 3, 4, 6, 7][rng.below(6) as usize] } else { rng.below(16) as u16 };
            let offset = pick(&mut rng, &[0, 1, 4095, 4096, size - 1, size, size + 1, u64::MAX, u64::MAX - 4095]);
            let length = pick(&mut rng, &[0, 1, 511, 4096, 65536, 65537, u32::MAX as u64, (size - offset.min(size)) & 0xFFFF]) as u32;
            let flags = rng.below(16) as u16;
            st.extend(request(kind, flags, cookie, offset, length));
            if kind == wire::CMD_WRITE {
                let n = if rng.chance(0.8) { length.min(70_000) as usize } else { rng.below(5000) as usize };
                st.extend((0..n).map(|_| rng.next() as u8));
            }
            sent.push(cookie);
            if kind == wire::CMD_READ {
                lens.insert(cookie, length as usize); // an answered simple READ carries its data
            }
        }
        let mut cuts: Vec<usize> = (0..rng.below(6)).map(|_| rng.below(st.len() as u64) as usize).collect();
        cuts.sort();
        let run = drive(&mut env(&f), &st, &cuts, Instant::now());
        let hs = handshake_len(&f, structured);
        let got = replies(&run.out[hs..], structured, &|c| lens.get(&c).copied());
        assert!(
            got.windows(2).all(|w| w[0].cookie < w[1].cookie),
            "in request order: {:?}",
            got.iter().map(|r| r.cookie).collect::<Vec<_>>()
        );
        assert!(got.iter().all(|r| sent.contains(&r.cookie)));
    }
}

/// Option sequences with hostile fields (every option number, names well-formed or not, info
/// and meta payloads with wrong counts), then a READ: no panic, the greeting first, and a fair
/// share of the sequences gets into transmission and has the READ served.
#[test]
fn handshakes_with_hostile_options_serve_or_end() {
    let f = fixture("hostile-options", "");
    let mut rng = XorShift::new(0x0b7);
    let names: [&[u8]; 7] = [b"disk", b"other", b"", b"nosuch", b"disk@id-1", b"disk@a/b", b"\xff\xfe"];
    let (mut attached, mut served) = (0, 0);
    for _ in 0..2000 {
        let mut st = client_flags(1 | rng.below(4) as u32);
        for _ in 0..rng.below(6) + 1 {
            let o = if rng.chance(0.8) { rng.below(12) as u32 } else { rng.next() as u32 };
            let name = names[rng.below(names.len() as u64) as usize];
            let mut p = Vec::new();
            match rng.below(4) {
                0 => p.extend((0..rng.below(64)).map(|_| rng.next() as u8)),
                1 => {}
                _ => {
                    let claimed = if rng.chance(0.8) { name.len() as u32 } else { rng.next() as u32 % 300 };
                    p.extend(claimed.to_be_bytes());
                    p.extend_from_slice(name);
                    let count = rng.below(4);
                    if o == wire::OPT_GO || o == wire::OPT_INFO {
                        p.extend((count as u16 + rng.below(2) as u16).to_be_bytes());
                        p.extend((0..count).flat_map(|_| (rng.below(5) as u16).to_be_bytes()));
                    } else {
                        p.extend((count as u32 + rng.below(2) as u32).to_be_bytes());
                        for _ in 0..count {
                            let q: &[u8] = [b"base:allocation" as &[u8], b"base:", b"qemu:dirty-bitmap:x", b""][rng.below(4) as usize];
                            p.extend((q.len() as u32).to_be_bytes());
                            p.extend_from_slice(q);
                        }
                    }
                }
            }
            st.extend(opt(o, &p));
        }
        st.extend(request(wire::CMD_READ, 0, 77, 0, 512));
        let cuts: Vec<usize> =
            (0..rng.below(4)).map(|_| rng.below(st.len() as u64) as usize).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
        let mut e = env(&f);
        let run = drive(&mut e, &st, &cuts, Instant::now());
        assert!(run.out.starts_with(&wire::greeting()));
        // Into transmission: the READ's reply ends the stream with the export's first bytes.
        let simple = [&wire::SIMPLE_REPLY_MAGIC.to_be_bytes()[..], &0u32.to_be_bytes(), &77u64.to_be_bytes(), &f.content[..512]].concat();
        if e.registry.counts().0 == 1 {
            attached += 1;
            served += run.out.ends_with(&simple) as usize;
        }
    }
    // The generator reaches transmission often enough to matter (132 and 38 with this seed).
    assert!(attached > 50 && served > 10, "attached {attached}, served {served}");
}

/// The handshake of a client of the private vdisk `priv`.
fn priv_go() -> Vec<u8> {
    let mut v = client_flags(1 | 2);
    v.extend(go("priv"));
    v
}

/// A private vdisk has one writer. A second connection's GO waits for the first to go (a
/// machine that rebooted reconnects before its old connection's close is seen), taking no input
/// meanwhile, and is refused with the policy error once nbd.private_writer_wait_ms has passed.
#[test]
fn a_private_vdisks_next_writer_waits_for_the_last_then_is_refused() {
    // Private mode writes into a new differencing version: its base is a VHDX (empty here).
    let f = fixture_vdisk(
        "private-wait",
        "private_writer_wait_ms = 100",
        "[[vdisk]]\nname = \"priv\"\npath = \"priv.vhdx\"\nmode = \"private\"\n",
    );
    let mut e = env(&f);
    let t0 = Instant::now();
    let ms = |n: u64| Duration::from_millis(n);
    let mut first = Session::new(&e, peer(), t0);
    let mut run = Run { out: Vec::new(), batches: 0 };
    pump(&mut first, &mut e, &mut priv_go(), &mut run, t0);
    assert_eq!(e.registry.counts(), (1, 1));

    let mut second = Session::new(&e, peer(), t0);
    let mut rx = priv_go();
    let mut run = Run { out: Vec::new(), batches: 0 };
    pump(&mut second, &mut e, &mut rx, &mut run, t0);
    assert_eq!(rx, go("priv"), "the GO stays unread while it waits");
    assert!(!second.wants_input());
    assert_eq!(second.poll_timeout(), Some(t0 + ms(20)));
    second.on_timeout(&mut e, t0 + ms(20));
    assert!(second.wants_input(), "looks again at the retry time");
    pump(&mut second, &mut e, &mut rx, &mut run, t0 + ms(20));
    assert_eq!(rx.len(), go("priv").len(), "the writer is still there");
    first.on_closed(&mut e, false, t0 + ms(30));
    drop(first);
    second.on_timeout(&mut e, t0 + ms(40));
    pump(&mut second, &mut e, &mut rx, &mut run, t0 + ms(40));
    assert!(rx.is_empty() && second.poll_timeout().is_none(), "attached: in transmission");
    assert_eq!(e.registry.counts(), (1, 1));
    assert_eq!(e.counters.get(Counter::NbdRefusedPrivate), 0);

    // A third while the second stays: refused when the wait is over, not before.
    let t1 = t0 + ms(1000);
    let mut third = Session::new(&e, peer(), t1);
    let mut rx = priv_go();
    let mut run = Run { out: Vec::new(), batches: 0 };
    pump(&mut third, &mut e, &mut rx, &mut run, t1);
    let mut retries = 0;
    while let Some(at) = third.poll_timeout().filter(|&at| at <= t1 + ms(100)) {
        third.on_timeout(&mut e, at);
        pump(&mut third, &mut e, &mut rx, &mut run, at);
        retries += 1;
        assert!(retries <= 10, "bounded");
        if rx.is_empty() {
            break;
        }
    }
    assert_eq!(retries, 5, "every 20 ms until 100 ms");
    assert!(rx.is_empty(), "the GO was answered");
    let kind = u32::from_be_bytes(run.out[18 + 12..18 + 16].try_into().unwrap());
    assert_eq!(kind, wire::REP_ERR_POLICY);
    assert!(String::from_utf8_lossy(&run.out).contains("already has a writer"));
    assert_eq!(e.counters.get(Counter::NbdRefusedPrivate), 1);
}

// --- plain newstyle (busybox) and boots --------------------------------------------------

/// An EXPORT_NAME stream (client flags `flags`) for `name`, then `rest`.
fn export_name(flags: u32, name: &str, rest: &[u8]) -> Vec<u8> {
    let mut v = client_flags(flags);
    v.extend(opt(wire::OPT_EXPORT_NAME, name.as_bytes()));
    v.extend_from_slice(rest);
    v
}

/// busybox's nbd-client sends client flags 0 and EXPORT_NAME: it gets the export's size, flags
/// and the 124 zero bytes (NO_ZEROES was not agreed), then is served; with NO_ZEROES alone
/// (plain newstyle too) the zeros are left out. An unknown export just closes.
#[test]
fn a_plain_newstyle_client_gets_its_export_by_name() {
    let f = fixture("plain", "");
    for (flags, pad) in [(0u32, 124usize), (2, 0)] {
        let mut e = env(&f);
        let run = drive(&mut e, &export_name(flags, "disk", &request(wire::CMD_READ, 0, 9, 4096, 512)), &[], Instant::now());
        let hs = 18 + 8 + 2 + pad;
        assert_eq!(u64::from_be_bytes(run.out[18..26].try_into().unwrap()), SIZE as u64, "flags {flags}");
        assert!(run.out[28..hs].iter().all(|&b| b == 0));
        let r = replies(&run.out[hs..], false, &|_| Some(512));
        assert_eq!(r, vec![Reply { cookie: 9, error: 0, data: f.content[4096..4608].to_vec() }], "flags {flags}");
    }
    let mut e = env(&f);
    let run = drive(&mut e, &export_name(0, "nosuch", &[]), &[], Instant::now());
    assert_eq!(run.out.len(), 18, "an unknown export: closed without a reply, as the protocol answers");
    // A plain-newstyle client asking anything but EXPORT_NAME is closed (it cannot read replies).
    let mut s = Session::new(&e, peer(), Instant::now());
    let mut rx = client_flags(0);
    rx.extend(opt(wire::OPT_LIST, &[]));
    let mut run = Run { out: Vec::new(), batches: 0 };
    pump(&mut s, &mut e, &mut rx, &mut run, Instant::now());
    assert!(s.is_done() && run.out.len() == 18);
    assert!(s.close_reason().contains("only send NBD_OPT_EXPORT_NAME"), "{}", s.close_reason());
    s.on_closed(&mut e, false, Instant::now());
    // Every handshake end says why.
    let mut s = Session::new(&e, peer(), Instant::now());
    s.on_eof(&mut e, Instant::now());
    assert!(s.close_reason().contains("before sending its flags"), "{}", s.close_reason());
}

/// A write of `len` bytes of `byte` at `offset` (cookie 1), then a read of it back (cookie 2).
fn write_then_read(offset: u64, len: u32, byte: u8) -> Vec<u8> {
    let mut v = request(wire::CMD_WRITE, 0, 1, offset, len);
    v.extend(std::iter::repeat_n(byte, len as usize));
    v.extend(request(wire::CMD_READ, 0, 2, offset, len));
    v
}

/// One connection of export `name` at `now` that reads 4 KiB at 0 (cookie 3), after `rest`;
/// returns what it read.
fn session_reads(e: &mut TestEnv, name: &str, rest: &[u8], now: Instant) -> Vec<u8> {
    let mut stream = rest.to_vec();
    stream.extend(request(wire::CMD_READ, 0, 3, 0, 4096));
    let run = drive(e, &export_name(1 | 2, name, &stream), &[], now);
    let r = replies(&run.out[18 + 10..], false, &|c| Some(if c == 1 { 0 } else { 4096 }));
    r.iter().find(|r| r.cookie == 3).expect("the read was answered").data.clone()
}

/// Writes belong to a boot: the same boot id finds its writes after any outage (up to
/// nbd.boot_cache_keep_max_ms), another boot id starts from the clean image and drops the old
/// cache at once; without a boot id, today's rule (nbd.cache_keep_after_disconnect_ms).
#[test]
fn writes_belong_to_a_boot() {
    let f = fixture("boots", "cache_keep_after_disconnect_ms = 15000\nboot_cache_keep_max_ms = 3600000");
    let mut e = env(&f);
    let t0 = Instant::now();
    let s = Duration::from_secs;
    let clean = f.content[..4096].to_vec();
    let dropped = |e: &TestEnv, c| e.registry.counters.get(c);

    assert_eq!(session_reads(&mut e, "disk@m1#boot1", &write_then_read(0, 4096, 0xA1), t0), vec![0xA1; 4096]);
    // An outage of 50 minutes: the same boot finds its writes (the anonymous keep is 15 s).
    e.registry.sweep(t0 + s(3000), crate::nbd::target::Keep::of(&f.snap.config.nbd));
    assert_eq!(session_reads(&mut e, "disk@m1#boot1", &[], t0 + s(3000)), vec![0xA1; 4096]);
    assert_eq!(dropped(&e, Counter::NbdDroppedExpired), 0);
    // A new boot of the machine: clean, and the old cache is gone at once.
    assert_eq!(session_reads(&mut e, "disk@m1#boot2", &[], t0 + s(3001)), clean);
    assert_eq!(dropped(&e, Counter::NbdDroppedNewBoot), 1);
    assert_eq!(session_reads(&mut e, "disk@m1#boot1", &[], t0 + s(3002)), clean, "the old boot is gone for good");
    assert_eq!(e.registry.counts(), (1, 0), "one cache for the machine, not one per boot");
    // Past boot_cache_keep_max_ms the cache goes, counted as expired.
    e.registry.sweep(t0 + s(3002 + 3600), crate::nbd::target::Keep::of(&f.snap.config.nbd));
    assert_eq!(e.registry.counts(), (0, 0));
    assert_eq!(dropped(&e, Counter::NbdDroppedExpired), 1);

    // No boot id: a reconnect within 15 s keeps the writes, a later one starts clean.
    assert_eq!(session_reads(&mut e, "disk@m2", &write_then_read(0, 4096, 0xB2), t0), vec![0xB2; 4096]);
    assert_eq!(session_reads(&mut e, "disk@m2", &[], t0 + s(10)), vec![0xB2; 4096]);
    assert_eq!(session_reads(&mut e, "disk@m2", &[], t0 + s(30)), clean);
    // A boot id on a target made without one is a new boot too.
    assert_eq!(session_reads(&mut e, "disk@m2", &write_then_read(0, 4096, 0xB3), t0 + s(31)), vec![0xB3; 4096]);
    assert_eq!(session_reads(&mut e, "disk@m2#b", &[], t0 + s(32)), clean);
    // A bad boot id is refused like a bad target id (EXPORT_NAME: closed).
    let run = drive(&mut e, &export_name(1 | 2, "disk@m3#a b", &[]), &[], t0);
    assert_eq!(run.out.len(), 18);
}

/// A boot token is a boot: its target is the MAC inside it and its boot the token, so a new
/// token (the next /ipxe fetch) starts clean and drops the last boot's cache, and the same
/// token finds its writes even once it has expired.
#[test]
fn a_boot_token_is_a_boot_of_its_mac() {
    let f = fixture("token-boots", "");
    let mut e = env(&f);
    let t0 = Instant::now();
    let mac = crate::nbd::token::parse_mac("aa:bb:cc:dd:ee:01").unwrap();
    let ip = peer().ip();
    let first = crate::nbd::token::issue(&KEY, [1; 16], 1_800_000_100, mac, ip, "disk");
    let second = crate::nbd::token::issue(&KEY, [2; 16], 1_800_000_100, mac, ip, "disk");
    let expired = crate::nbd::token::issue(&KEY, [3; 16], 1_700_000_000, mac, ip, "disk");
    let clean = f.content[..4096].to_vec();
    assert_eq!(session_reads(&mut e, &format!("disk@{first}"), &write_then_read(0, 4096, 0xC1), t0), vec![0xC1; 4096]);
    assert!(e.registry.holds("disk", "aa:bb:cc:dd:ee:01", ip, Some(&first)), "the target is the MAC");
    assert_eq!(session_reads(&mut e, &format!("disk@{first}"), &[], t0 + Duration::from_secs(600)), vec![0xC1; 4096]);
    assert_eq!(session_reads(&mut e, &format!("disk@{second}"), &[], t0 + Duration::from_secs(601)), clean);
    assert_eq!(e.registry.counters.get(Counter::NbdDroppedNewBoot), 1);
    assert_eq!(e.registry.counts(), (1, 0));
    // In the default "bound" mode an expired token still starts a boot (any id may).
    assert_eq!(session_reads(&mut e, &format!("disk@{expired}"), &write_then_read(0, 4096, 0xC3), t0), vec![0xC3; 4096]);
    assert_eq!(session_reads(&mut e, &format!("disk@{expired}"), &[], t0 + Duration::from_secs(1)), vec![0xC3; 4096]);
}

/// nbd.target_ids = "token": an expired token cannot start a boot, but the boot it started
/// reconnects to its writes after the expiry (a Linux root that lost its server for hours).
#[test]
fn an_expired_token_reconnects_its_boot_and_starts_none() {
    let f = fixture("token-expiry", "target_ids = \"token\"");
    let mut e = env(&f);
    let t0 = Instant::now();
    let mac = crate::nbd::token::parse_mac("aa:bb:cc:dd:ee:07").unwrap();
    let ip = peer().ip();
    let live = crate::nbd::token::issue(&KEY, [4; 16], 1_800_000_010, mac, ip, "disk");
    let other = crate::nbd::token::issue(&KEY, [5; 16], 1_800_000_010, mac, ip, "disk");
    assert_eq!(session_reads(&mut e, &format!("disk@{live}"), &write_then_read(0, 4096, 0xD4), t0), vec![0xD4; 4096]);
    e.unix = 1_800_003_600; // both tokens expired an hour ago
    assert_eq!(session_reads(&mut e, &format!("disk@{live}"), &[], t0 + Duration::from_secs(3600)), vec![0xD4; 4096]);
    assert_eq!(e.counters.get(Counter::NbdRefusedToken), 0);
    let run = drive(&mut e, &export_name(1 | 2, &format!("disk@{other}"), &[]), &[], t0 + Duration::from_secs(3601));
    assert_eq!(run.out.len(), 18, "an expired token starts no boot (EXPORT_NAME: closed)");
    assert_eq!(e.counters.get(Counter::NbdRefusedToken), 1);
    assert_eq!(
        session_reads(&mut e, &format!("disk@{live}"), &[], t0 + Duration::from_secs(3602)),
        vec![0xD4; 4096],
        "nor drops the live boot"
    );
}

/// With nbd.trace_dir, a connection that reached an export hands out its trace at the close:
/// the header names connection, client, export, target, boot and disk size, then one line per
/// request in order (handshake options are not requests). A full writer queue or the file's
/// byte limit drops lines, counted.
#[test]
fn a_traced_connection_hands_out_one_line_per_request() {
    let f = fixture("trace", "trace_dir = \"traces\"");
    let mut e = env(&f);
    let mut stream = client_flags(1 | 2);
    stream.extend(go("disk@m1#b1"));
    stream.extend(request(wire::CMD_READ, 0, 1, 8192, 4096));
    stream.extend(request(wire::CMD_WRITE, 0, 2, 4096, 512));
    stream.extend(vec![0xEE; 512]);
    stream.extend(request(wire::CMD_FLUSH, 0, 3, 0, 0));
    stream.extend(request(wire::CMD_TRIM, 0, 4, 0, 4096));
    stream.extend(request(wire::CMD_DISC, 0, 5, 0, 0));
    let t0 = Instant::now();
    drive(&mut e, &stream, &[40, 77], t0);
    let chunks = std::mem::take(&mut *e.traced.lock().unwrap());
    assert_eq!(chunks.len(), 1, "one chunk, at the close");
    let c = &chunks[0];
    assert!(c.last && c.lines == 5, "{c:?}");
    let dir = std::fs::canonicalize(f.dir.join("traces")).unwrap();
    assert_eq!(c.path, dir.join("nbd-1800000000000-42-m1.csv"));
    let text = String::from_utf8(c.bytes.clone()).unwrap();
    let want = format!(
        "# bootfarm nbd trace: connection=42 client={} export=disk target=m1 boot=b1 disk_bytes={SIZE} connected_unix_ms=1800000000000\n\
         us,op,offset,length\n0,r,8192,4096\n0,w,4096,512\n0,f,0,0\n0,t,0,4096\n0,d,0,0\n",
        peer()
    );
    assert_eq!(text, want);
    assert_eq!(e.counters.get(Counter::NbdTraceDropped), 0);

    // The writer's queue is full: the chunk's lines are counted as dropped.
    let mut e = env(&f);
    e.trace_full = true;
    drive(&mut e, &stream, &[], t0);
    assert_eq!(e.counters.get(Counter::NbdTraceDropped), 5);

    // Without nbd.trace_dir nothing is traced.
    let g = fixture("notrace", "");
    let mut e = env(&g);
    drive(&mut e, &stream, &[], t0);
    assert!(e.traced.lock().unwrap().is_empty());

    // At nbd.trace_bytes_max (its floor, 4096) the file stops: the rest is dropped, counted.
    let h = fixture("tracemax", "trace_dir = \"traces\"\ntrace_bytes_max = 4096");
    let mut e = env(&h);
    let mut stream = client_flags(1 | 2);
    stream.extend(go("disk@m1"));
    for i in 0..1000 {
        stream.extend(request(wire::CMD_READ, 0, i, 0, 512));
    }
    drive(&mut e, &stream, &[], t0);
    let chunks = std::mem::take(&mut *e.traced.lock().unwrap());
    let (lines, bytes) = chunks.iter().fold((0, 0), |(l, b), c| (l + c.lines, b + c.bytes.len()));
    let dropped = e.counters.get(Counter::NbdTraceDropped);
    assert!(bytes <= 4096 && bytes > 4096 - 16 && dropped > 0, "{bytes} bytes, {dropped} dropped");
    assert_eq!(lines + dropped, 1000);
}
