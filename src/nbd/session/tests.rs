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

/// The handshake of a client of the private vdisk `priv`.
fn priv_go() -> Vec<u8> {
    let mut v = client_flags(1 | 2);
    v.extend(go("priv"));
    v
}

// --- plain newstyle (busybox) and boots --------------------------------------------------

/// An EXPORT_NAME stream (client flags `flags`) for `name`, then `rest`.
fn export_name(flags: u32, name: &str, rest: &[u8]) -> Vec<u8> {
    let mut v = client_flags(flags);
    v.extend(opt(wire::OPT_EXPORT_NAME, name.as_bytes()));
    v.extend_from_slice(rest);
    v
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

mod data;
mod hostile;
mod writers;
