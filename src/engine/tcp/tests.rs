//! The driver on a real ring and real loopback sockets, with a small line protocol of the
//! test's own (each line asks for a reply of a given shape), so that what is checked is the
//! driver: sends over IOV_MAX pieces, SEND_ZC, direct sends, wake, deadlines, eviction.

use super::*;
use crate::config::Snapshot;
use crate::engine::ring;
use crate::engine::token::ServiceId;
use crate::session::{Batch, TcpProtocol};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::AtomicBool;

const DIGITS: &[u8; 10] = b"0123456789";

#[derive(Default)]
struct LineCtx {
    current: Option<ConnKey>,
    waiting: Vec<ConnKey>,
    ready: bool,
}

impl ConnScope for LineCtx {
    fn enter(&mut self, conn: ConnKey) {
        self.current = Some(conn);
    }
}

/// "N\n": N one-byte pieces then "\n"; "zeros\n": 1 MiB of zeros; "wait\n": "woke\n" once
/// the context is ready; "quit\n": "bye\n" and close; "cutme\n": "marked\n", and the
/// connection is one an operator's cut (a change of `CUTS`) closes. A connection without a
/// line for 300 ms is done.
struct Lines {
    batch: Batch,
    held: bool,
    reply: Option<Vec<u8>>,
    waiting: bool,
    done: bool,
    last: Instant,
    lines: u64,
    why: &'static str,
    cut: bool,
}

/// The line service's operators' cuts generation (only the cut test changes it).
static CUTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl TcpSession for Lines {
    type Ctx = LineCtx;

    fn on_input(&mut self, ctx: &mut LineCtx, input: &[u8], now: Instant) -> usize {
        let Some(end) = input.iter().position(|&b| b == b'\n') else { return 0 };
        if self.held || self.waiting || self.reply.is_some() {
            return 0;
        }
        self.last = now;
        self.lines += 1;
        self.batch.clear();
        match &input[..end] {
            b"quit" => {
                self.batch.copy(b"bye\n");
                self.done = true;
            }
            b"zeros" => self.batch.zeros(1 << 20),
            b"cutme" => {
                self.cut = true;
                self.batch.copy(b"marked\n");
            }
            b"wait" => {
                self.waiting = true;
                ctx.waiting.push(ctx.current.unwrap());
                return end + 1;
            }
            n => {
                let n: usize = std::str::from_utf8(n).unwrap().parse().unwrap();
                for i in 0..n {
                    self.batch.mem(&DIGITS[i % 10..i % 10 + 1]);
                }
                self.batch.copy(b"\n");
            }
        }
        self.reply = Some(Vec::new());
        end + 1
    }
    fn wants_input(&self) -> bool {
        !(self.held || self.waiting || self.done)
    }
    fn on_eof(&mut self, _: &mut LineCtx, _: Instant) {
        self.done = true;
    }
    fn poll_transmit(&mut self, ctx: &mut LineCtx, _: Instant) -> Option<&Batch> {
        if self.waiting && ctx.ready {
            self.waiting = false;
            self.batch.clear();
            self.batch.copy(b"woke\n");
            self.reply = Some(Vec::new());
        }
        self.reply.take()?;
        self.held = true;
        Some(&self.batch)
    }
    fn on_released(&mut self, _: &mut LineCtx, now: Instant) {
        self.held = false;
        self.last = now;
    }
    fn poll_timeout(&self) -> Option<Instant> {
        (!self.held && !self.waiting).then_some(self.last + Duration::from_millis(300))
    }
    fn on_timeout(&mut self, _: &mut LineCtx, now: Instant) {
        if now >= self.last + Duration::from_millis(300) && !self.held {
            self.done = true;
            self.why = "no line in time";
        }
    }
    fn on_drain(&mut self, _: &mut LineCtx, _: Instant) {
        self.done = true;
    }
    fn is_done(&self) -> bool {
        self.done
    }
    fn idle_since(&self) -> Option<Instant> {
        (!self.held && !self.waiting && self.reply.is_none()).then_some(self.last)
    }
    fn close_reason(&self) -> &'static str {
        self.why
    }
    fn cut_requested(&self) -> bool {
        self.cut
    }
    fn requests(&self) -> u64 {
        self.lines
    }
    fn on_closed(&mut self, _: &mut LineCtx, _: bool, _: Instant) {}
}

struct LineProto {
    spec: TcpSpec,
    limits: TcpLimits,
}

impl TcpProtocol for LineProto {
    type Session = Lines;
    fn open(&mut self, _: &mut LineCtx, _: SocketAddr, now: Instant) -> Lines {
        Lines { batch: Batch::default(), held: false, reply: None, waiting: false, done: false, last: now, lines: 0, why: "", cut: false }
    }
    fn refusal(&mut self, _: &mut LineCtx, _: Refusal, out: &mut Vec<u8>) {
        out.extend_from_slice(b"busy\n");
    }
}

impl TcpGlue for LineProto {
    fn spec(&self) -> &TcpSpec {
        &self.spec
    }
    fn limits(&self, _: &Snapshot) -> TcpLimits {
        self.limits
    }
    fn refresh(_: &mut LineCtx, _: &Arc<Snapshot>) {}
    fn cuts(&self, _: &Shared) -> Option<(u64, Counter)> {
        Some((CUTS.load(Ordering::Acquire), Counter::NbdOperatorCut))
    }
}

/// A worker with the one line service, run on this thread until `client` returns.
fn serve<T: Send>(limits: TcpLimits, client: impl FnOnce(SocketAddr) -> T + Send) -> (T, Arc<WorkerStats>) {
    let d = std::env::temp_dir().join(format!("bootfarm-tcp-{}-{:?}", std::process::id(), std::thread::current().id()));
    std::fs::create_dir_all(d.join("root")).unwrap();
    let snap = crate::config::from_text(&d.join("b.toml"), "[tftp]\nroot = \"root\"\n", &Default::default(), 1, None).unwrap();
    let store = Arc::new(crate::config::Store::new(snap));
    let stats = Arc::new(WorkerStats::default());
    let shared = Arc::new(Shared {
        store: store.clone(),
        draining: AtomicBool::new(false),
        workers: vec![stats.clone()],
        grace: Duration::from_secs(1),
        tftp_admission: Default::default(),
        tftp_rate: Default::default(),
        http_admission: Default::default(),
        nbd_admission: Default::default(),
        nbd_evictions: Default::default(),
        iscsi_admission: Default::default(),
        iscsi_evictions: Default::default(),
        nbd_targets: Default::default(),
        iscsi_reservations: Default::default(),
        farm: Default::default(),
        console: Default::default(),
        nbd_trace: Default::default(),
    });
    let listener = bind_listener("127.0.0.1:0".parse().unwrap()).unwrap();
    let at = listener.local_addr().unwrap().as_socket().unwrap();
    let r = ring::build().unwrap();
    let n = ring::register_file_table(&r).min(8);
    let bufs = ring::BufRing::new(&r, 0, 8, 256).unwrap();
    let mut io = Io::new(r, bufs, store, Instant::now());
    let spec = TcpSpec {
        service: ServiceId::Nbd,
        name: "line",
        counters: TcpCounters {
            accept_errors: Counter::NbdAcceptErrors,
            connections: Counter::NbdConnections,
            refused_total: Counter::NbdRefusedLimit,
            refused_per_ip: Counter::NbdRefusedPerIp,
            idle_evicted: Counter::NbdIdleEvicted,
            timeout_send: Counter::NbdTimeoutSend,
            damaged: Counter::NbdDamaged,
            sent_bytes: Counter::NbdSentBytes,
        },
        rbuf_initial: 64,
        direct_send_max: 4096,
        evict: Evict::Shared(|s| &s.nbd_evictions),
        admission: |s| &s.nbd_admission,
        gauge: None,
        keys: ("line.connections_max", "line.connections_per_ip_max"),
        refusal_note: "test",
    };
    let mut tcp = Tcp::new(LineProto { spec, limits }, LineCtx::default(), listener, shared, 0, FileSlots::new(0..n));
    let release = AtomicBool::new(false);
    let out = std::thread::scope(|s| {
        let h = s.spawn(|| {
            let r = client(at);
            release.store(true, Ordering::Relaxed);
            r
        });
        let t0 = Instant::now();
        let mut expired = Vec::new();
        while !h.is_finished() {
            assert!(t0.elapsed() < Duration::from_secs(30), "the client did not finish");
            let ts = io_uring::types::Timespec::from(Duration::from_millis(2));
            let _ = io.ring.submitter().submit_with_args(1, &io_uring::types::SubmitArgs::new().timespec(&ts));
            io.now = Instant::now();
            let cqes: Vec<_> = io.ring.completion().map(|c| (c.user_data(), c.result(), c.flags())).collect();
            for (u, res, flags) in cqes {
                tcp.on_completion(&mut io, Token::unpack(u), res, flags);
            }
            expired.clear();
            io.wheel.advance(io.now, &mut expired);
            for t in expired.drain(..) {
                tcp.on_timer(&mut io, t);
            }
            // A waiting connection is woken after the client saw it get nothing for a while.
            if !tcp.ctx().waiting.is_empty() && t0.elapsed() > Duration::from_millis(400) {
                tcp.ctx().ready = true;
                for k in std::mem::take(&mut tcp.ctx().waiting) {
                    tcp.wake(k);
                }
            }
            tcp.flush(&mut io);
        }
        h.join().unwrap()
    });
    let _ = release;
    tcp.abort_all(&mut io);
    (out, stats)
}

fn limits() -> TcpLimits {
    TcpLimits {
        connections_max: 64,
        connections_per_ip_max: 64,
        rbuf_max: 256,
        send_timeout: Duration::from_millis(300),
        send_zc_min_bytes: 512 * 1024,
        idle_evict: Duration::ZERO,
    }
}

fn line(s: &mut TcpStream, ask: &str) -> Vec<u8> {
    s.write_all(ask.as_bytes()).unwrap();
    let mut got = Vec::new();
    let mut b = [0u8; 65536];
    while !got.ends_with(b"\n") {
        let n = s.read(&mut b).unwrap();
        assert!(n > 0, "closed while waiting for the reply to {ask:?}");
        got.extend_from_slice(&b[..n]);
    }
    got
}

#[test]
fn batches_past_iov_max_zero_copy_and_direct_sends_arrive_whole() {
    let (_, stats) = serve(limits(), |at| {
        let mut s = TcpStream::connect(at).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        for n in [1usize, 10, IOV_MAX - 1, IOV_MAX, IOV_MAX + 1, 3000] {
            let got = line(&mut s, &format!("{n}\n"));
            let want: Vec<u8> = (0..n).map(|i| DIGITS[i % 10]).chain([b'\n']).collect();
            assert_eq!(got, want, "{n} pieces");
        }
        // 1 MiB of zeros: over send_zc_min_bytes, so SEND_ZC; the next reply waits for its
        // notification, then comes in order.
        s.write_all(b"zeros\n3\n").unwrap();
        let mut got = vec![0u8; (1 << 20) + 4];
        s.read_exact(&mut got).unwrap();
        assert!(got[..1 << 20].iter().all(|&b| b == 0));
        assert_eq!(&got[1 << 20..], b"012\n");
        assert_eq!(line(&mut s, "quit\n"), b"bye\n");
        let mut b = [0u8; 1];
        assert_eq!(s.read(&mut b).unwrap(), 0, "closed after quit");
    });
    let sent = stats.counters.get(Counter::NbdSentBytes);
    assert_eq!(sent, 2 + 11 + 1024 + 1025 + 1026 + 3001 + (1 << 20) + 4 + 4, "every byte counted once");
}

#[test]
fn a_session_waiting_for_a_resource_is_polled_again_when_woken() {
    serve(limits(), |at| {
        let mut s = TcpStream::connect(at).unwrap();
        s.write_all(b"wait\n").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let mut b = [0u8; 8];
        assert!(s.read(&mut b).is_err(), "nothing before the wake");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = [0u8; 5];
        s.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"woke\n");
    });
}

#[test]
fn deadlines_close_silent_and_stalled_connections() {
    let (_, stats) = serve(limits(), |at| {
        // Silent: the session's own deadline (300 ms) closes it.
        let mut quiet = TcpStream::connect(at).unwrap();
        quiet.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let t0 = Instant::now();
        assert_eq!(quiet.read(&mut [0u8; 1]).unwrap(), 0);
        assert!(t0.elapsed() >= Duration::from_millis(250), "{:?}", t0.elapsed());
        // Never reads 8 MiB of replies: the send deadline (300 ms without progress) cuts it.
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.set_recv_buffer_size(4096).unwrap();
        s.connect(&at.into()).unwrap();
        let mut s: TcpStream = s.into();
        s.write_all(&b"zeros\n".repeat(8)).unwrap();
        std::thread::sleep(Duration::from_millis(1500));
    });
    assert_eq!(stats.counters.get(Counter::NbdTimeoutSend), 1);
}

#[test]
fn a_refusal_at_the_limit_has_an_idle_connection_cut_for_the_retry() {
    let l = TcpLimits { connections_max: 2, ..limits() };
    let (_, stats) = serve(l, |at| {
        let mut a = TcpStream::connect(at).unwrap();
        a.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(line(&mut a, "1\n"), b"0\n");
        let mut b = TcpStream::connect(at).unwrap();
        b.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(line(&mut b, "2\n"), b"01\n");
        // Both busy talking (idle for less than the session's 300 ms deadline); a third is
        // refused with the protocol's bytes, and the longest-idle one is cut for its retry.
        let mut c = TcpStream::connect(at).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = Vec::new();
        c.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"busy\n");
        assert_eq!(a.read(&mut [0u8; 1]).unwrap(), 0, "the longest-idle connection was cut");
        let mut retry = TcpStream::connect(at).unwrap();
        retry.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(line(&mut retry, "3\n"), b"012\n");
        assert_eq!(line(&mut b, "1\n"), b"0\n", "the other one still serves");
    });
    assert_eq!(stats.counters.get(Counter::NbdRefusedLimit), 1);
    assert_eq!(stats.counters.get(Counter::NbdIdleEvicted), 1);
}

/// An operator's cut: when the glue's generation changes, the connections whose session asks
/// to be cut are closed (counted), the others keep being served; an unchanged generation cuts
/// nothing, however often the driver passes.
#[test]
fn an_operator_cut_closes_the_connections_that_ask_for_it_and_only_those() {
    let (_, stats) = serve(limits(), |at| {
        let mut a = TcpStream::connect(at).unwrap();
        let mut b = TcpStream::connect(at).unwrap();
        for s in [&a, &b] {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        }
        assert_eq!(line(&mut a, "cutme\n"), b"marked\n");
        assert_eq!(line(&mut a, "1\n"), b"0\n", "marked, but nothing cut before the generation changes");
        // b talks just before and after (a session is done after 300 ms without a line).
        assert_eq!(line(&mut b, "1\n"), b"0\n");
        CUTS.fetch_add(1, Ordering::AcqRel);
        assert_eq!(a.read(&mut [0u8; 1]).unwrap(), 0, "the marked connection was cut");
        assert_eq!(line(&mut b, "2\n"), b"01\n", "the other one still serves");
    });
    assert_eq!(stats.counters.get(Counter::NbdOperatorCut), 1);
}

/// A grown receive buffer stays while it keeps being needed (an iSCSI initiator's 64 KiB
/// writes between small commands: freeing and growing it again zero-filled and faulted in
/// 128 KiB per write, 15% of the mix's CPU) and goes back to the initial size once it has not
/// been for RBUF_SHRINK_AFTER.
#[test]
fn a_grown_receive_buffer_shrinks_only_after_it_was_not_needed_for_a_while() {
    let t0 = Instant::now();
    assert!(!rbuf_shrinks(64, 64, None, t0), "the initial size is kept");
    assert!(rbuf_shrinks(128, 64, None, t0), "grown, never marked: shrinks");
    assert!(!rbuf_shrinks(128, 64, Some(t0), t0 + RBUF_SHRINK_AFTER / 2), "needed just now: kept");
    assert!(rbuf_shrinks(128, 64, Some(t0), t0 + RBUF_SHRINK_AFTER), "not needed for a while: shrinks");
    assert!(!rbuf_shrinks(128, 64, Some(t0 + RBUF_SHRINK_AFTER), t0), "a clock before the mark keeps it");
}
