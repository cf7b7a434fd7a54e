//! The iSCSI vDisk phase on the io_uring disk driver (`uring_disk.rs`): per target a session
//! (connect, login, TEST UNIT READY, READ CAPACITY), then the boot trace as READ/WRITE
//! commands, one in flight per target as in the NBD phase. The protocol is `iscsi.rs`
//! (sans-IO); this file only moves its bytes and checks every byte read against what the
//! target expects (`phases::Expect`). Each target logs in with its own initiator name, so a
//! bootfarm keeps a write cache per target.

use crate::iscsi::{Event, Initiator, Params};
use crate::phases::{block_pattern, Expect, BLOCK};
use crate::uring_disk::{self, Adv, Cx, Pools, Session, Target};
use io_uring::{opcode, squeue, types};

/// What a target's iSCSI session needs besides its trace.
pub struct Names {
    /// This target's initiator name (its write cache on a bootfarm).
    pub initiator: String,
    pub iqn: String,
    pub lun: u64,
}

pub type Job = uring_disk::Job<Names>;
/// The iSCSI engine threads' inboxes.
pub type Engine = uring_disk::Engine<Names>;

/// One iSCSI connection's state.
pub struct Iscsi {
    s: Box<Initiator>,
    /// Sending what the session has pending, or receiving.
    sending: bool,
    /// The block length READ CAPACITY gave (0 until the session is ready).
    block_len: u32,
    /// A command's buffer, handed to the session and back with each command.
    buf: Vec<u8>,
}

impl Session for Iscsi {
    type Params = Names;

    fn open(job: &Job) -> Iscsi {
        let p =
            Params { initiator: job.proto.initiator.clone(), target: job.proto.iqn.clone(), lun: job.proto.lun, isid: job.target as u32 };
        Iscsi { s: Box::new(Initiator::new(p)), sending: true, block_len: 0, buf: Vec::new() }
    }

    fn entry(t: &mut Target<Iscsi>, fd: types::Fixed) -> squeue::Entry {
        let s = &mut t.s.s;
        if t.s.sending {
            let p = s.pending();
            return opcode::Send::new(fd, p.as_ptr(), p.len() as u32).flags(libc::MSG_NOSIGNAL).build();
        }
        // The first receive of an answer waits for readiness first: the command just left.
        let poll_first = if s.nothing_buffered() { bootfarm::engine::ring::RECVSEND_POLL_FIRST } else { 0 };
        let r = s.recv_space();
        opcode::Recv::new(fd, r.as_mut_ptr(), r.len() as u32).ioprio(poll_first).build()
    }

    fn advance(t: &mut Target<Iscsi>, n: usize, cx: &mut Cx) -> Adv {
        if t.s.sending {
            t.s.s.sent(n);
        } else if let Err(why) = t.s.s.received(n) {
            return Adv::Fatal(("vdisk", why));
        }
        while let Some(ev) = t.s.s.next_event() {
            match ev {
                Event::Ready { block_len, .. } => {
                    if block_len == 0 || !BLOCK.is_multiple_of(block_len as u64) {
                        return Adv::Fatal(("vdisk", "block length not a divisor of 4096"));
                    }
                    t.s.block_len = block_len;
                    t.st.answered();
                    if !Self::start_io(t, cx) {
                        return Adv::Finished;
                    }
                }
                Event::Done { ok: false, why, .. } => return Adv::Fatal(("vdisk", why)),
                Event::Done { buf, .. } => {
                    let io = t.job.ios[t.k];
                    if io.write {
                        t.wrote(io);
                    } else if !(Expect { chain: cx.chain, written: &t.written }).check(io.off, &buf[..io.len as usize]) {
                        return Adv::Fatal(("vdisk", "corrupted"));
                    }
                    t.s.buf = buf;
                    t.io_done(io);
                    if !Self::start_io(t, cx) {
                        return Adv::Finished;
                    }
                }
                Event::LoggedOut => return Adv::Broken("logged out"),
            }
        }
        t.s.sending = !t.s.s.pending().is_empty();
        Adv::Continue
    }

    /// Queues I/O `t.k` as a command.
    fn start_io(t: &mut Target<Iscsi>, cx: &mut Cx) -> bool {
        let Some(io) = t.job.ios.get(t.k).copied() else { return false };
        let bl = t.s.block_len as u64;
        let (lba, blocks) = (io.off / bl, (io.len as u64 / bl) as u32);
        let mut buf = std::mem::take(&mut t.s.buf);
        if buf.capacity() == 0 {
            buf = cx.pools.reply.take(0);
        }
        if io.write {
            t.seq += 1;
            buf.resize(io.len as usize, 0);
            for (j, c) in buf.chunks_mut(BLOCK as usize).enumerate() {
                block_pattern(t.write_tag(j as u64), c);
            }
            t.s.s.write(t.k as u64, lba, buf);
        } else {
            t.s.s.read(t.k as u64, lba, blocks, buf);
        }
        true
    }

    fn recycle(&mut self, pools: &mut Pools) {
        pools.reply.give(std::mem::take(&mut self.buf));
    }
}
