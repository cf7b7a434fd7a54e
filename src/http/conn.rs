//! One HTTP/1.1 connection as a sans-IO [`TcpSession`]: requests parsed in place from what the
//! driver received, answered one at a time in order (pipelined ones wait in the driver's
//! buffer, and TCP pushes back once it is full), keep-alive with an idle deadline, a header
//! deadline from accept and then from each request's first byte (slowloris: 408), and the
//! refusals 400/405/413/414/431/505 before routing. A response goes out as batches: the header
//! block written in place and, per batch, up to `BODY_BATCH_BYTES` of body as references to
//! the file mapping, the vdisk chain or the page it owns (no copy).
//!
//! An event stream (`/api/events`, [`Body::Events`]) is a long response: after its header the
//! connection's own deadline (`console.event_interval_ms`) makes the next event (the status
//! document when it changed, a keep-alive comment when not); a client that stops reading
//! holds one event and is cut by the driver's send deadline (`http.send_timeout_ms`); a drain
//! or the client's FIN ends it after the event in flight.
//!
//! Limits: one response in flight; the header block and request line by `http.*_max`; the
//! receive buffer the driver grows to `http.header_bytes_max + 1` (431 past it).

use super::{console, wire, Body, Env, Head};
use crate::metrics::Counter;
use crate::session::{Batch, ConnScope, TcpSession};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Body bytes per batch: one sendmsg each when its pieces fit IOV_MAX (a whole vdisk GET is
/// sent as many batches, each referencing the mapping).
pub const BODY_BATCH_BYTES: u64 = 4 << 20;

/// The receive buffer a connection starts with (the driver grows it for long headers).
pub const RBUF_INITIAL: usize = 4096;

/// What a connection needs from the engine beyond the routes' [`Env`].
pub trait Ctx: ConnScope + Env {
    /// The client the routes called next serve ([`Env::client_ip`] answers it).
    fn serve_client(&mut self, ip: IpAddr);
    fn count(&self, c: Counter, n: u64);
}

pub struct Conn {
    ip: IpAddr,
    batch: Batch,
    /// The batch is with the driver (between poll_transmit and on_released).
    held: bool,
    /// A response is under way: its header is in `batch.buf`, its body in `body`.
    responding: bool,
    status: u16,
    body: Body,
    /// The next body byte to put in a batch.
    body_off: u64,
    head_out: bool,
    close_after: bool,
    /// The header deadline passed with a request started: answer 408, then close.
    timeout_408: bool,
    done: bool,
    /// Header deadline (from accept until the first request is complete, or from a request's
    /// first byte) or keep-alive idle deadline (from the end of the previous response).
    deadline: Instant,
    request_started: bool,
    idle_since: Instant,
    requests: u64,
    why: &'static str,
    /// The request in the buffer waits for its file (`Body::Wait`).
    waiting: bool,
    /// Streaming events (after an `/api/events` header went out).
    stream: Option<Stream>,
    /// The route took an event-stream slot for this connection: given back when it closes.
    events_slot: bool,
}

struct Stream {
    /// When the next event is made.
    next: Instant,
    /// Digest of the last status document sent.
    last: u64,
    /// An event is in the batch, not yet polled.
    pending: bool,
}

fn limits(env: &dyn Env) -> (wire::Limits, Duration, Duration) {
    let c = &env.snapshot().config.http;
    let l =
        wire::Limits { request_line_bytes_max: c.request_line_bytes_max, header_bytes_max: c.header_bytes_max, headers_max: c.headers_max };
    (l, Duration::from_millis(c.header_timeout_ms), Duration::from_millis(c.keepalive_idle_ms))
}

impl Conn {
    pub fn new<C: Ctx>(ctx: &mut C, ip: IpAddr, now: Instant) -> Conn {
        let (_, header_timeout, _) = limits(ctx);
        Conn {
            ip,
            batch: Batch::default(),
            held: false,
            responding: false,
            status: 0,
            body: Body::Empty,
            body_off: 0,
            head_out: false,
            close_after: false,
            timeout_408: false,
            done: false,
            // A connection that never sends a byte is closed at the header timeout.
            deadline: now + header_timeout,
            request_started: false,
            idle_since: now,
            requests: 0,
            why: "",
            waiting: false,
            stream: None,
            events_slot: false,
        }
    }

    /// Starts a response whose header `respond` writes into the batch.
    fn start(&mut self, close: bool, respond: impl FnOnce(&mut Head) -> Body) {
        self.batch.clear();
        let mut body = Body::Empty;
        let mut status = 0;
        self.batch.put(|b| {
            let mut h = Head::new(b);
            body = respond(&mut h);
            status = h.status;
        });
        self.waiting = matches!(body, Body::Wait);
        if self.waiting {
            // Its file is being opened: no answer yet; the request stays unread and is parsed
            // again when the context wakes this connection.
            self.batch.clear();
            return;
        }
        self.events_slot |= matches!(body, Body::Events);
        self.status = status;
        self.body = body;
        self.body_off = 0;
        self.head_out = false;
        self.responding = true;
        self.close_after |= close;
    }

    fn error(&mut self, ctx: &mut dyn Env, status: u16, detail: &str) {
        let now_unix = ctx.now_unix();
        self.start(true, |h| super::error_page(h, status, false, 1, now_unix, detail));
    }
}

impl<C: Ctx> TcpSession for ConnFor<C> {
    type Ctx = C;

    fn on_input(&mut self, ctx: &mut C, input: &[u8], now: Instant) -> usize {
        let c = &mut self.0;
        let (limits, header_timeout, _) = limits(ctx);
        if !input.is_empty() && !c.request_started {
            c.request_started = true;
            // The first request's header timer runs from accept (set there); a keep-alive
            // request's from its first byte.
            if c.requests > 0 {
                c.deadline = now + header_timeout;
            }
        }
        if c.responding || c.held || c.timeout_408 || c.done || c.stream.is_some() {
            return 0;
        }
        if c.close_after {
            return input.len(); // nothing more is answered on this connection
        }
        match wire::parse(input, &limits) {
            Ok((req, used)) => {
                ctx.serve_client(c.ip);
                let keep = req.keep_alive && !ctx.draining();
                c.start(!keep, |h| super::respond(&req, ctx, h));
                if c.waiting {
                    return 0;
                }
                used
            }
            Err(wire::Error::Incomplete) if input.len() <= limits.header_bytes_max => 0,
            Err(e) => {
                let detail = match e {
                    wire::Error::BadRequest(d) => d,
                    wire::Error::MethodNotAllowed => "only GET and HEAD are served",
                    wire::Error::UriTooLong => "request line too long",
                    wire::Error::HeadersTooLarge | wire::Error::Incomplete => "request header too large or too many fields",
                    wire::Error::PayloadTooLarge => "request bodies are not accepted",
                    wire::Error::VersionNotSupported => "HTTP/1.0 and HTTP/1.1 only",
                };
                // Incomplete past the header limit: the buffer is full of one header (431).
                let status = if e == wire::Error::Incomplete { 431 } else { e.status() };
                ctx.count(Counter::HttpBadRequests, 1);
                c.error(ctx, status, detail);
                input.len()
            }
        }
    }

    fn wants_input(&self) -> bool {
        let c = &self.0;
        !(c.responding || c.held || c.timeout_408 || c.done || c.stream.is_some())
    }

    fn on_eof(&mut self, _ctx: &mut C, _now: Instant) {
        let c = &mut self.0;
        if c.stream.is_some() {
            // The browser left (tab closed): the event in flight, if any, is the last.
            c.close_after = true;
            c.done |= !c.held;
            return;
        }
        // Either way this connection is over: a response under way finishes first.
        c.close_after = true;
        if !c.responding && !c.timeout_408 {
            c.done = true;
        }
    }

    fn poll_transmit(&mut self, ctx: &mut C, _now: Instant) -> Option<&Batch> {
        let c = &mut self.0;
        if c.held || c.done {
            return None;
        }
        if let Some(st) = &mut c.stream {
            if !st.pending {
                return None;
            }
            st.pending = false;
            c.held = true;
            return Some(&c.batch);
        }
        if c.timeout_408 && !c.responding {
            c.timeout_408 = false;
            c.error(ctx, 408, "request header not received in time");
        }
        if !c.responding {
            return None;
        }
        if c.head_out {
            c.batch.clear();
        }
        let left = c.body.len() - c.body_off;
        if c.head_out && left == 0 {
            return None;
        }
        let n = left.min(BODY_BATCH_BYTES);
        let off = c.body_off;
        let before = c.batch.len;
        match &c.body {
            Body::Empty | Body::Wait | Body::Events => {}
            Body::Owned(v) => c.batch.mem(&v[off as usize..(off + n) as usize]),
            Body::File { data, start, .. } => {
                c.batch.mem(&data.bytes()[(start + off) as usize..(start + off + n) as usize]);
                c.batch.guarded = true;
            }
            Body::Vdisk { vdisk, start, .. } => {
                c.batch.chain(&vdisk.chain, start + off, n);
                c.batch.guarded = true;
            }
        }
        c.body_off += n;
        if c.batch.len - before < n {
            // The vdisk chain could not be read (a damaged image): the body would come out
            // short of its Content-Length, so the connection ends after what was read.
            c.body_off = c.body.len();
            c.close_after = true;
            c.why = "the vdisk could not be read; response cut short";
        }
        c.head_out = true;
        c.held = true;
        Some(&c.batch)
    }

    fn on_released(&mut self, ctx: &mut C, now: Instant) {
        let c = &mut self.0;
        c.held = false;
        if c.stream.is_some() {
            c.done |= c.close_after;
            return;
        }
        if !c.responding || c.body_off < c.body.len() {
            return;
        }
        // The response is out.
        c.responding = false;
        c.requests += 1;
        let events = matches!(c.body, Body::Events);
        c.body = Body::Empty;
        let class = match c.status {
            200..=299 => Counter::HttpResponses2xx,
            300..=399 => Counter::HttpResponses3xx,
            400..=499 => Counter::HttpResponses4xx,
            _ => Counter::HttpResponses5xx,
        };
        ctx.count(class, 1);
        if events {
            // The header is out: the first event is due at once, then one per interval.
            c.stream = Some(Stream { next: now, last: 0, pending: false });
            c.close_after = false;
            return;
        }
        if c.close_after {
            c.done = true;
            return;
        }
        // A pipelined request already buffered restarts the header deadline when the driver
        // offers it (on_input); otherwise the connection idles.
        let (_, _, idle) = limits(ctx);
        c.request_started = false;
        c.deadline = now + idle;
        c.idle_since = now;
    }

    fn still_valid(&self) -> bool {
        match &self.0.body {
            Body::File { data, .. } => !data.damaged(),
            Body::Vdisk { vdisk, .. } => !vdisk.damaged(),
            _ => true,
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let c = &self.0;
        if let Some(st) = &c.stream {
            // While an event is held the driver's send deadline runs, not this one.
            return (!(c.held || c.done || st.pending)).then_some(st.next);
        }
        (!(c.responding || c.held || c.timeout_408 || c.done)).then_some(c.deadline)
    }

    fn on_timeout(&mut self, ctx: &mut C, now: Instant) {
        let c = &mut self.0;
        if let Some(st) = &mut c.stream {
            if c.held || c.done || st.pending || now < st.next {
                return;
            }
            st.next = now + Duration::from_millis(ctx.snapshot().config.console.event_interval_ms);
            let doc = super::status_body(&*ctx);
            let d = console::digest(&doc);
            c.batch.clear();
            if d != st.last {
                st.last = d;
                c.batch.put(|b| console::event(b, &doc));
            } else {
                c.batch.copy(console::KEEPALIVE);
            }
            st.pending = true;
            return;
        }
        if c.responding || c.held || c.timeout_408 || c.done || now < c.deadline {
            return;
        }
        if c.request_started {
            // Slowloris: the request's header did not complete in time.
            c.timeout_408 = true;
            c.close_after = true;
            c.why = "request header not complete within http.header_timeout_ms (408)";
            ctx.count(Counter::HttpTimeoutHeader, 1);
        } else if c.requests == 0 {
            // Connected and silent: held a connection slot for header_timeout_ms, no longer.
            c.done = true;
            c.why = "no request within http.header_timeout_ms";
            ctx.count(Counter::HttpTimeoutHeader, 1);
        } else {
            c.done = true;
            c.why = "keep-alive idle for http.keepalive_idle_ms";
            ctx.count(Counter::HttpTimeoutIdle, 1);
        }
    }

    fn on_drain(&mut self, _ctx: &mut C, _now: Instant) {
        let c = &mut self.0;
        if c.stream.is_some() {
            // Ends the stream: at once, or once the event in flight is out.
            c.close_after = true;
            c.done |= !c.held;
            return;
        }
        // Idle keep-alive connections are closed now; busy ones after their response.
        c.close_after = true;
        if !c.responding && !c.held && !c.request_started && !c.timeout_408 {
            c.done = true;
        }
    }

    fn is_done(&self) -> bool {
        self.0.done
    }

    fn idle_since(&self) -> Option<Instant> {
        let c = &self.0;
        (!(c.responding || c.held || c.timeout_408 || c.done || c.close_after || c.request_started || c.stream.is_some()))
            .then_some(c.idle_since)
    }

    fn close_reason(&self) -> &'static str {
        self.0.why
    }

    fn requests(&self) -> u64 {
        self.0.requests
    }

    fn on_closed(&mut self, ctx: &mut C, _stalled: bool, _now: Instant) {
        // The driver frees the connection only once the kernel holds none of the batch; the
        // body's mapping goes with it. An event stream's slot is free again now.
        if std::mem::take(&mut self.0.events_slot) {
            ctx.events_release();
        }
    }
}

/// A connection served with context type `C` (the engine's, or a test's).
pub struct ConnFor<C>(pub Conn, std::marker::PhantomData<fn(&mut C)>);

impl<C: Ctx> ConnFor<C> {
    pub fn new(ctx: &mut C, ip: IpAddr, now: Instant) -> ConnFor<C> {
        ConnFor(Conn::new(ctx, ip, now), std::marker::PhantomData)
    }
}

#[cfg(test)]
mod tests;
