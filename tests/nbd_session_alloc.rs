//! The NBD session's data path allocates nothing per request: READ replies point at the image
//! mapping and at cache pages, the batch's vectors and the read scratch are reused, WRITEs to
//! cached blocks land in place. A binary of its own because it counts with a global allocator
//! (counting only on the thread under test), which would otherwise count every unit test.

use bootfarm::config::{self, Overrides, Snapshot};
use bootfarm::metrics::{Counter, WorkerCounters};
use bootfarm::nbd::session::{Env, Session};
use bootfarm::nbd::target::Registry;
use bootfarm::nbd::wire;
use bootfarm::session::{ConnScope, TcpSession};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

// Safety: forwards to the system allocator; the count is a relaxed add.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if COUNTING.with(|c| c.get()) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        if COUNTING.with(|c| c.get()) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static A: Counting = Counting;

/// Allocations `f` makes on this thread.
fn allocations(f: impl FnOnce()) -> u64 {
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    COUNTING.with(|c| c.set(true));
    f();
    COUNTING.with(|c| c.set(false));
    ALLOCATIONS.load(Ordering::Relaxed) - before
}

struct TestEnv {
    snap: Arc<Snapshot>,
    registry: Registry,
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
    fn count(&self, c: Counter, n: u64) {
        self.counters.add(c, n);
    }
    fn farm_place(&self, _: &str, _: &str, _: IpAddr, _: Instant) -> Vec<usize> {
        vec![0]
    }
    fn token_key(&self) -> [u8; 16] {
        [7; 16]
    }
    fn now_unix(&self) -> u64 {
        0
    }
    fn trace_start(&self) -> (u64, u64) {
        panic!("nbd.trace_dir is not set in this test")
    }
    fn trace_out(&self, _: bootfarm::nbd::trace::Chunk) -> bool {
        panic!("nbd.trace_dir is not set in this test")
    }
}

fn opt(o: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = wire::IHAVEOPT.to_be_bytes().to_vec();
    v.extend_from_slice(&o.to_be_bytes());
    v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    v.extend_from_slice(payload);
    v
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

/// Offers `rx` until all is taken, sending (and releasing) every batch; returns the bytes sent.
fn exchange(s: &mut Session<TestEnv>, e: &mut TestEnv, mut rx: &[u8], now: Instant) -> u64 {
    let mut sent = 0;
    for _ in 0..10_000 {
        let n = s.on_input(e, rx, now);
        rx = &rx[n..];
        match s.poll_transmit(e, now) {
            Some(b) => {
                sent += b.len;
                s.on_released(e, now);
            }
            None if rx.is_empty() => return sent,
            None => assert!(n > 0, "no progress"),
        }
    }
    panic!("no end");
}

#[test]
fn the_data_path_allocates_nothing_per_request() {
    assert_eq!(allocations(|| drop(std::hint::black_box(vec![1u8; 10]))), 1, "the counter counts");
    let dir = std::env::temp_dir().join(format!("bootfarm-nbd-alloc-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("boot")).unwrap();
    std::fs::write(dir.join("disk.raw"), (0..4u32 << 20).map(|i| (i >> 9) as u8).collect::<Vec<u8>>()).unwrap();
    let text = "[tftp]\nroot = \"boot\"\n[nbd]\ncache_dir = \"cache\"\n[[vdisk]]\nname = \"disk\"\npath = \"disk.raw\"\n";
    let snap = config::from_text(&dir.join("bootfarm.toml"), text, &Overrides::default(), 1, None).unwrap();
    let mut e = TestEnv { snap: Arc::new(snap), registry: Registry::default(), counters: WorkerCounters::default() };
    let now = Instant::now();
    let peer: SocketAddr = "192.0.2.9:5000".parse().unwrap();
    for structured in [false, true] {
        let mut s = Session::new(&e, peer, now);
        let mut hs = (1u32 | 2).to_be_bytes().to_vec();
        if structured {
            hs.extend(opt(wire::OPT_STRUCTURED_REPLY, &[]));
        }
        let mut go = 4u32.to_be_bytes().to_vec();
        go.extend_from_slice(b"disk\0\0");
        hs.extend(opt(wire::OPT_GO, &go));
        exchange(&mut s, &mut e, &hs, now);
        // Blocks 256..512 go into the cache (their pages are allocated here, once).
        let mut w = request(wire::CMD_WRITE, 0, 1, 1 << 20, 1 << 20);
        w.extend(std::iter::repeat_n(9u8, 1 << 20));
        exchange(&mut s, &mut e, &w, now);
        // One round: reads of the image and of cache pages, one by one and pipelined, a
        // write over cached blocks, a flush, a zero run read as a hole.
        let mut round = Vec::new();
        for i in 0..64u64 {
            round.extend(request(wire::CMD_READ, 0, i, (i * 37_000) % (4 << 20), 4096 + (i as u32 % 5) * 512));
        }
        round.extend(request(wire::CMD_WRITE, 0, 100, (1 << 20) + 8192, 8192));
        round.extend(std::iter::repeat_n(3u8, 8192));
        round.extend(request(wire::CMD_FLUSH, 0, 101, 0, 0));
        round.extend(request(wire::CMD_READ, 0, 102, 0, 1 << 20));
        let one: Vec<Vec<u8>> = (0..64u64).map(|i| request(wire::CMD_READ, 0, i, (1 << 20) + i * 4096, 4096)).collect();
        // Warm up: the vectors grow to their working size.
        for _ in 0..3 {
            exchange(&mut s, &mut e, &round, now);
            for r in &one {
                exchange(&mut s, &mut e, r, now);
            }
        }
        let mut sent = 0;
        let n = allocations(|| {
            for _ in 0..100 {
                sent += exchange(&mut s, &mut e, &round, now);
                for r in &one {
                    sent += exchange(&mut s, &mut e, r, now);
                }
            }
        });
        assert!(sent > 100 * (64 * 4096 + (1 << 20)), "{sent} bytes answered");
        assert_eq!(n, 0, "allocations in 100 rounds of 131 requests (structured {structured})");
        s.on_eof(&mut e, now);
        s.on_closed(&mut e, false, now);
    }
    assert_eq!(e.counters.get(Counter::NbdErrors), 0);
    let _ = std::fs::remove_dir_all(&dir);
}
