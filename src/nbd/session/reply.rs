//! The replies that carry data: READ (simple or structured, in parts bounded by the scratch)
//! and BLOCK_STATUS.

use super::*;

impl<E: Env> Session<E> {
    /// A READ reply, or the next part of one: simple (header + bytes) or structured (data and
    /// hole chunks). A part ends where the scratch would pass `nbd.reply_scratch_bytes_max`;
    /// the rest is left in `cont` for the next batch. Returns true when the connection must end
    /// (an overflow-file error after the reply started).
    pub(super) fn read(&mut self, target: &Arc<Target>, k: Cont, scratch_max: usize) -> bool {
        let Cont { r, done, started } = k;
        let len = r.length as u64;
        let structured = self.structured;
        if len == 0 {
            if structured {
                self.reply_ok(r.cookie);
            } else {
                self.batch.put(|o| wire::simple_reply(o, 0, r.cookie));
            }
            return false;
        }
        if self.scratch.len() + cache::BLOCK as usize > scratch_max {
            self.cont = Some(k); // no room for even one overflow block: after this batch
            return false;
        }
        let (from, left) = (r.offset + done, len - done);
        self.tmp.clear();
        let part = {
            let mut o = target.overlay.lock().unwrap();
            let res = o.read_reply(from, left, &target.vdisk.chain, &mut self.scratch, scratch_max, &mut self.pin, true, &mut self.tmp);
            match res {
                Ok(n) => n,
                Err(e) => {
                    drop(o);
                    if started {
                        tracing::warn!(client = %self.peer, "nbd read failed after its reply started: {e}; closing the connection");
                        return true;
                    }
                    self.reply_err(r.cookie, wire::EIO, &e.to_string());
                    return false;
                }
            }
        };
        // The lookups just made may be what found the image changed (a fault past its end reads
        // zeros and marks it damaged): then these pieces are not the disk's bytes.
        if target.vdisk.damaged() {
            self.tmp.clear();
            if started {
                tracing::warn!(client = %self.peer, "nbd read found the image damaged after its reply started; closing the connection");
                return true;
            }
            self.reply_err(r.cookie, wire::EIO, DAMAGED);
            return false;
        }
        let last = part == left;
        if !last {
            self.cont = Some(Cont { r, done: done + part, started: true });
        }
        let tmp = std::mem::take(&mut self.tmp);
        let df = r.flags & wire::CMD_FLAG_DF != 0;
        if !structured {
            if !started {
                self.batch.put(|o| wire::simple_reply(o, 0, r.cookie));
            }
            for p in &tmp {
                self.emit_piece(*p);
            }
        } else if df {
            // One data chunk for the whole reply (DF): its header, with the full length, goes
            // out with the first part.
            if !started {
                self.batch.put(|o| {
                    wire::chunk(o, wire::REPLY_FLAG_DONE, wire::REPLY_TYPE_OFFSET_DATA, r.cookie, 8 + len as u32);
                    o.extend_from_slice(&r.offset.to_be_bytes());
                });
            }
            for p in &tmp {
                self.emit_piece(*p);
            }
        } else {
            // Chunks: holes as OFFSET_HOLE, data runs as OFFSET_DATA whose length is patched when
            // the run ends; the last chunk of the last part ends the reply.
            let mut at = from;
            let mut open: Option<(usize, u64)> = None; // (length field position in buf, bytes)
            let mut last_hdr = 0usize;
            for p in &tmp {
                match *p {
                    cache::ReplyPiece::Zero(n) => {
                        if let Some((pos, l)) = open.take() {
                            self.batch.buf[pos..pos + 4].copy_from_slice(&(8 + l as u32).to_be_bytes());
                        }
                        last_hdr = self.batch.buf.len();
                        self.batch.put(|o| {
                            wire::chunk(o, 0, wire::REPLY_TYPE_OFFSET_HOLE, r.cookie, 12);
                            o.extend_from_slice(&at.to_be_bytes());
                            o.extend_from_slice(&(n as u32).to_be_bytes());
                        });
                        at += n;
                    }
                    p => {
                        if open.is_none() {
                            last_hdr = self.batch.buf.len();
                            self.batch.put(|o| {
                                wire::chunk(o, 0, wire::REPLY_TYPE_OFFSET_DATA, r.cookie, 0);
                                o.extend_from_slice(&at.to_be_bytes());
                            });
                            open = Some((last_hdr + 16, 0));
                        }
                        let n = self.emit_piece(p);
                        open.as_mut().unwrap().1 += n;
                        at += n;
                    }
                }
            }
            if let Some((pos, l)) = open.take() {
                self.batch.buf[pos..pos + 4].copy_from_slice(&(8 + l as u32).to_be_bytes());
            }
            if last {
                self.batch.buf[last_hdr + 4..last_hdr + 6].copy_from_slice(&wire::REPLY_FLAG_DONE.to_be_bytes());
            }
        }
        self.tmp = tmp;
        false
    }

    /// BLOCK_STATUS for base:allocation: at most EXTENTS_MAX extents (one with REQ_ONE).
    pub(super) fn block_status(&mut self, target: &Arc<Target>, r: wire::Request) {
        let cap = if r.flags & wire::CMD_FLAG_REQ_ONE != 0 { 1 } else { EXTENTS_MAX };
        let ext = &mut self.extents;
        ext.clear();
        target.overlay.lock().unwrap().status(r.offset, r.length as u64, &target.vdisk.chain, &mut |l, f| {
            if ext.len() < cap {
                ext.push((l, f));
            }
        });
        let ext = &self.extents;
        self.batch.put(|o| {
            wire::chunk(o, wire::REPLY_FLAG_DONE, wire::REPLY_TYPE_BLOCK_STATUS, r.cookie, 4 + 8 * ext.len() as u32);
            o.extend_from_slice(&wire::BASE_ALLOCATION_ID.to_be_bytes());
            for (l, f) in ext {
                o.extend_from_slice(&(*l as u32).to_be_bytes());
                o.extend_from_slice(&f.to_be_bytes());
            }
        });
    }
}
