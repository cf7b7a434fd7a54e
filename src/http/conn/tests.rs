//! The connection driven as the engine drives it, with a test context over a real store in a
//! temp dir: pipelined requests split anywhere, bounded body batches, refusals, deadlines,
//! event streams and the console's token-checked actions.

use super::*;
use crate::config::Snapshot;
use crate::image::Backing;
use crate::rng::XorShift;
use std::path::PathBuf;
use std::sync::Arc;

const NOW_UNIX: i64 = 1_700_000_000;

/// The routes' environment over a real snapshot and real file mappings (a boot root in a
/// temporary folder); the farm is not configured, so its routes are not asked here.
struct TestCtx {
    snap: Arc<Snapshot>,
    client: IpAddr,
    counts: std::cell::RefCell<Vec<(Counter, u64)>>,
    /// Requests for a file answered "being opened" before it is served.
    opening: usize,
    console: console::State,
    draining: bool,
}

impl ConnScope for TestCtx {}
impl Ctx for TestCtx {
    fn serve_client(&mut self, ip: IpAddr) {
        self.client = ip;
    }
    fn count(&self, c: Counter, n: u64) {
        self.counts.borrow_mut().push((c, n));
    }
}
impl Env for TestCtx {
    fn snapshot(&self) -> &Arc<Snapshot> {
        &self.snap
    }
    fn draining(&self) -> bool {
        self.draining
    }
    fn now_unix(&self) -> i64 {
        NOW_UNIX
    }
    fn metrics(&self) -> String {
        "bootfarm_test 1\n".into()
    }
    fn sessions(&self) -> (u64, u64) {
        (0, 1)
    }
    fn file(&mut self, name: &[u8]) -> Result<Option<(Arc<Backing>, u64, i64)>, crate::bootfiles::Refused> {
        use std::os::unix::fs::MetadataExt;
        if self.opening > 0 {
            // As the engine's context while the file is opened through the ring.
            self.opening -= 1;
            return Ok(None);
        }
        let path = self.snap.tftp_root.join(crate::bootfiles::normalise(name)?);
        let m = std::fs::metadata(&path).map_err(|_| crate::bootfiles::Refused::NotFound)?;
        let b = Backing::map(&path).map_err(|_| crate::bootfiles::Refused::Unreadable)?;
        Ok(Some((Arc::new(b), m.ino(), m.mtime())))
    }
    fn client_ip(&self) -> IpAddr {
        self.client
    }
    fn farm_health(&self) -> crate::farm::Health {
        unreachable!("no /healthz in these tests")
    }
    fn farm_place(&self, _: &str, _: &str) -> Vec<usize> {
        Vec::new()
    }
    fn farm_touch(&self, _: &str, _: &str) {}
    fn farm_status_json(&self) -> String {
        "{}".into()
    }
    fn count_damaged(&self) {}
    fn console_json(&self) -> String {
        let drained = self.console.drained.load(std::sync::atomic::Ordering::Relaxed);
        let actions = self.snap.config.console.token.is_some();
        console::live_json(&[], (0, 0), &[], &Default::default(), self.console.events_open(), drained, actions)
    }
    fn events_acquire(&self) -> bool {
        self.console.events_acquire(self.snap.config.console.events_max)
    }
    fn events_release(&self) {
        self.console.events_release();
    }
    fn set_drained(&self, drained: bool) {
        self.console.drained.store(drained, std::sync::atomic::Ordering::Relaxed);
    }
}

fn root() -> &'static PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("bootfarm-httpconn-{}", std::process::id()));
        std::fs::create_dir_all(d.join("root")).unwrap();
        let mut r = XorShift::new(7);
        let small: Vec<u8> = (0..1000).map(|_| r.next() as u8).collect();
        std::fs::write(d.join("root/hello.bin"), small).unwrap();
        let big: Vec<u8> = (0..(9 << 20) + 123).map(|i: u32| (i % 251) as u8).collect();
        std::fs::write(d.join("root/big.bin"), big).unwrap();
        d
    })
}

fn ctx(extra: &str) -> TestCtx {
    let d = root();
    let text = format!("[tftp]\nroot = \"root\"\n[http]\nheader_timeout_ms = 1000\nkeepalive_idle_ms = 5000\n{extra}");
    let snap = crate::config::from_text(&d.join("bootfarm.toml"), &text, &Default::default(), 1, None).unwrap();
    TestCtx {
        snap: Arc::new(snap),
        client: IpAddr::from([0, 0, 0, 0]),
        counts: Default::default(),
        opening: 0,
        console: Default::default(),
        draining: false,
    }
}

/// The driver's part, without sockets: offers what was received, collects batches and
/// releases them at once (a client that reads everything).
struct Wire {
    conn: ConnFor<TestCtx>,
    ctx: TestCtx,
    pending: Vec<u8>,
    out: Vec<u8>,
    batches: usize,
}

impl Wire {
    fn new(ctx: TestCtx, now: Instant) -> Wire {
        let mut ctx = ctx;
        let conn = ConnFor::new(&mut ctx, IpAddr::from([10, 0, 0, 1]), now);
        Wire { conn, ctx, pending: Vec::new(), out: Vec::new(), batches: 0 }
    }

    fn recv(&mut self, bytes: &[u8], now: Instant) {
        self.pending.extend_from_slice(bytes);
        self.pump(now);
    }

    fn pump(&mut self, now: Instant) {
        for _ in 0..10_000 {
            let mut progress = false;
            if !self.pending.is_empty() && self.conn.wants_input() {
                let n = self.conn.on_input(&mut self.ctx, &self.pending, now);
                assert!(n <= self.pending.len());
                self.pending.drain(..n);
                progress |= n > 0;
            }
            if let Some(b) = self.conn.poll_transmit(&mut self.ctx, now) {
                assert!(b.pieces.len() <= Batch::PIECES_MAX);
                // Safety: the memory of a held batch is alive until on_released.
                self.out.extend_from_slice(&unsafe { b.to_vec() });
                self.batches += 1;
                self.conn.on_released(&mut self.ctx, now);
                progress = true;
            }
            if !progress || self.conn.is_done() {
                return;
            }
        }
        panic!("no end to the exchange");
    }

    fn statuses(&self) -> Vec<u16> {
        let text = String::from_utf8_lossy(&self.out);
        text.match_indices("HTTP/1.1 ").filter_map(|(i, _)| text.get(i + 9..i + 12)?.parse().ok()).collect()
    }
}

fn pipelined() -> Vec<u8> {
    let mut s = Vec::new();
    s.extend_from_slice(b"GET /boot/hello.bin HTTP/1.1\r\nHost: a\r\n\r\n");
    s.extend_from_slice(b"HEAD /boot/hello.bin HTTP/1.1\r\nHost: a\r\n\r\n");
    s.extend_from_slice(b"GET /nope HTTP/1.1\r\nHost: a\r\n\r\n");
    s.extend_from_slice(b"GET /boot/hello.bin HTTP/1.1\r\nHost: a\r\nRange: bytes=10-19\r\n\r\n");
    s.extend_from_slice(b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n");
    s.extend_from_slice(b"GET /boot/hello.bin HTTP/1.0\r\n\r\n");
    // After a request that closes: never answered.
    s.extend_from_slice(b"GET /boot/hello.bin HTTP/1.1\r\nHost: a\r\n\r\n");
    s
}

fn run(chunks: &[&[u8]]) -> Wire {
    let t0 = Instant::now();
    let mut w = Wire::new(ctx(""), t0);
    for c in chunks {
        w.recv(c, t0);
    }
    w
}

/// A /boot request whose file is still being opened gets no answer and stays unread (a
/// request pipelined behind it waits too); once woken the connection answers both, in order.
#[test]
fn a_request_waiting_for_its_file_is_answered_when_woken() {
    let t0 = Instant::now();
    let mut c = ctx("");
    c.opening = 1;
    let mut w = Wire::new(c, t0);
    let req = b"GET /boot/hello.bin HTTP/1.1\r\nHost: a\r\n\r\nGET /boot/hello.bin HTTP/1.1\r\nHost: a\r\n\r\n";
    w.recv(req, t0);
    assert!(w.out.is_empty(), "nothing is sent while the file is opened");
    assert_eq!(w.pending.len(), req.len(), "the request stays in the buffer");
    assert!(w.conn.wants_input() && !w.conn.is_done());
    // The driver polls the connection again when the context wakes it.
    w.pump(t0);
    assert_eq!(w.statuses(), vec![200, 200]);
    assert!(w.pending.is_empty());
}

#[test]
fn pipelined_requests_get_the_same_replies_whatever_the_split() {
    let stream = pipelined();
    let whole = run(&[&stream]);
    assert_eq!(whole.statuses(), vec![200, 200, 404, 206, 200, 200], "{}", String::from_utf8_lossy(&whole.out));
    assert!(whole.conn.is_done(), "HTTP/1.0 without keep-alive closes");
    let file = std::fs::read(root().join("root/hello.bin")).unwrap();
    let text = &whole.out;
    let first_body = text.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(&text[first_body..first_body + 1000], &file[..], "the body is the file");
    for i in 0..=stream.len() {
        let w = run(&[&stream[..i], &stream[i..]]);
        assert_eq!(w.out, whole.out, "split at {i}");
    }
    let mut r = XorShift::new(42);
    for _ in 0..200 {
        let mut chunks = Vec::new();
        let mut at = 0;
        while at < stream.len() {
            let n = (1 + r.below(40) as usize).min(stream.len() - at);
            chunks.push(&stream[at..at + n]);
            at += n;
        }
        assert_eq!(run(&chunks).out, whole.out);
    }
}

#[test]
fn a_large_body_goes_out_in_bounded_batches_from_the_mapping() {
    let t0 = Instant::now();
    let mut w = Wire::new(ctx(""), t0);
    w.recv(b"GET /boot/big.bin HTTP/1.1\r\nHost: a\r\n\r\n", t0);
    let file = std::fs::read(root().join("root/big.bin")).unwrap();
    let start = w.out.windows(4).position(|x| x == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(w.out[start..], file[..]);
    assert_eq!(w.batches as u64, (file.len() as u64).div_ceil(BODY_BATCH_BYTES));
    assert!(!w.conn.is_done(), "keep-alive");
    assert_eq!(w.conn.requests(), 1);
    assert!(w.ctx.counts.borrow().contains(&(Counter::HttpResponses2xx, 1)));
}

#[test]
fn malformed_and_oversized_requests_get_their_status_then_a_close() {
    let long_uri = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(5000));
    let big_header = format!("GET / HTTP/1.1\r\nX: {}", "b".repeat(16 * 1024 + 10));
    let cases: [(&[u8], u16); 6] = [
        (b"GET / HTTP/2.0\r\n\r\n", 505),
        (b"POST /boot/hello.bin HTTP/1.1\r\nHost: a\r\n\r\n", 405),
        (long_uri.as_bytes(), 414),
        (big_header.as_bytes(), 431),
        (b"GET /boot/hello.bin HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", 413),
        (b"\x00\x01\x02garbage\r\n\r\n", 400),
    ];
    for (input, status) in cases {
        let w = run(&[input]);
        assert_eq!(w.statuses(), vec![status], "{:?}", String::from_utf8_lossy(&input[..input.len().min(60)]));
        assert!(w.conn.is_done(), "closed after {status}");
        assert!(w.ctx.counts.borrow().contains(&(Counter::HttpBadRequests, 1)));
    }
    // A request that parses but names nothing valid is the routes' 400: keep-alive goes on.
    let w = run(&[b"GET /%zz HTTP/1.1\r\nHost: a\r\n\r\n"]);
    assert_eq!(w.statuses(), vec![400]);
    assert!(!w.conn.is_done());
    // Seeded garbage, split anywhere: an error reply or nothing yet, never a panic.
    let mut r = XorShift::new(9);
    for _ in 0..300 {
        let n = r.below(600) as usize;
        let mut junk: Vec<u8> = (0..n).map(|_| r.next() as u8).collect();
        if r.chance(0.5) {
            junk.splice(0..0, b"GET /boot/hello.bin HTTP/1.1\r\n".iter().copied());
        }
        let cut = r.below(junk.len() as u64 + 1) as usize;
        let w = run(&[&junk[..cut], &junk[cut..]]);
        let s = w.statuses();
        assert!(s.len() <= 1 && s.iter().all(|s| [400, 405, 413, 414, 431, 505].contains(s)), "{s:?}");
        assert_eq!(w.conn.is_done(), s.len() == 1);
    }
}

#[test]
fn a_held_batch_stops_input_and_deadlines() {
    let t0 = Instant::now();
    let mut ctx = ctx("");
    let mut c = ConnFor::new(&mut ctx, IpAddr::from([10, 0, 0, 2]), t0);
    let req = b"GET /boot/hello.bin HTTP/1.1\r\nHost: a\r\n\r\n";
    assert_eq!(c.on_input(&mut ctx, req, t0), req.len());
    assert!(c.poll_transmit(&mut ctx, t0).is_some());
    // The client does not read: the batch stays with the driver. The session takes no
    // more input, has no deadline of its own (the driver's send deadline runs) and is
    // not idle.
    assert!(!c.wants_input());
    assert_eq!(c.on_input(&mut ctx, req, t0), 0);
    assert_eq!(c.poll_timeout(), None);
    assert_eq!(c.idle_since(), None);
    c.on_timeout(&mut ctx, t0 + Duration::from_secs(3600));
    assert!(!c.is_done());
    c.on_released(&mut ctx, t0);
    assert!(c.wants_input());
    assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_millis(5000)), "keep-alive idle from the end of the response");
}

#[test]
fn header_timeout_from_accept_then_from_the_first_byte_and_idle_timeout() {
    let t0 = Instant::now();
    let ms = Duration::from_millis;
    // Silent: closed at the header timeout from accept, no reply.
    let mut w = Wire::new(ctx(""), t0);
    assert_eq!(w.conn.poll_timeout(), Some(t0 + ms(1000)));
    w.conn.on_timeout(&mut w.ctx, t0 + ms(999));
    assert!(!w.conn.is_done(), "not before its deadline");
    w.conn.on_timeout(&mut w.ctx, t0 + ms(1000));
    assert!(w.conn.is_done() && w.out.is_empty());
    assert_eq!(w.conn.close_reason(), "no request within http.header_timeout_ms");
    // Slowloris: part of a header, then nothing: 408 and close.
    let mut w = Wire::new(ctx(""), t0);
    w.recv(b"GET /boot/hel", t0 + ms(500));
    assert_eq!(w.conn.poll_timeout(), Some(t0 + ms(1000)), "the first request's deadline runs from accept");
    w.conn.on_timeout(&mut w.ctx, t0 + ms(1000));
    w.pump(t0 + ms(1000));
    assert_eq!(w.statuses(), vec![408]);
    assert!(w.conn.is_done());
    assert!(w.ctx.counts.borrow().contains(&(Counter::HttpTimeoutHeader, 1)));
    // Keep-alive: idle deadline after a response; a new request's first byte starts a
    // header deadline; idle past keepalive_idle_ms closes without a reply.
    let mut w = Wire::new(ctx(""), t0);
    w.recv(b"GET /boot/hello.bin HTTP/1.1\r\nHost: a\r\n\r\n", t0);
    assert_eq!(w.conn.poll_timeout(), Some(t0 + ms(5000)));
    w.recv(b"GET /bo", t0 + ms(4000));
    assert_eq!(w.conn.poll_timeout(), Some(t0 + ms(5000)), "a keep-alive request's header deadline from its first byte");
    w.recv(b"ot/hello.bin HTTP/1.1\r\nHost: a\r\n\r\n", t0 + ms(4500));
    assert_eq!(w.statuses(), vec![200, 200]);
    let idle_from = t0 + ms(4500);
    assert_eq!(w.conn.poll_timeout(), Some(idle_from + ms(5000)));
    assert_eq!(w.conn.idle_since(), Some(idle_from));
    w.conn.on_timeout(&mut w.ctx, idle_from + ms(5000));
    assert!(w.conn.is_done());
    assert!(w.ctx.counts.borrow().contains(&(Counter::HttpTimeoutIdle, 1)));
    assert_eq!(w.statuses().len(), 2, "no reply to an idle close");
}

#[test]
fn end_of_input_finishes_the_response_then_closes_and_drain_closes_idle_ones() {
    let t0 = Instant::now();
    let mut ctx = ctx("");
    let mut c = ConnFor::new(&mut ctx, IpAddr::from([10, 0, 0, 3]), t0);
    let req = b"GET /boot/hello.bin HTTP/1.1\r\nHost: a\r\n\r\nGET /boot/hello.bin HTTP/1.1\r\n\r\n";
    let n = c.on_input(&mut ctx, req, t0);
    assert!(c.poll_transmit(&mut ctx, t0).is_some());
    c.on_eof(&mut ctx, t0);
    assert!(!c.is_done(), "the response under way is sent first");
    c.on_released(&mut ctx, t0);
    assert!(c.is_done());
    assert_eq!(c.on_input(&mut ctx, &req[n..], t0), 0, "no more answers");
    // Drain: an idle keep-alive connection is done at once, a busy one after its reply.
    let mut idle = ConnFor::new(&mut ctx, IpAddr::from([10, 0, 0, 4]), t0);
    idle.on_drain(&mut ctx, t0);
    assert!(idle.is_done());
    let mut busy = ConnFor::new(&mut ctx, IpAddr::from([10, 0, 0, 5]), t0);
    busy.on_input(&mut ctx, &req[..n], t0);
    assert!(busy.poll_transmit(&mut ctx, t0).is_some());
    busy.on_drain(&mut ctx, t0);
    assert!(!busy.is_done());
    busy.on_released(&mut ctx, t0);
    assert!(busy.is_done());
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Opens an event stream on a fresh connection and sends its header; returns the header.
fn open_stream(ctx: &mut TestCtx, c: &mut ConnFor<TestCtx>, t0: Instant) -> String {
    let req = b"GET /api/events HTTP/1.1\r\nHost: a\r\n\r\n";
    assert_eq!(c.on_input(ctx, req, t0), req.len());
    // Safety: the batch is held until on_released below.
    let head = text(&unsafe { c.poll_transmit(ctx, t0).unwrap().to_vec() });
    c.on_released(ctx, t0);
    head
}

/// Makes the event due at `at` and returns what it sends (the batch is released).
fn tick(ctx: &mut TestCtx, c: &mut ConnFor<TestCtx>, at: Instant) -> String {
    c.on_timeout(ctx, at);
    // Safety: as above.
    let out = text(&unsafe { c.poll_transmit(ctx, at).expect("an event at its deadline").to_vec() });
    c.on_released(ctx, at);
    out
}

#[test]
fn an_event_stream_sends_the_status_at_each_deadline_and_a_keepalive_when_nothing_changed() {
    let t0 = Instant::now();
    let ms = Duration::from_millis;
    let mut ctx = ctx("[console]\nevent_interval_ms = 500\n");
    let mut c = ConnFor::new(&mut ctx, IpAddr::from([10, 0, 0, 6]), t0);
    let head = open_stream(&mut ctx, &mut c, t0);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.contains("Content-Type: text/event-stream\r\n") && !head.contains("Content-Length"), "{head}");
    assert!(head.ends_with("\r\n\r\nretry: 2000\n\n"), "{head}");
    assert_eq!(ctx.console.events_open(), 1, "the stream holds a slot");
    assert!(!c.is_done() && !c.wants_input() && c.idle_since().is_none());
    assert_eq!(c.poll_timeout(), Some(t0), "the first event is due at once");
    assert!(c.poll_transmit(&mut ctx, t0).is_none(), "nothing before its deadline");
    let first = tick(&mut ctx, &mut c, t0);
    assert!(first.starts_with("data: {\"node\": \"node1\"") && first.ends_with("}\n\n"), "{first}");
    assert_eq!(first.matches('\n').count(), 2, "one line of JSON: {first}");
    assert!(first.contains("\"drained\": false"));
    assert_eq!(c.poll_timeout(), Some(t0 + ms(500)));
    c.on_timeout(&mut ctx, t0 + ms(499));
    assert!(c.poll_transmit(&mut ctx, t0 + ms(499)).is_none(), "not before the interval");
    assert_eq!(tick(&mut ctx, &mut c, t0 + ms(500)), ": keep-alive\n\n", "nothing changed");
    ctx.set_drained(true);
    let changed = tick(&mut ctx, &mut c, t0 + ms(1000));
    assert!(changed.starts_with("data: {") && changed.contains("\"drained\": true"), "{changed}");
    assert_eq!(c.poll_timeout(), Some(t0 + ms(1500)));
    assert!(ctx.counts.borrow().contains(&(Counter::HttpResponses2xx, 1)), "the stream counts as one response");
}

#[test]
fn a_stream_whose_client_stops_reading_is_left_to_the_send_deadline_and_gives_its_slot_back() {
    let t0 = Instant::now();
    let mut ctx = ctx("");
    let mut c = ConnFor::new(&mut ctx, IpAddr::from([10, 0, 0, 7]), t0);
    open_stream(&mut ctx, &mut c, t0);
    c.on_timeout(&mut ctx, t0);
    assert!(c.poll_transmit(&mut ctx, t0).is_some());
    // Never released: the client does not read. No deadline of the session's own runs
    // (the driver's http.send_timeout_ms does), no further event is made, the connection
    // is not idle (never reclaimed as such) and takes no input.
    assert_eq!(c.poll_timeout(), None);
    c.on_timeout(&mut ctx, t0 + Duration::from_secs(3600));
    assert!(c.poll_transmit(&mut ctx, t0 + Duration::from_secs(3600)).is_none());
    assert!(c.idle_since().is_none() && !c.wants_input() && !c.is_done());
    // The driver cuts it at its send deadline: the slot is free again, once.
    c.on_closed(&mut ctx, true, t0 + Duration::from_secs(30));
    assert_eq!(ctx.console.events_open(), 0);
    c.on_closed(&mut ctx, true, t0 + Duration::from_secs(30));
    assert_eq!(ctx.console.events_open(), 0);
}

#[test]
fn event_streams_stop_at_console_events_max_and_drain_ends_them() {
    let t0 = Instant::now();
    let mut ctx = ctx("[console]\nevents_max = 1\n");
    let mut a = ConnFor::new(&mut ctx, IpAddr::from([10, 0, 0, 8]), t0);
    open_stream(&mut ctx, &mut a, t0);
    let mut w = Wire::new(ctx, t0);
    w.recv(b"GET /api/events HTTP/1.1\r\nHost: a\r\n\r\n", t0);
    assert_eq!(w.statuses(), vec![503], "{}", text(&w.out));
    assert!(text(&w.out).contains("console.events_max"));
    assert!(!w.conn.is_done(), "a refusal keeps the connection");
    let mut ctx = w.ctx;
    // Drain while idle between events: done at once, and its slot comes back on close.
    a.on_drain(&mut ctx, t0);
    assert!(a.is_done());
    a.on_closed(&mut ctx, false, t0);
    assert_eq!(ctx.console.events_open(), 0);
    // Drain while an event is in flight: done once it is out.
    let mut b = ConnFor::new(&mut ctx, IpAddr::from([10, 0, 0, 9]), t0);
    open_stream(&mut ctx, &mut b, t0);
    b.on_timeout(&mut ctx, t0);
    assert!(b.poll_transmit(&mut ctx, t0).is_some());
    b.on_drain(&mut ctx, t0);
    assert!(!b.is_done(), "the event in flight goes out first");
    b.on_released(&mut ctx, t0);
    assert!(b.is_done());
    b.on_closed(&mut ctx, false, t0);
    // The browser closing its tab (FIN) ends a stream too.
    let mut d = ConnFor::new(&mut ctx, IpAddr::from([10, 0, 0, 10]), t0);
    open_stream(&mut ctx, &mut d, t0);
    d.on_eof(&mut ctx, t0);
    assert!(d.is_done());
    d.on_closed(&mut ctx, false, t0);
    assert_eq!(ctx.console.events_open(), 0);
    // A draining node opens no new stream.
    ctx.draining = true;
    let mut w = Wire::new(ctx, t0);
    w.recv(b"GET /api/events HTTP/1.1\r\nHost: a\r\n\r\n", t0);
    assert_eq!(w.statuses(), vec![503]);
    assert_eq!(w.ctx.console.events_open(), 0);
}

#[test]
fn the_console_page_is_served_and_actions_need_the_configured_token() {
    let t0 = Instant::now();
    let mut w = Wire::new(ctx(""), t0);
    w.recv(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /console.js HTTP/1.1\r\nHost: a\r\n\r\nGET /console.css HTTP/1.1\r\nHost: a\r\n\r\n", t0);
    assert_eq!(w.statuses(), vec![200, 200, 200]);
    let out = text(&w.out);
    assert!(out.contains("Content-Type: text/html") && out.contains("<script src=\"/console.js\""), "the page and its script");
    assert!(out.contains("new EventSource(") && out.contains("Content-Type: text/css"));
    assert!(!out.contains("http://") && !out.contains("https://"), "nothing from another site (no CDN)");
    let mut w = Wire::new(ctx(""), t0);
    w.recv(b"GET /api/status HTTP/1.1\r\nHost: a\r\n\r\n", t0);
    assert!(text(&w.out).contains("Access-Control-Allow-Origin: *") && text(&w.out).contains("\"actions\": false"));
    // Read-only by default: 403 whatever is sent.
    let drain = |auth: &str| format!("POST /api/drain HTTP/1.1\r\nHost: a\r\n{auth}\r\n");
    let mut w = Wire::new(ctx(""), t0);
    w.recv(drain("Authorization: Bearer 0123456789abcdef\r\n").as_bytes(), t0);
    assert_eq!(w.statuses(), vec![403]);
    assert!(text(&w.out).contains("console.token"));
    assert!(!w.ctx.console.drained.load(std::sync::atomic::Ordering::Relaxed));
    // With a token: a wrong or missing one is 403, the right one drains, then resumes.
    let with = "[console]\ntoken = \"0123456789abcdef\"\n";
    for auth in ["", "Authorization: Bearer 0123456789abcdeX\r\n", "Authorization: 0123456789abcdef\r\n"] {
        let mut w = Wire::new(ctx(with), t0);
        w.recv(drain(auth).as_bytes(), t0);
        assert_eq!(w.statuses(), vec![403], "{auth:?}");
        assert!(!w.ctx.console.drained.load(std::sync::atomic::Ordering::Relaxed));
    }
    let mut w = Wire::new(ctx(with), t0);
    w.recv(drain("Authorization: Bearer 0123456789abcdef\r\n").as_bytes(), t0);
    assert_eq!(w.statuses(), vec![200]);
    assert!(text(&w.out).contains("\"drained\": true"));
    assert!(w.ctx.console.drained.load(std::sync::atomic::Ordering::Relaxed));
    w.recv(b"POST /api/resume HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer 0123456789abcdef\r\n\r\n", t0);
    assert_eq!(w.statuses(), vec![200, 200]);
    assert!(!w.ctx.console.drained.load(std::sync::atomic::Ordering::Relaxed));
    // A target's disconnect: the token as for a drain; an id with no connection here is 404.
    let cut = |auth: &str| format!("POST /api/targets/52:54:00:12:34:56/disconnect HTTP/1.1\r\nHost: a\r\n{auth}\r\n");
    let mut w = Wire::new(ctx(with), t0);
    w.recv(cut("").as_bytes(), t0);
    w.recv(cut("Authorization: Bearer 0123456789abcdef\r\n").as_bytes(), t0);
    assert_eq!(w.statuses(), vec![403, 404]);
    assert!(text(&w.out).contains("no NBD target with that id has a connection on this node"));
    // Any other POST is refused before routing.
    let w = run(&[b"POST /api/status HTTP/1.1\r\nHost: a\r\n\r\n"]);
    assert_eq!(w.statuses(), vec![405]);
}
