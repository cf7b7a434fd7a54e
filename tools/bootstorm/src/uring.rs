//! The NBD vDisk phase on the io_uring disk driver (`uring_disk.rs`): per target a connection,
//! the fixed-newstyle handshake with NBD_OPT_GO, then the trace as READ/WRITE requests, one in
//! flight (a booting OS mostly waits on each read). A target's thread hands its job here and
//! sleeps until its trace is done: one wake-up per boot instead of one per I/O, which is what
//! made the thread-per-target replay cost more CPU than the server.

use crate::phases::{block_pattern, Expect, BLOCK};
use crate::uring_disk::{self, Adv, Cx, Pools, Session, Target};
use bootfarm::nbd::wire as nbdw;
use io_uring::{opcode, squeue, types};

/// A target's NBD phase; `proto` is the export name.
pub type Job = uring_disk::Job<String>;
/// The NBD engine threads' inboxes.
pub type Engine = uring_disk::Engine<String>;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Step {
    /// The server's 18-byte greeting (NBDMAGIC, IHAVEOPT, handshake flags).
    Greeting,
    /// Client flags and NBD_OPT_GO for the export (in `req`).
    Options,
    /// A 20-byte option reply header, then (OptData) its payload; until NBD_REP_ACK.
    OptHead,
    OptData,
    Send,
    /// The reply: its header and, for a read, the data behind it, received into one buffer
    /// (usually in one receive: the server sends them in one go).
    Reply,
}

/// One NBD connection's state.
pub struct Nbd {
    step: Step,
    /// The request being sent is `req[..req_len]`, in a buffer of the engine's pool while it
    /// is sent, overwritten in place (no memset per request).
    req: Vec<u8>,
    req_len: usize,
    sent: usize,
    buf: Vec<u8>,
    /// Bytes of `buf` the reply fills: the 16-byte header, then the read's data.
    want: usize,
    got: usize,
}

/// An NBD request header: magic, flags, type, cookie, offset, length.
const REQ_HEAD: usize = 28;
/// Option replies carry at most this much (an NBD_REP_INFO is 12 bytes; errors a message).
const OPT_DATA_MAX: usize = 64 << 10;

impl Session for Nbd {
    type Params = String;

    fn open(_: &Job) -> Nbd {
        Nbd { step: Step::Greeting, req: Vec::new(), req_len: 0, sent: 0, buf: Vec::new(), want: 18, got: 0 }
    }

    fn entry(t: &mut Target<Nbd>, fd: types::Fixed) -> squeue::Entry {
        let s = &mut t.s;
        match s.step {
            Step::Greeting | Step::OptHead | Step::OptData => {
                if s.buf.len() < s.want {
                    s.buf.resize(s.want, 0);
                }
                opcode::Recv::new(fd, s.buf[s.got..s.want].as_mut_ptr(), (s.want - s.got) as u32).build()
            }
            Step::Send | Step::Options => {
                opcode::Send::new(fd, s.req[s.sent..s.req_len].as_ptr(), (s.req_len - s.sent) as u32).flags(libc::MSG_NOSIGNAL).build()
            }
            // Not MSG_WAITALL: an error reply carries no data, and must not wait for any. The
            // first receive of a reply waits for readiness first: the request just left, so an
            // immediate try would find nothing.
            Step::Reply => {
                let poll_first = if s.got == 0 { bootfarm::engine::ring::RECVSEND_POLL_FIRST } else { 0 };
                opcode::Recv::new(fd, s.buf[s.got..s.want].as_mut_ptr(), (s.want - s.got) as u32).ioprio(poll_first).build()
            }
        }
    }

    fn advance(t: &mut Target<Nbd>, n: usize, cx: &mut Cx) -> Adv {
        let s = &mut t.s;
        match s.step {
            Step::Greeting | Step::OptHead | Step::OptData => {
                s.got += n;
                if s.got < s.want {
                    return Adv::Continue;
                }
                handshake(s, &t.job.proto)
            }
            Step::Options => {
                s.sent += n;
                if s.sent == s.req_len {
                    cx.pools.req.give(std::mem::take(&mut s.req));
                    s.step = Step::OptHead;
                    (s.got, s.want) = (0, 20);
                }
                Adv::Continue
            }
            Step::Send => {
                let io = t.job.ios[t.k];
                s.sent += n;
                if s.sent < s.req_len {
                    return Adv::Continue;
                }
                cx.pools.req.give(std::mem::take(&mut s.req));
                s.step = Step::Reply;
                s.want = 16 + if io.write { 0 } else { io.len as usize };
                // From the pool, never cleared: no memset per request (a reply overwrites it).
                if s.buf.len() < s.want {
                    cx.pools.reply.give(std::mem::take(&mut s.buf));
                    s.buf = cx.pools.reply.take(s.want);
                }
                s.got = 0;
                Adv::Continue
            }
            Step::Reply => reply(t, n, cx),
        }
    }

    /// Prepares I/O `t.k`: the request's bytes (a WRITE's blocks in their patterns).
    fn start_io(t: &mut Target<Nbd>, cx: &mut Cx) -> bool {
        let Some(io) = t.job.ios.get(t.k).copied() else { return false };
        if io.write {
            t.seq += 1;
        }
        let s = &mut t.s;
        s.req_len = REQ_HEAD + if io.write { io.len as usize } else { 0 };
        if s.req.len() < s.req_len {
            cx.pools.req.give(std::mem::take(&mut s.req));
            s.req = cx.pools.req.take(s.req_len);
        }
        let h = &mut s.req[..REQ_HEAD];
        h[..4].copy_from_slice(&nbdw::REQUEST_MAGIC.to_be_bytes());
        h[4..6].copy_from_slice(&0u16.to_be_bytes());
        h[6..8].copy_from_slice(&(if io.write { nbdw::CMD_WRITE } else { nbdw::CMD_READ }).to_be_bytes());
        h[8..16].copy_from_slice(&(t.k as u64).to_be_bytes());
        h[16..24].copy_from_slice(&io.off.to_be_bytes());
        h[24..28].copy_from_slice(&io.len.to_be_bytes());
        if io.write {
            let mut req = std::mem::take(&mut t.s.req);
            for (j, c) in req[REQ_HEAD..t.s.req_len].chunks_mut(BLOCK as usize).enumerate() {
                block_pattern(t.write_tag(j as u64), c);
            }
            t.s.req = req;
        }
        let s = &mut t.s;
        (s.sent, s.got, s.step) = (0, 0, Step::Send);
        true
    }

    fn recycle(&mut self, pools: &mut Pools) {
        pools.req.give(std::mem::take(&mut self.req));
        pools.reply.give(std::mem::take(&mut self.buf));
    }
}

/// `n` more bytes of the reply to I/O `t.k`: its header checked as soon as it is in, the read's
/// data against what the target must see once all of it is.
fn reply(t: &mut Target<Nbd>, n: usize, cx: &mut Cx) -> Adv {
    let io = t.job.ios[t.k];
    let s = &mut t.s;
    let before = s.got;
    s.got += n;
    if before < 16 && s.got >= 16 {
        let h = &s.buf[..16];
        if u32::from_be_bytes(h[..4].try_into().unwrap()) != nbdw::SIMPLE_REPLY_MAGIC
            || u64::from_be_bytes(h[8..].try_into().unwrap()) != t.k as u64
        {
            return Adv::Fatal(("vdisk", "protocol error"));
        }
        if u32::from_be_bytes(h[4..8].try_into().unwrap()) != 0 {
            return Adv::Fatal(("vdisk", "nbd error reply"));
        }
    }
    if s.got < s.want {
        return Adv::Continue;
    }
    let buf = std::mem::take(&mut s.buf);
    let ok = io.write || (Expect { chain: cx.chain, written: &t.written }).check(io.off, &buf[16..s.want]);
    cx.pools.reply.give(buf);
    if !ok {
        return Adv::Fatal(("vdisk", "corrupted"));
    }
    if io.write {
        t.wrote(io);
    }
    t.io_done(io);
    Adv::NextIo
}

/// Client flags (fixed newstyle, no zeroes) and NBD_OPT_GO for the export, no info requests.
fn options(req: &mut Vec<u8>, export: &str) {
    req.clear();
    req.extend_from_slice(&3u32.to_be_bytes());
    req.extend_from_slice(&nbdw::IHAVEOPT.to_be_bytes());
    req.extend_from_slice(&nbdw::OPT_GO.to_be_bytes());
    req.extend_from_slice(&(6 + export.len() as u32).to_be_bytes());
    req.extend_from_slice(&(export.len() as u32).to_be_bytes());
    req.extend_from_slice(export.as_bytes());
    req.extend_from_slice(&0u16.to_be_bytes());
}

/// A whole handshake message is in `buf[..want]`: the greeting, an option reply header or its
/// payload. Anything but a fixed-newstyle server accepting the export sends the target on.
fn handshake(s: &mut Nbd, export: &str) -> Adv {
    match s.step {
        Step::Greeting => {
            if &s.buf[..16] != b"NBDMAGICIHAVEOPT" {
                return Adv::Broken("not an NBD server");
            }
            options(&mut s.req, export);
            s.req_len = s.req.len();
            s.sent = 0;
            s.step = Step::Options;
            Adv::Continue
        }
        Step::OptHead => {
            let h = &s.buf[..20];
            let kind = u32::from_be_bytes(h[12..16].try_into().unwrap());
            let len = u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize;
            if len > OPT_DATA_MAX {
                return Adv::Broken("bad option reply");
            }
            let next = match kind {
                // The handshake is done: the first (or, after a failover, the interrupted) I/O.
                nbdw::REP_ACK if len == 0 => return Adv::NextIo,
                nbdw::REP_INFO if len == 0 => (Step::OptHead, 20),
                nbdw::REP_INFO => (Step::OptData, len),
                _ => return Adv::Broken("export refused"),
            };
            (s.step, s.got, s.want) = (next.0, 0, next.1);
            Adv::Continue
        }
        Step::OptData => {
            (s.step, s.got, s.want) = (Step::OptHead, 0, 20);
            Adv::Continue
        }
        _ => unreachable!("not a handshake step"),
    }
}
