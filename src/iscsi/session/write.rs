//! Commands that take data from the initiator (WRITE, VERIFY with BYTCHK, UNMAP / WRITE SAME /
//! MODE SELECT parameter lists): immediate data, then unsolicited Data-Out up to
//! FirstBurstLength (InitialR2T=No), then R2Ts of at most MaxBurstLength each, at most
//! MaxOutstandingR2T in flight. Data must come in order (DataPDUInOrder=Yes, the default); a
//! Data-Out past its burst, for an unknown transfer tag or out of order is a protocol error.
//! Write data goes straight into the target's cache, into slots reserved for the whole write
//! when the command arrived.

use super::command::Cdb;
use super::{Env, Session};
use crate::iscsi::scsi::{self, Sense};
use crate::iscsi::wire::{self, reject, status, BHS_LEN, TAG_NONE};
use crate::metrics::Counter;
use crate::nbd::cache;

/// What a task does with its data.
pub(super) enum Kind {
    Write {
        fua: bool,
        /// ORWRITE: the data is ORed with the blocks' contents before it is written.
        or: bool,
    },
    /// VERIFY with BYTCHK 1: compared with what the LUN reads, as it arrives.
    Compare,
    /// A parameter list, collected and handed to `scsi::execute_data`.
    Param(Vec<u8>),
    /// Unsolicited data of a command answered already in substance: eaten, then `status`.
    Sink { sense: Sense, good: bool },
    /// Unsolicited data of a command refused for a reservation: eaten, then RESERVATION CONFLICT.
    Conflict,
}

/// An R2T in flight.
struct R2tOut {
    ttt: u32,
    off: u32,
    len: u32,
    got: u32,
}

/// A command waiting for its data.
pub(super) struct Task {
    pub itt: u32,
    lun: u64,
    cdb: [u8; 16],
    pub(super) kind: Kind,
    /// Disk byte offset the data goes to (Write, Compare).
    start: u64,
    /// Bytes the initiator sends (the Expected Data Transfer Length).
    len: u32,
    /// Of those, the bytes the command uses (its transfer length, at most `len`).
    want: u32,
    /// Bytes received (they come in order).
    got: u32,
    /// Unsolicited Data-Out may still come (the command's F bit was clear).
    unsolicited_open: bool,
    unsolicited_end: u32,
    /// Next offset to solicit.
    r2t_next: u32,
    r2ts: Vec<R2tOut>,
    r2t_sn: u32,
    pub reservation: Option<cache::Reservation>,
    error: Option<Sense>,
    /// The command's transfer length against the Expected Data Transfer Length (positive:
    /// the initiator expects more than the command moves).
    residual: i64,
}

impl Task {
    pub(super) fn sink(c: &wire::Command, sense: Sense, good: bool) -> Task {
        Task {
            itt: c.itt,
            lun: c.lun,
            cdb: c.cdb,
            kind: Kind::Sink { sense, good },
            start: 0,
            len: c.expected_len,
            want: 0,
            got: c.data_len,
            unsolicited_open: !c.final_,
            unsolicited_end: c.expected_len,
            r2t_next: c.expected_len,
            r2ts: Vec::new(),
            r2t_sn: 0,
            reservation: None,
            error: None,
            residual: c.expected_len as i64,
        }
    }
}

impl<E: Env> Session<E> {
    /// A command that takes `bytes` of data to `start` (disk offset; 0 for parameter lists).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn start_task(
        &mut self,
        env: &E,
        raw: &[u8; BHS_LEN],
        c: &wire::Command,
        cdb: &Cdb,
        kind: Kind,
        start: u64,
        bytes: u64,
        data: &[u8],
    ) {
        let neg = self.neg.as_ref().unwrap();
        let (first_burst, window) = (neg.first_burst_length, self.login.window as usize);
        if self.tasks.len() >= window {
            // Immediate commands bypass the window: the task set has its limit all the same.
            self.respond(c.itt, status::TASK_SET_FULL, None, 0);
            let _ = raw;
            return;
        }
        let want = bytes.min(c.expected_len as u64) as u32;
        let mut task = Task {
            itt: c.itt,
            lun: c.lun,
            cdb: cdb.head(),
            kind,
            start,
            len: c.expected_len,
            want,
            got: 0,
            unsolicited_open: !c.final_,
            unsolicited_end: first_burst.min(c.expected_len),
            r2t_next: 0,
            r2ts: Vec::new(),
            r2t_sn: 0,
            reservation: None,
            error: None,
            residual: c.expected_len as i64 - bytes as i64,
        };
        // Less data than the CDB moves (an overflow): what comes is written and the status says
        // how much was not (RFC 7143 11.4.5.2; libiscsi's residual tests and tgt do so).
        if let (Kind::Write { .. }, Some(t)) = (&task.kind, self.target.as_ref()) {
            match t.overlay.lock().unwrap().reserve(start, want as u64) {
                Ok(r) => task.reservation = Some(r),
                Err(e) => {
                    let s = self.cache_sense(env, &e);
                    task.kind = Kind::Sink { sense: s, good: false };
                }
            }
        }
        self.tasks.push(task);
        let i = self.tasks.len() - 1;
        if !data.is_empty() {
            self.take_data(env, i, 0, data);
        }
        self.advance(env, i);
    }

    /// After data arrived (or the command): finish the task when all is in, else solicit the
    /// rest (once the unsolicited part is over).
    fn advance(&mut self, env: &E, i: usize) {
        let t = &self.tasks[i];
        if t.unsolicited_open {
            return;
        }
        let refused = matches!(t.kind, Kind::Sink { .. } | Kind::Conflict) || t.error.is_some();
        if t.r2ts.is_empty() && (t.got >= t.len || refused) {
            // A refused command solicits nothing more: its answer goes once nothing is in flight.
            self.finish(env, i);
            return;
        }
        if refused {
            return;
        }
        let neg = self.neg.as_ref().unwrap();
        let (burst, outstanding) = (neg.max_burst_length, neg.max_outstanding_r2t.max(1) as usize);
        if self.tasks[i].r2t_next < self.tasks[i].got {
            self.tasks[i].r2t_next = self.tasks[i].got;
        }
        while self.tasks[i].r2ts.len() < outstanding && self.tasks[i].r2t_next < self.tasks[i].len {
            let ttt = self.tag();
            let task = &mut self.tasks[i];
            let off = task.r2t_next;
            let len = (task.len - off).min(burst);
            task.r2ts.push(R2tOut { ttt, off, len, got: 0 });
            task.r2t_next += len;
            let r2t_sn = task.r2t_sn;
            task.r2t_sn += 1;
            let (lun, itt) = (task.lun, task.itt);
            env.count(Counter::IscsiR2ts, 1);
            self.update_window();
            let sn = self.sn();
            self.put_pdu(|o| wire::R2t { lun, itt, ttt, sn, r2t_sn, offset: off, len }.emit(o), &[]);
        }
    }

    pub(super) fn data_out(&mut self, env: &E, raw: &[u8; BHS_LEN], d: &wire::DataOut, data: &[u8]) {
        let Some(i) = self.tasks.iter().position(|t| t.itt == d.itt) else {
            if !self.aborted.contains(&d.itt) {
                // No such task (never was, or long done): Reject, the connection goes on.
                self.reject(env, raw, reject::INVALID_PDU_FIELD);
            }
            return;
        };
        let t = &mut self.tasks[i];
        let n = data.len() as u32;
        if d.offset != t.got {
            self.protocol_error(env, Some(raw), "Data-Out out of order (DataPDUInOrder=Yes)");
            return;
        }
        if d.ttt == TAG_NONE {
            if !t.unsolicited_open || d.offset + n > t.unsolicited_end {
                self.protocol_error(env, Some(raw), "unsolicited Data-Out beyond FirstBurstLength or after its last PDU");
                return;
            }
            if d.final_ {
                t.unsolicited_open = false;
            }
        } else {
            let Some(r) = t.r2ts.iter_mut().position(|r| r.ttt == d.ttt) else {
                self.reject(env, raw, reject::INVALID_PDU_FIELD);
                return;
            };
            let r2 = &mut t.r2ts[r];
            if d.offset != r2.off + r2.got || r2.got + n > r2.len {
                self.protocol_error(env, Some(raw), "Data-Out beyond the burst its R2T asked for");
                return;
            }
            r2.got += n;
            if d.final_ && r2.got != r2.len {
                self.protocol_error(env, Some(raw), "Data-Out sequence ended (F bit) before its R2T's length");
                return;
            }
            if r2.got == r2.len {
                t.r2ts.remove(r);
            }
        }
        self.take_data(env, i, d.offset, data);
        if self.tasks.get(i).is_some_and(|t| t.itt == d.itt) {
            self.advance(env, i);
        }
    }

    /// Applies `data` at `off` of task `i`'s transfer.
    fn take_data(&mut self, env: &E, i: usize, off: u32, data: &[u8]) {
        let target = self.target.clone().unwrap();
        let t = &mut self.tasks[i];
        t.got = off + data.len() as u32;
        if t.error.is_some() {
            return;
        }
        // The part the command uses; what lies past its transfer length is dropped.
        let use_end = (off + data.len() as u32).min(t.want);
        let used = if off < use_end { &data[..(use_end - off) as usize] } else { &[][..] };
        if used.is_empty() {
            return;
        }
        match &mut t.kind {
            Kind::Write { or, .. } => {
                let at = t.start + off as u64;
                let mut o = target.overlay.lock().unwrap();
                let ored;
                let used = if *or {
                    // ORWRITE: the blocks' contents ORed with the data, under the same lock.
                    match read_all(&o, &target, at, used.len()) {
                        Ok(mut cur) => {
                            cur.iter_mut().zip(used).for_each(|(c, d)| *c |= d);
                            ored = cur;
                            &ored[..]
                        }
                        Err(()) => {
                            drop(o);
                            self.tasks[i].error = Some(Sense::read_error());
                            return;
                        }
                    }
                } else {
                    used
                };
                let r = o.write_reserved(at, used, &target.vdisk.chain, t.reservation.as_mut().unwrap());
                drop(o);
                match r {
                    Ok(()) if target.vdisk.damaged() => t.error = Some(Sense::read_error()),
                    Ok(()) => env.count(Counter::IscsiWrittenBytes, used.len() as u64),
                    Err(e) => {
                        let s = self.cache_sense(env, &e);
                        self.tasks[i].error = Some(s);
                    }
                }
            }
            Kind::Compare => {
                let start = t.start + off as u64;
                let diff = compare(&target, start, used);
                let t = &mut self.tasks[i];
                match diff {
                    Ok(None) => {}
                    Ok(Some(k)) => t.error = Some(Sense::miscompare(off as u64 + k as u64)),
                    Err(()) => t.error = Some(Sense::read_error()),
                }
            }
            Kind::Param(v) => v.extend_from_slice(used),
            Kind::Sink { .. } | Kind::Conflict => {}
        }
    }

    /// All data is in: the task's answer.
    fn finish(&mut self, env: &E, i: usize) {
        let task = self.tasks.remove(i);
        self.update_window();
        let target = self.target.clone().unwrap();
        if let Some(r) = task.reservation {
            target.overlay.lock().unwrap().unreserve(r);
        }
        if let Some(s) = task.error {
            env.count(Counter::IscsiCommandsCheck, 1);
            self.respond(task.itt, status::CHECK_CONDITION, Some(&s), task.residual);
            return;
        }
        match task.kind {
            Kind::Write { fua, .. } => {
                if fua {
                    if let Err(e) = target.overlay.lock().unwrap().sync() {
                        let s = self.cache_sense(env, &e);
                        self.respond(task.itt, status::CHECK_CONDITION, Some(&s), task.residual);
                        return;
                    }
                }
                self.respond(task.itt, status::GOOD, None, task.residual);
            }
            Kind::Compare => self.respond(task.itt, status::GOOD, None, task.residual),
            Kind::Conflict => self.respond(task.itt, status::RESERVATION_CONFLICT, None, task.residual),
            Kind::Sink { sense, good } => {
                if good {
                    self.respond(task.itt, status::GOOD, None, task.residual);
                } else {
                    self.respond(task.itt, status::CHECK_CONDITION, Some(&sense), task.residual);
                }
            }
            Kind::Param(v) => {
                let mut out = std::mem::take(&mut self.data);
                out.clear();
                let action = {
                    let lun = self.lun_view();
                    scsi::execute_data(&task.cdb, &v, &lun, &mut out)
                };
                self.data = out;
                if matches!(action, scsi::Action::Check(_)) {
                    env.count(Counter::IscsiCommandsCheck, 1);
                }
                self.conclude(env, task.itt, task.lun, task.len, action, &v);
            }
        }
    }
}

/// Where `data` first differs from what the target reads at `start` (VERIFY BYTCHK 1).
fn compare(target: &crate::nbd::target::Target, start: u64, data: &[u8]) -> Result<Option<usize>, ()> {
    enum P<'a> {
        D(&'a [u8]),
        C(std::ops::Range<usize>),
        Z(u64),
    }
    let o = target.overlay.lock().unwrap();
    let mut scratch = Vec::new();
    let mut pieces = Vec::new();
    o.read(start, data.len() as u64, &target.vdisk.chain, &mut scratch, usize::MAX, &mut |p| {
        pieces.push(match p {
            cache::Piece::Data(d) => P::D(d),
            cache::Piece::Copied(rg) => P::C(rg),
            cache::Piece::Zero(z) => P::Z(z),
        })
    })
    .map_err(|_| ())?;
    let mut at = 0usize;
    for p in &pieces {
        let (n, first) = match p {
            P::D(d) => (d.len(), data[at..at + d.len()].iter().zip(d.iter()).position(|(a, b)| a != b)),
            P::C(rg) => (rg.len(), data[at..at + rg.len()].iter().zip(&scratch[rg.clone()]).position(|(a, b)| a != b)),
            P::Z(z) => (*z as usize, data[at..at + *z as usize].iter().position(|&a| a != 0)),
        };
        if let Some(k) = first {
            return Ok(Some(at + k));
        }
        at += n;
    }
    Ok(None)
}

/// What the LUN holds at `[start, start + len)` (image + write cache), copied out.
fn read_all(o: &cache::Overlay, target: &crate::nbd::target::Target, start: u64, len: usize) -> Result<Vec<u8>, ()> {
    let mut scratch = Vec::new();
    let mut v = Vec::with_capacity(len);
    let mut copied = Vec::new();
    o.read(start, len as u64, &target.vdisk.chain, &mut scratch, usize::MAX, &mut |p| match p {
        cache::Piece::Data(d) => v.extend_from_slice(d),
        cache::Piece::Copied(rg) => {
            copied.push((v.len(), rg.clone()));
            v.resize(v.len() + rg.len(), 0);
        }
        cache::Piece::Zero(z) => v.resize(v.len() + z as usize, 0),
    })
    .map_err(|_| ())?;
    for (at, rg) in copied {
        v[at..at + rg.len()].copy_from_slice(&scratch[rg]);
    }
    Ok(v)
}
