//! The send half of a worker's TFTP transfers: what dirty sessions want to send goes out as
//! sendmsg from the send slots (DATA from the mapping, or netascii read with pread), receives
//! and timers are re-armed, and ended transfers are counted, told and closed.

use super::*;

impl TftpService {
    /// Sends what dirty sessions want to send, re-arms receives and timers, ends finished
    /// transfers and frees sessions whose last send completed.
    pub fn flush(&mut self, ring: &mut IoUring, wheel: &mut Wheel, bgid: u16, now: Instant) {
        if !self.listen_armed {
            if let Some(l) = self.listener.as_ref() {
                Self::arm_recv(ring, SockRef::Raw(l.as_raw_fd()), &self.msg, bgid, ud(K_LISTEN, 0, 0, 0));
                self.listen_armed = true;
            }
        }
        let mut i = 0;
        while i < self.dirty.len() {
            let id = self.dirty[i];
            i += 1;
            self.flush_one(id, ring, wheel, bgid, now);
        }
        self.dirty.clear();
    }

    fn flush_one(&mut self, id: u32, ring: &mut IoUring, wheel: &mut Wheel, bgid: u16, now: Instant) {
        let msg_template: *const libc::msghdr = &*self.msg;
        let Some(s) = self.sessions.at(id) else { return };
        s.dirty = false;
        if s.closing {
            if s.inflight == 0 {
                self.free_session(id);
            }
            return;
        }
        if s.file_changed || s.source.damaged() {
            s.file_changed = true;
            return self.end(id, ring, Status::Active, now);
        }
        let mut data_packets = 0u64;
        let mut data_bytes = 0u64;
        let retransmits_before = s.transfer.retransmits;
        while let Some(&slot_i) = s.free_slots.last() {
            let Some(tx) = s.transfer.poll_transmit(now) else { break };
            let slot = &mut s.slots[slot_i as usize];
            let (first, second): (&[u8], &[u8]) = match tx {
                Transmit::Oack => (&s.oack[..s.oack_len], &[]),
                Transmit::Data { block, offset, len } => {
                    slot.head = wire::data_header(block);
                    let payload: &[u8] = match &mut s.source {
                        Source::Map(b) => &b.bytes()[offset as usize..offset as usize + len],
                        Source::Netascii { file, stream, bufs } => {
                            let blk = s.transfer.negotiated.blksize as usize;
                            let abs = offset / blk as u64 + 1;
                            let buf = &mut bufs[slot_i as usize * blk..(slot_i as usize + 1) * blk];
                            match stream.block(abs, s.transfer.base(), buf, |o, b| file.read_at(b, o)) {
                                Ok(n) => {
                                    s.transfer.produced(abs, n);
                                    &buf[..n]
                                }
                                Err(e) => {
                                    tracing::warn!(client = %s.peer, file = %s.file.display(), block = abs, "tftp netascii transfer stopped: {e}");
                                    s.transfer.source_failed();
                                    break;
                                }
                            }
                        }
                    };
                    data_packets += 1;
                    data_bytes += payload.len() as u64;
                    (&slot.head[..], payload)
                }
            };
            s.free_slots.pop();
            slot.iov[0] = libc::iovec { iov_base: first.as_ptr() as *mut _, iov_len: first.len() };
            slot.iov[1] = libc::iovec { iov_base: second.as_ptr() as *mut _, iov_len: second.len() };
            // Connected: no address, so the kernel uses the socket's cached route.
            slot.msg.msg_name = std::ptr::null_mut();
            slot.msg.msg_namelen = 0;
            slot.msg.msg_iov = slot.iov.as_mut_ptr();
            slot.msg.msg_iovlen = if second.is_empty() { 1 } else { 2 };
            let e = with_sock!(s.sref, f => opcode::SendMsg::new(f, &slot.msg).build().user_data(ud(K_SEND, id, s.generation, slot_i)));
            push(ring, &e);
            s.inflight += 1;
        }
        let retransmits = s.transfer.retransmits - retransmits_before;
        if !s.recv_armed && s.transfer.status() == Status::Active {
            // Safety: the template lives in the service for the worker's whole life.
            Self::arm_recv(ring, s.sref, unsafe { &*msg_template }, bgid, ud(K_RECV, id, s.generation, 0));
            s.recv_armed = true;
        }
        if !s.stray_armed && s.transfer.status() == Status::Active {
            if let Some(stray) = s.stray.as_ref() {
                // Safety: as above.
                Self::arm_recv(ring, SockRef::Raw(stray.as_raw_fd()), unsafe { &*msg_template }, bgid, ud(K_STRAY, id, s.generation, 0));
                s.stray_armed = true;
            }
        }
        if let Some(t) = s.transfer.poll_timeout() {
            if s.timer_due.is_none_or(|d| t < d) {
                wheel.insert(t, Token::new(ServiceId::Tftp, K_TIMER, id, s.generation));
                s.timer_due = Some(t);
            }
        }
        let status = s.transfer.status();
        self.count(Counter::TftpDataPackets, data_packets);
        self.count(Counter::TftpDataBytes, data_bytes);
        self.count(Counter::TftpRetransmits, retransmits);
        if status != Status::Active {
            self.end(id, ring, status, now);
        }
    }

    pub(super) fn end(&mut self, id: u32, ring: &mut IoUring, status: Status, now: Instant) {
        let worker = self.worker;
        let s = self.sessions.at(id).unwrap();
        if s.closing {
            return;
        }
        s.closing = true;
        let elapsed = now - s.started;
        let end = ending::ending(status, s.file_changed, s.transfer.confirmed());
        if let (Some(why), Some(sock)) = (end.error, s.sock.as_ref()) {
            Self::send_error_from(sock.as_raw_fd(), &s.peer_raw, wire::ERR_NOT_DEFINED, why);
        }
        tracing::info!(
            worker,
            client = %s.peer,
            file = %s.file.display(),
            outcome = end.outcome,
            acked_bytes = s.transfer.acked_bytes(),
            retransmits = s.transfer.retransmits,
            ms = elapsed.as_millis() as u64,
            "tftp transfer ended"
        );
        if s.recv_armed {
            push(ring, &opcode::AsyncCancel::new(ud(K_RECV, id, s.generation, 0)).build().user_data(ud(K_CANCEL, 0, 0, 0)));
            s.recv_armed = false;
        }
        if s.stray_armed {
            push(ring, &opcode::AsyncCancel::new(ud(K_STRAY, id, s.generation, 0)).build().user_data(ud(K_CANCEL, 0, 0, 0)));
            s.stray_armed = false;
        }
        s.sock = None; // closed; the kernel keeps its own references for operations in flight
        s.stray = None;
        let sref = std::mem::replace(&mut s.sref, SockRef::Raw(-1));
        let ip = s.peer.ip().to_canonical();
        let lingering = s.inflight > 0;
        if status == Status::Done {
            self.stats.tftp_duration.observe(elapsed);
        }
        self.count(end.counter, 1);
        self.active -= 1;
        self.stats.tftp_sessions.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        self.shared.tftp_admission.release(ip);
        self.slots.release(ring, sref);
        if !lingering {
            self.free_session(id);
        }
    }

    fn free_session(&mut self, id: u32) {
        self.sessions.remove(id);
    }
}
