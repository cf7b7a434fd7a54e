//! SCSI commands in full feature phase: the CDB run by `scsi::execute`, its answer sent as
//! Data-In (own bytes, or pieces of the image mapping, cache pages, overflow copies and the zero
//! page for READs: cut at the initiator's MaxRecvDataSegmentLength and MaxBurstLength, status in
//! the last PDU) or a SCSI Response; the write-cache side of UNMAP, WRITE SAME, SYNCHRONIZE
//! CACHE and GET LBA STATUS. Writes continue in `write`.

use super::write::Kind;
use super::{Env, Session, SCRATCH_MAX};
use crate::iscsi::scsi::reserve::Refusal;
use crate::iscsi::scsi::{self, Action, Sense};
use crate::iscsi::wire::{self, reject, status, BHS_LEN, TAG_NONE};
use crate::metrics::Counter;
use crate::nbd::cache::{self, CacheError};
use crate::session::Piece;

/// A piece of a READ's Data-In, kept while the overlay is locked (shared with NBD's replies).
pub(super) use crate::nbd::cache::ReplyPiece as RPiece;

/// A READ whose Data-In goes out over more than one batch.
#[derive(Clone, Copy, Debug)]
pub(super) struct ReadCont {
    pub itt: u32,
    pub lun: u64,
    /// Disk byte offset of the read.
    pub start: u64,
    /// Bytes to send (the transfer cut at the Expected Data Transfer Length).
    pub total: u64,
    pub done: u64,
    pub data_sn: u32,
    /// Against the Expected Data Transfer Length (positive: underflow).
    pub residual: i64,
}

/// The CDB bytes of a command: the 16 of the BHS and an extended CDB's rest (AHS type 1).
pub(super) struct Cdb {
    bytes: [u8; 16 + 260],
    len: usize,
}

impl Cdb {
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
    pub fn head(&self) -> [u8; 16] {
        self.bytes[..16].try_into().unwrap()
    }
}

fn cdb_of(c: &wire::Command, ahs: &[u8]) -> Option<Cdb> {
    let mut cdb = Cdb { bytes: [0; 16 + 260], len: 16 };
    cdb.bytes[..16].copy_from_slice(&c.cdb);
    for e in wire::ahs_entries(ahs) {
        match e {
            Ok((wire::AHS_EXTENDED_CDB, body)) if body.len() > 1 && body.len() - 1 <= 260 => {
                cdb.bytes[16..16 + body.len() - 1].copy_from_slice(&body[1..]);
                cdb.len = 16 + body.len() - 1;
            }
            Ok((wire::AHS_EXTENDED_CDB, _)) => return None,
            Ok(_) => {}
            Err(()) => return None,
        }
    }
    Some(cdb)
}

impl<E: Env> Session<E> {
    pub(super) fn lun_view(&self) -> scsi::Lun<'_> {
        let t = self.target.as_ref().expect("a normal session has its target");
        let l = self.lun.expect("set with the target");
        let bl = l.block_len;
        scsi::Lun {
            blocks: l.blocks,
            block_len: bl,
            vdisk: &t.vdisk.name,
            designator: l.designator,
            writable: true,
            max_transfer_blocks: super::TRANSFER_BYTES_MAX / bl,
            // No larger than one READ/WRITE: libiscsi's WriteSame*.Unmap writes and reads
            // back MAXIMUM WRITE SAME LENGTH blocks with single commands.
            write_same_max_blocks: (super::WRITE_SAME_BYTES_MAX.min(u64::from(super::TRANSFER_BYTES_MAX)) / bl as u64) as u32,
            unmap_descriptors_max: super::UNMAP_DESCRIPTORS_MAX,
            relative_port: l.relative_port,
            port_group: l.relative_port,
        }
    }

    pub(super) fn command(&mut self, env: &E, raw: &[u8; BHS_LEN], c: &wire::Command, ahs: &[u8], data: &[u8], _now: std::time::Instant) {
        if self.target.is_none() {
            // A Discovery session carries Text and Logout only.
            self.reject(env, raw, reject::PROTOCOL_ERROR);
            return;
        }
        if self.tasks.iter().any(|k| k.itt == c.itt) {
            self.reject(env, raw, reject::TASK_IN_PROGRESS);
            return;
        }
        let neg = self.neg.as_ref().expect("full feature phase");
        if !data.is_empty() && (!c.write || !neg.immediate_data || data.len() as u32 > neg.first_burst_length.min(c.expected_len)) {
            self.protocol_error(
                env,
                Some(raw),
                "immediate data not allowed here (not a write, ImmediateData=No, or past FirstBurstLength or the transfer)",
            );
            return;
        }
        if !c.final_ && (neg.initial_r2t || !c.write) {
            self.protocol_error(env, Some(raw), "unsolicited Data-Out announced (F bit clear) where InitialR2T=Yes or for a read");
            return;
        }
        let Some(cdb) = cdb_of(c, ahs) else {
            self.protocol_error(env, Some(raw), "a malformed additional header segment");
            return;
        };
        if let Some(t) = &self.target {
            // A reset by another session of this target (another path of a multipath host).
            let r = t.resets.load(std::sync::atomic::Ordering::Relaxed);
            if r != self.resets_seen {
                self.resets_seen = r;
                self.push_ua(Sense::lun_reset());
            }
        }
        if !self.uas.is_empty() && scsi::unit_attention_applies(cdb.as_slice()) {
            let s = self.uas.remove(0);
            env.count(Counter::IscsiCommandsCheck, 1);
            self.fail_with_data(env, c, s, data);
            return;
        }
        if wire::lun_id(c.lun) == 0
            && !matches!(cdb.as_slice()[0], scsi::op::RESERVE_6 | scsi::op::RELEASE_6)
            && env.reservations().any_reserved()
        {
            let nexus = self.nexus();
            let vdisk = &self.target.as_ref().unwrap().vdisk.name;
            if env.reservations().with(vdisk, |r| r.conflicts(nexus, cdb.as_slice())) {
                env.count(Counter::IscsiCommandsOther, 1);
                self.reservation_conflict(c, data);
                return;
            }
        }
        let mut out = std::mem::take(&mut self.data);
        out.clear();
        let action = {
            let lun = self.lun_view();
            scsi::execute(cdb.as_slice(), wire::lun_id(c.lun), &lun, &mut out)
        };
        self.data = out;
        match &action {
            Action::Read { .. } => env.count(Counter::IscsiCommandsRead, 1),
            Action::Write { .. } | Action::OrWrite { .. } => env.count(Counter::IscsiCommandsWrite, 1),
            Action::Check(_) => env.count(Counter::IscsiCommandsCheck, 1),
            _ => env.count(Counter::IscsiCommandsOther, 1),
        }
        let bl = self.lun.unwrap().block_len as u64;
        match action {
            Action::Read { lba, blocks } => {
                let bytes = blocks as u64 * bl;
                let t = self.target.clone().unwrap();
                if t.vdisk.damaged() {
                    env.count(Counter::IscsiDamaged, 1);
                    self.fail_with_data(env, c, Sense::read_error(), data);
                    return;
                }
                let total = bytes.min(c.expected_len as u64);
                let residual = c.expected_len as i64 - bytes as i64;
                if total == 0 {
                    self.respond(c.itt, status::GOOD, None, residual);
                    return;
                }
                env.count(Counter::IscsiReadBytes, total);
                self.read_part(env, ReadCont { itt: c.itt, lun: c.lun, start: lba * bl, total, done: 0, data_sn: 0, residual });
            }
            Action::Write { lba, blocks, fua } => {
                self.start_task(env, raw, c, &cdb, Kind::Write { fua, or: false }, lba * bl, blocks as u64 * bl, data)
            }
            Action::OrWrite { lba, blocks, fua } => {
                self.start_task(env, raw, c, &cdb, Kind::Write { fua, or: true }, lba * bl, blocks as u64 * bl, data)
            }
            Action::Compare { lba, blocks } => self.start_task(env, raw, c, &cdb, Kind::Compare, lba * bl, blocks as u64 * bl, data),
            Action::DataOut { len } if len <= super::PARAM_BYTES_MAX => {
                self.start_task(env, raw, c, &cdb, Kind::Param(Vec::new()), 0, len as u64, data)
            }
            Action::DataOut { .. } => self.fail_with_data(env, c, Sense::param_list_length(), data),
            other => {
                if !c.final_ {
                    // Unsolicited data for a command that takes none: eaten, then the answer.
                    let sense = self.conclude_effects(env, &other, &[]).err();
                    self.sink(c, sense.unwrap_or(Sense::no_sense()), sense.is_none());
                    return;
                }
                self.conclude(env, c.itt, c.lun, c.expected_len, other, &[]);
            }
        }
    }

    /// A command refused before its data: answered now, or once the unsolicited data that is
    /// announced (F bit clear) has been eaten (the ITT stays in use until then).
    fn fail_with_data(&mut self, _env: &E, c: &wire::Command, s: Sense, _data: &[u8]) {
        if !c.final_ {
            self.sink(c, s, false);
        } else {
            self.respond(c.itt, status::CHECK_CONDITION, Some(&s), c.expected_len as i64);
        }
    }

    /// Runs what an action does to the write cache (none for most).
    fn conclude_effects(&mut self, env: &E, a: &Action, param: &[u8]) -> Result<(), Sense> {
        let t = self.target.clone().unwrap();
        let bl = self.lun.unwrap().block_len as u64;
        let chain = &t.vdisk.chain;
        let r = match a {
            Action::Zero { lba, blocks } => t.overlay.lock().unwrap().zero(lba * bl, blocks * bl, chain),
            Action::Unmap(ranges) => {
                let mut o = t.overlay.lock().unwrap();
                ranges.iter().try_for_each(|(lba, n)| o.zero(lba * bl, n * bl, chain))
            }
            Action::Fill { lba, blocks } => {
                let block = &param[..(bl as usize).min(param.len())];
                let mut o = t.overlay.lock().unwrap();
                (0..*blocks).try_for_each(|i| o.write((lba + i) * bl, block, chain))
            }
            Action::Sync => t.overlay.lock().unwrap().sync(),
            _ => Ok(()),
        };
        r.map_err(|e| self.cache_sense(env, &e))
    }

    pub(super) fn cache_sense(&self, env: &E, e: &CacheError) -> Sense {
        tracing::warn!(initiator = %self.initiator, cache = self.target.as_ref().map(|t| t.id.as_str()).unwrap_or("-"), "iscsi write refused: {e}");
        match e {
            CacheError::NoSpace(_) => {
                env.count(Counter::IscsiNoSpace, 1);
                Sense::space_allocation_failed()
            }
            CacheError::Io(_) => Sense::write_error(),
        }
    }

    /// Answers a command whose action needs nothing more from the initiator: the cache side of
    /// it, then Data-In (own bytes in `self.data`) or a SCSI Response.
    pub(super) fn conclude(&mut self, env: &E, itt: u32, lun: u64, edtl: u32, a: Action, param: &[u8]) {
        if let Err(s) = self.conclude_effects(env, &a, param) {
            self.respond(itt, status::CHECK_CONDITION, Some(&s), edtl as i64);
            return;
        }
        let nexus = self.nexus();
        let vdisk = self.target.as_ref().unwrap().vdisk.name.clone();
        let table = env.reservations();
        let refusal = match &a {
            Action::Reserve6 => table.with(&vdisk, |r| r.reserve6(nexus)).err(),
            Action::Release6 => table.with(&vdisk, |r| r.release6(nexus)).err(),
            Action::PrOut { service, scope_type, param } => {
                let max = env.snapshot().config.iscsi.registrants_max as usize;
                table.with(&vdisk, |r| r.pr_out(nexus, *service, *scope_type, param, max)).err()
            }
            &Action::PrIn { service, alloc_len } => {
                let mut out = std::mem::take(&mut self.data);
                out.clear();
                let r = table.with(&vdisk, |r| r.pr_in(service, alloc_len, &mut out));
                self.data = out;
                r.err().map(Refusal::Check)
            }
            _ => None,
        };
        match refusal {
            Some(Refusal::Conflict) => return self.respond(itt, status::RESERVATION_CONFLICT, None, edtl as i64),
            Some(Refusal::Check(s)) => {
                env.count(Counter::IscsiCommandsCheck, 1);
                return self.respond(itt, status::CHECK_CONDITION, Some(&s), edtl as i64);
            }
            None => {}
        }
        match a {
            Action::PrIn { .. } => self.data_in_own(itt, lun, edtl),
            Action::Data => self.data_in_own(itt, lun, edtl),
            Action::LbaStatus { lba, blocks, alloc_len } => {
                let t = self.target.clone().unwrap();
                let bl = self.lun.unwrap().block_len as u64;
                let mut runs = Vec::new();
                t.overlay.lock().unwrap().status(lba * bl, blocks * bl, &t.vdisk.chain, &mut |l, f| {
                    if runs.len() < scsi::LBA_STATUS_DESCRIPTORS_MAX + 1 {
                        runs.push((l, f));
                    }
                });
                let mut out = std::mem::take(&mut self.data);
                out.clear();
                scsi::lba_status(lba, &runs, &self.lun_view(), alloc_len, &mut out);
                self.data = out;
                self.data_in_own(itt, lun, edtl);
            }
            Action::Check(s) => self.respond(itt, status::CHECK_CONDITION, Some(&s), edtl as i64),
            _ => self.respond(itt, status::GOOD, None, edtl as i64),
        }
    }

    /// A SCSI Response: status, sense data (SenseLength + fixed-format sense), residual.
    pub(super) fn respond(&mut self, itt: u32, st: u8, sense: Option<&Sense>, residual: i64) {
        let mut d = Vec::new();
        if let Some(s) = sense {
            d.extend_from_slice(&[0, 0]);
            s.write(&mut d);
            let n = (d.len() - 2) as u16;
            d[..2].copy_from_slice(&n.to_be_bytes());
        }
        let sn = self.sn_take();
        let r = wire::ScsiResponse { itt, response: status::COMPLETED, status: st, sn, exp_data_sn: 0, residual, data_len: d.len() as u32 };
        self.put_pdu(|o| r.emit(o), &d);
    }

    /// Data-In of the bytes in `self.data`, cut at the transfer length; GOOD in the last PDU.
    fn data_in_own(&mut self, itt: u32, lun: u64, edtl: u32) {
        let data = std::mem::take(&mut self.data);
        let n = data.len().min(edtl as usize);
        let residual = edtl as i64 - data.len() as i64;
        if n == 0 {
            self.respond(itt, status::GOOD, None, residual);
            self.data = data;
            return;
        }
        let seg = self.max_send as usize;
        let mut off = 0usize;
        let mut data_sn = 0u32;
        while off < n {
            let k = (n - off).min(seg);
            let last = off + k == n;
            let sn = if last { self.sn_take() } else { self.sn() };
            let d = wire::DataIn {
                final_: last,
                status: last.then_some(status::GOOD),
                lun,
                itt,
                sn,
                data_sn,
                offset: off as u32,
                residual,
                data_len: k as u32,
            };
            self.put_pdu(|o| d.emit(o), &data[off..off + k]);
            off += k;
            data_sn += 1;
        }
        self.data = data;
    }

    /// The next part of a READ's Data-In: as much as the scratch allows (overflow-file blocks
    /// are copied, at most `SCRATCH_MAX` per batch); the rest waits in `cont`.
    pub(super) fn read_part(&mut self, env: &E, k: ReadCont) {
        let t = self.target.clone().expect("reads have a target");
        if self.scratch.len() + cache::BLOCK as usize > SCRATCH_MAX {
            self.cont = Some(k);
            return;
        }
        let from = k.start + k.done;
        let left = k.total - k.done;
        self.tmp.clear();
        let part = {
            let mut o = t.overlay.lock().unwrap();
            let res =
                o.read_reply(from, left, &t.vdisk.chain, &mut self.scratch, SCRATCH_MAX, &mut self.pin, !self.digests.data, &mut self.tmp);
            match res {
                Ok(n) => n,
                Err(e) => {
                    drop(o);
                    self.read_failed(env, &k, &e.to_string());
                    return;
                }
            }
        };
        if t.vdisk.damaged() {
            env.count(Counter::IscsiDamaged, 1);
            self.read_failed(env, &k, crate::nbd::session::DAMAGED);
            return;
        }
        let tmp = std::mem::take(&mut self.tmp);
        let mut k = k;
        let seg = self.max_send as u64;
        let burst = self.neg.as_ref().map_or(seg, |n| n.max_burst_length as u64).max(seg.min(512));
        let end = k.done + part;
        let (mut i, mut skip) = (0usize, 0u64);
        while k.done < end {
            let next_burst = (k.done / burst + 1) * burst;
            let n = (end - k.done).min(seg).min(next_burst - k.done);
            let last = k.done + n == k.total;
            let sn = if last { self.sn_take() } else { self.sn() };
            let d = wire::DataIn {
                final_: last || k.done + n == next_burst,
                status: last.then_some(status::GOOD),
                lun: k.lun,
                itt: k.itt,
                sn,
                data_sn: k.data_sn,
                offset: k.done as u32,
                residual: k.residual,
                data_len: n as u32,
            };
            self.data_in_pieces(&d, &tmp, &mut i, &mut skip, n);
            k.done += n;
            k.data_sn += 1;
        }
        self.tmp = tmp;
        if k.done < k.total {
            self.cont = Some(k);
        }
    }

    /// A READ whose data cannot be read: CHECK CONDITION when nothing went out yet, else the
    /// connection ends (a Data-In sequence cannot be taken back).
    fn read_failed(&mut self, env: &E, k: &ReadCont, why: &str) {
        self.tmp.clear();
        if k.done == 0 {
            tracing::warn!(initiator = %self.initiator, "iscsi read failed: {why}");
            env.count(Counter::IscsiCommandsCheck, 1);
            self.respond(k.itt, status::CHECK_CONDITION, Some(&Sense::read_error()), k.residual + k.total as i64);
        } else {
            tracing::warn!(initiator = %self.initiator, "iscsi read failed after its Data-In started: {why}; closing the connection");
            self.end("a read failed after its Data-In started");
        }
    }

    /// One Data-In PDU: its header, `n` bytes of `tmp` from (`i`, `skip`), padding, digests.
    fn data_in_pieces(&mut self, d: &wire::DataIn, tmp: &[RPiece], i: &mut usize, skip: &mut u64, n: u64) {
        let dg = self.digests;
        self.batch.put(|o| {
            let at = o.len();
            d.emit(o);
            if dg.header {
                let c = wire::crc32c(&[&o[at..at + BHS_LEN]]);
                o.extend_from_slice(&wire::digest_bytes(c));
            }
        });
        let mut crc = 0u32;
        let mut want = n;
        while want > 0 {
            let p = tmp[*i];
            let avail = p.len() - *skip;
            let k = avail.min(want);
            let piece = p.cut(*skip, k);
            if dg.data {
                crc = match piece {
                    // Safety: the piece points into a pinned page or the mapping, alive now.
                    RPiece::Mem(ptr, len) => crate::image::bytes::crc32c_append(crc, unsafe { std::slice::from_raw_parts(ptr, len) }),
                    RPiece::Scratch(off, len) => crate::image::bytes::crc32c_append(crc, &self.scratch[off as usize..(off + len) as usize]),
                    RPiece::Zero(z) => (0..z).step_by(crate::session::ZEROS_LEN).fold(crc, |c, s| {
                        let m = (z - s).min(crate::session::ZEROS_LEN as u64) as usize;
                        crate::image::bytes::crc32c_append(c, &crate::session::ZEROS[..m])
                    }),
                };
            }
            match piece {
                RPiece::Mem(ptr, len) => {
                    self.batch.pieces.push(Piece::Mem { ptr, len });
                    self.batch.len += len as u64;
                    self.batch.mem_len += len as u64;
                }
                RPiece::Scratch(off, len) => {
                    self.scratch_refs.push((self.batch.pieces.len() as u32, off));
                    self.batch.pieces.push(Piece::Mem { ptr: std::ptr::null(), len: len as usize });
                    self.batch.len += len as u64;
                    self.batch.mem_len += len as u64;
                }
                RPiece::Zero(z) => self.batch.zeros(z),
            }
            want -= k;
            *skip += k;
            if *skip == p.len() {
                *i += 1;
                *skip = 0;
            }
        }
        let pad = wire::pad4(n as usize) - n as usize;
        if pad > 0 || dg.data {
            self.batch.put(|o| {
                o.extend_from_slice(&[0u8; 3][..pad]);
                if dg.data {
                    let c = crate::image::bytes::crc32c_append(crc, &[0u8; 3][..pad]);
                    o.extend_from_slice(&wire::digest_bytes(c));
                }
            });
        }
    }

    /// The SCSI identity of this session (SPC-4 I_T nexus, iSCSI: initiator name and ISID),
    /// spelled once at login ([`nexus_of`]).
    pub(super) fn nexus(&self) -> &str {
        &self.nexus
    }

    /// RESERVATION CONFLICT now, or once the announced unsolicited data has been eaten.
    fn reservation_conflict(&mut self, c: &wire::Command, _data: &[u8]) {
        if c.final_ {
            self.respond(c.itt, status::RESERVATION_CONFLICT, None, c.expected_len as i64);
        } else {
            let mut task = super::write::Task::sink(c, Sense::no_sense(), false);
            task.kind = Kind::Conflict;
            self.tasks.push(task);
        }
    }

    fn sink(&mut self, c: &wire::Command, s: Sense, good: bool) {
        let task = super::write::Task::sink(c, s, good);
        self.tasks.push(task);
        let _ = TAG_NONE;
    }
}

/// An I_T nexus's name: `<initiator name>,i,0x<ISID in hex>`.
pub(super) fn nexus_of(initiator: &str, isid: [u8; 6]) -> String {
    let i = isid;
    format!("{initiator},i,0x{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}", i[0], i[1], i[2], i[3], i[4], i[5])
}
