//! Task management (RFC 7143 11.5, SAM-5 7): ABORT TASK, ABORT TASK SET, CLEAR TASK SET, LUN
//! RESET, TARGET WARM RESET; the CmdSNs an ABORT TASK took before their command arrived; and
//! the tasks another initiator's PREEMPT AND ABORT took from this session, learnt from the
//! reservation table's notices before the session's next step. An aborted task sends nothing
//! more (TAS 0): no R2T, Data-In or status; its Data-Out is dropped. Limits: `ABORTED_MAX`
//! ITTs and skipped CmdSNs remembered, `UAS_MAX` unit attentions queued.

use super::{Env, Session, ABORTED_MAX};
use crate::iscsi::scsi::Sense;
use crate::iscsi::wire::{self, tmf};
use crate::metrics::Counter;

/// Unit attentions queued for the next commands (SPC-4 lets a device server drop the ones
/// past its queue; a reset and a preempt are three at most).
const UAS_MAX: usize = 4;

impl<E: Env> Session<E> {
    pub(super) fn task_mgmt(&mut self, env: &E, t: &wire::TaskMgmt) {
        env.count(Counter::IscsiTaskMgmt, 1);
        let lun = wire::lun_id(t.lun);
        let response = match t.function {
            tmf::ABORT_TASK => {
                if let Some(i) = self.tasks.iter().position(|k| k.itt == t.referenced_tag) {
                    self.abort(i);
                    tmf::COMPLETE
                } else {
                    self.abort_unseen(t)
                }
            }
            tmf::ABORT_TASK_SET | tmf::CLEAR_TASK_SET | tmf::LUN_RESET | tmf::TARGET_WARM_RESET => {
                if lun != 0 && t.function != tmf::TARGET_WARM_RESET {
                    tmf::NO_LUN
                } else {
                    self.abort_all();
                    if matches!(t.function, tmf::LUN_RESET | tmf::TARGET_WARM_RESET) {
                        self.push_ua(Sense::lun_reset());
                        if let Some(t) = &self.target {
                            self.resets_seen = t.resets.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                            // A reset ends the SPC-2 reservation, whoever holds it; persistent
                            // reservations survive it (SPC-4 5.13.1, table 36).
                            env.reservations().with(&t.vdisk.name, |r| r.reset());
                        }
                    }
                    tmf::COMPLETE
                }
            }
            _ => tmf::NOT_SUPPORTED,
        };
        tracing::info!(initiator = %self.initiator, function = t.function, response, "iscsi task management");
        let sn = self.sn_take();
        self.put_pdu(|o| wire::TaskMgmtResponse { itt: t.itt, response, sn }.emit(o), &[]);
    }

    /// ABORT TASK of a task that is not here (RFC 7143 11.5.1). Its RefCmdSN inside the CmdSN
    /// window and below the request's own CmdSN (b): the command was numbered but has not
    /// arrived; the CmdSN counts as received (ExpCmdSN steps over it, so the window does not
    /// wait for a command the initiator now never sends), the command is dropped if it comes
    /// after all, and the answer is "Function complete". Outside the window (c), which is where
    /// a command already done lies (below ExpCmdSN; libiscsi's AbortTaskSimpleAsync then
    /// expects the WRITE's GOOD), and in the case the RFC leaves open (RefCmdSN not below the
    /// request's CmdSN): "Task does not exist".
    fn abort_unseen(&mut self, t: &wire::TaskMgmt) -> u8 {
        let r = t.ref_cmdsn;
        self.update_window();
        let in_window = wire::sn_le(self.exp_cmdsn, r) && wire::sn_le(r, self.max_cmdsn);
        if !in_window || !wire::sn_lt(r, t.cmdsn) {
            return tmf::NO_TASK;
        }
        if !self.cancelled.contains(&r) {
            // Those below ExpCmdSN (stepped over already) go first; the rest lie inside the
            // window, so there are at most `commands_in_flight_max` of them.
            if self.cancelled.len() >= ABORTED_MAX {
                if let Some(i) = self.cancelled.iter().position(|&c| wire::sn_lt(c, self.exp_cmdsn)) {
                    self.cancelled.remove(i);
                }
            }
            self.cancelled.push(r);
        }
        self.remember_aborted(t.referenced_tag);
        self.skip_cancelled();
        tmf::COMPLETE
    }

    /// ExpCmdSN steps over the CmdSNs aborted before their command came.
    pub(super) fn skip_cancelled(&mut self) {
        while self.cancelled.contains(&self.exp_cmdsn) {
            self.exp_cmdsn = self.exp_cmdsn.wrapping_add(1);
        }
    }

    /// A non-immediate command whose CmdSN an ABORT TASK took before it arrived: a duplicate
    /// of a CmdSN received, dropped without an answer (RFC 7143 4.2.2.1). True when dropped.
    pub(super) fn cancelled_late(&mut self, immediate: bool, cmdsn: u32) -> bool {
        if immediate || !wire::sn_lt(cmdsn, self.exp_cmdsn) {
            return false;
        }
        let Some(i) = self.cancelled.iter().position(|&c| c == cmdsn) else { return false };
        self.cancelled.remove(i);
        tracing::debug!(initiator = %self.initiator, cmdsn, "iscsi command aborted before it arrived: dropped");
        true
    }

    pub(super) fn abort(&mut self, i: usize) {
        let task = self.tasks.remove(i);
        if let (Some(r), Some(t)) = (task.reservation, self.target.as_ref()) {
            t.overlay.lock().unwrap().unreserve(r);
        }
        self.remember_aborted(task.itt);
    }

    /// Every task of the session (ABORT TASK SET, resets, logout, a preempt's abort), a READ
    /// whose Data-In continues included. Returns how many there were.
    pub(super) fn abort_all(&mut self) -> usize {
        let mut n = self.tasks.len();
        while !self.tasks.is_empty() {
            self.abort(0);
        }
        if let Some(k) = self.cont.take() {
            self.remember_aborted(k.itt);
            n += 1;
        }
        n
    }

    fn remember_aborted(&mut self, itt: u32) {
        if self.aborted.contains(&itt) {
            return;
        }
        if self.aborted.len() >= ABORTED_MAX {
            self.aborted.remove(0);
        }
        self.aborted.push(itt);
    }

    pub(super) fn push_ua(&mut self, s: Sense) {
        if !self.uas.contains(&s) && self.uas.len() < UAS_MAX {
            self.uas.push(s);
        }
    }

    /// Takes the notice another initiator's PREEMPT (AND ABORT), CLEAR or RELEASE left for this
    /// nexus, if the reservation table's epoch moved since the last look (one atomic load
    /// otherwise). Run before every step, so that an aborted task sends nothing more: its R2Ts
    /// were sent already, its Data-Out is dropped when it comes, a READ's Data-In stops. A step
    /// already running on another worker when the preempt came ends first: the abort takes effect
    /// between two steps of this session.
    pub(super) fn collect_notice(&mut self, env: &E) {
        let epoch = env.reservations().epoch();
        if epoch == self.notices_seen {
            return;
        }
        self.notices_seen = epoch;
        let Some(t) = self.target.clone() else { return };
        let nexus = self.nexus();
        let Some(n) = env.reservations().with(&t.vdisk.name, |r| r.take_notice(nexus)) else { return };
        let aborted = if n.abort { self.abort_all() } else { 0 };
        let what = if n.preempted {
            "iscsi registration preempted by another initiator"
        } else if n.cleared {
            "iscsi registrations and reservation cleared by another initiator"
        } else {
            "iscsi reservation released by another initiator"
        };
        tracing::info!(initiator = %self.initiator, aborted, abort = n.abort, "{what}");
        if aborted > 0 {
            self.push_ua(Sense::commands_cleared());
        }
        for (on, ua) in [
            (n.preempted, Sense::registrations_preempted()),
            (n.cleared, Sense::reservations_preempted()),
            (n.released, Sense::reservations_released()),
        ] {
            if on {
                self.push_ua(ua);
            }
        }
    }
}
