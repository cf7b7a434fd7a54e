//! SCSI reservations of one LUN as a pure state machine: SPC-2 RESERVE(6)/RELEASE(6) and
//! SPC-4 persistent reservations (PERSISTENT RESERVE IN/OUT), and which commands a reservation
//! held by another I_T nexus turns into RESERVATION CONFLICT. No lock and no I/O: the engine
//! keeps one [`State`] per LUN behind a mutex; nothing is persisted (APTPL is refused).
//! A PREEMPT (AND ABORT), a CLEAR, and the release of a registrants-only or all-registrants
//! reservation leave a [`Notice`] per nexus they concern, which that nexus's session (on any
//! worker) collects before its next step: at most `registrants_max` wait per LUN.

use super::{be64, Sense};

/// Persistent reservation types (SPC-4 table 212).
pub mod kind {
    pub const WRITE_EXCLUSIVE: u8 = 1;
    pub const EXCLUSIVE_ACCESS: u8 = 3;
    pub const WRITE_EXCLUSIVE_RO: u8 = 5;
    pub const EXCLUSIVE_ACCESS_RO: u8 = 6;
    pub const WRITE_EXCLUSIVE_AR: u8 = 7;
    pub const EXCLUSIVE_ACCESS_AR: u8 = 8;
}

/// PERSISTENT RESERVE OUT service actions.
mod sa {
    pub const REGISTER: u8 = 0;
    pub const RESERVE: u8 = 1;
    pub const RELEASE: u8 = 2;
    pub const CLEAR: u8 = 3;
    pub const PREEMPT: u8 = 4;
    pub const PREEMPT_AND_ABORT: u8 = 5;
    pub const REGISTER_AND_IGNORE: u8 = 6;
}

/// The PERSISTENT RESERVE OUT parameter list this target takes (no SPEC_I_PT lists).
pub const PROUT_PARAM_LEN: u32 = 24;

/// Why a reservation command failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Status RESERVATION CONFLICT (0x18), no sense.
    Conflict,
    Check(Sense),
}

/// What another nexus's PERSISTENT RESERVE OUT leaves for a registered nexus, until that
/// nexus's session takes it ([`State::take_notice`]): the unit attentions to report and
/// whether the session's tasks are aborted (SPC-4, "Releasing persistent reservations and
/// removing registrations"). Notices for one nexus merge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Notice {
    /// PREEMPT AND ABORT: every task of the nexus is aborted, as ABORT TASK SET would (with
    /// TAS 0 in the control page: no status for them; COMMANDS CLEARED BY ANOTHER INITIATOR
    /// if there were any).
    pub abort: bool,
    /// REGISTRATIONS PREEMPTED (2Ah/05h): a PREEMPT (AND ABORT) removed its registration.
    pub preempted: bool,
    /// RESERVATIONS PREEMPTED (2Ah/03h): a CLEAR removed every registration and the
    /// reservation (SPC-4 "Clearing").
    pub cleared: bool,
    /// RESERVATIONS RELEASED (2Ah/04h): a registrants-only or all-registrants reservation was
    /// released (RELEASE, or its registrants-only holder unregistered), or a PREEMPT took the
    /// reservation with another type; this nexus kept its registration.
    pub released: bool,
}

impl Notice {
    const PREEMPTED: Notice = Notice { abort: false, preempted: true, cleared: false, released: false };
    const CLEARED: Notice = Notice { abort: false, preempted: false, cleared: true, released: false };
    const RELEASED: Notice = Notice { abort: false, preempted: false, cleared: false, released: true };

    fn merge(&mut self, o: Notice) {
        self.abort |= o.abort;
        self.preempted |= o.preempted;
        self.cleared |= o.cleared;
        self.released |= o.released;
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Held {
    /// The nexus that reserved (meaningless for the all-registrants types).
    holder: String,
    kind: u8,
}

/// The reservation state of one LUN. A nexus is the initiator name and the ISID
/// (`iqn...,i,0x<isid>`): two sessions of one initiator are two nexuses.
#[derive(Debug, Default, Clone)]
pub struct State {
    spc2: Option<String>,
    registrants: Vec<(String, u64)>,
    held: Option<Held>,
    generation: u32,
    /// Preempted nexuses whose session has not taken its notice yet, oldest first.
    notices: Vec<(String, Notice)>,
    /// Notices posted so far (the table's epoch moves when this does).
    posted: u64,
}

/// How a command reaches the medium, for the conflict table (SPC-4 5.13.1, table 53).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Allowed under every reservation (INQUIRY, REPORT LUNS, REQUEST SENSE, READ CAPACITY,
    /// PR IN/OUT, which check for themselves).
    Free,
    /// Reads: conflict under Exclusive Access only.
    Read,
    /// Everything that changes the medium or its state.
    Write,
}

fn access(cdb: &[u8]) -> Access {
    use super::op;
    match cdb[0] {
        op::INQUIRY | op::REPORT_LUNS | op::REQUEST_SENSE | op::READ_CAPACITY_10 | op::MAINTENANCE_IN => Access::Free,
        op::PERSISTENT_RESERVE_IN | op::PERSISTENT_RESERVE_OUT => Access::Free,
        op::SERVICE_ACTION_IN_16 if cdb.get(1).map(|b| u16::from(b & 0x1f)) == Some(op::SA_READ_CAPACITY_16) => Access::Free,
        op::READ_6 | op::READ_10 | op::READ_12 | op::READ_16 | op::VERIFY_10 | op::VERIFY_12 | op::VERIFY_16 => Access::Read,
        op::TEST_UNIT_READY | op::MODE_SENSE_6 | op::MODE_SENSE_10 | op::PRE_FETCH_10 | op::PRE_FETCH_16 => Access::Read,
        op::SERVICE_ACTION_IN_16 => Access::Read,
        _ => Access::Write,
    }
}

fn all_registrants(k: u8) -> bool {
    matches!(k, kind::WRITE_EXCLUSIVE_AR | kind::EXCLUSIVE_ACCESS_AR)
}

fn registrants_only(k: u8) -> bool {
    matches!(k, kind::WRITE_EXCLUSIVE_RO | kind::EXCLUSIVE_ACCESS_RO)
}

fn valid_kind(k: u8) -> bool {
    matches!(
        k,
        kind::WRITE_EXCLUSIVE
            | kind::EXCLUSIVE_ACCESS
            | kind::WRITE_EXCLUSIVE_RO
            | kind::EXCLUSIVE_ACCESS_RO
            | kind::WRITE_EXCLUSIVE_AR
            | kind::EXCLUSIVE_ACCESS_AR
    )
}

impl State {
    /// Whether a reservation (SPC-2 or persistent) is held: only then can a command conflict.
    fn is_reserved(&self) -> bool {
        self.spc2.is_some() || self.held.is_some()
    }

    fn key_of(&self, nexus: &str) -> Option<u64> {
        self.registrants.iter().find(|(n, _)| n == nexus).map(|&(_, k)| k)
    }

    fn holds(&self, nexus: &str) -> bool {
        match &self.held {
            Some(h) if all_registrants(h.kind) => self.key_of(nexus).is_some(),
            Some(h) => h.holder == nexus,
            None => false,
        }
    }

    /// True when this command from `nexus` must be answered RESERVATION CONFLICT.
    /// RESERVE(6)/RELEASE(6) and PR OUT decide in their own functions.
    pub fn conflicts(&self, nexus: &str, cdb: &[u8]) -> bool {
        let a = access(cdb);
        if a == Access::Free {
            return false;
        }
        if self.spc2.as_deref().is_some_and(|h| h != nexus) {
            return true;
        }
        let Some(h) = &self.held else { return false };
        if self.holds(nexus) {
            return false;
        }
        let registered = self.key_of(nexus).is_some();
        match h.kind {
            kind::WRITE_EXCLUSIVE => a == Access::Write,
            kind::EXCLUSIVE_ACCESS => true,
            kind::WRITE_EXCLUSIVE_RO | kind::WRITE_EXCLUSIVE_AR => a == Access::Write && !registered,
            _ => !registered,
        }
    }

    /// RESERVE(6): the whole LUN for `nexus`; another holder (SPC-2 or persistent) conflicts.
    pub fn reserve6(&mut self, nexus: &str) -> Result<(), Refusal> {
        if self.held.is_some() || self.spc2.as_deref().is_some_and(|h| h != nexus) {
            return Err(Refusal::Conflict);
        }
        self.spc2 = Some(nexus.to_string());
        Ok(())
    }

    /// RELEASE(6): frees the holder's reservation; from any other nexus GOOD with no effect
    /// (SPC-2 7.17), under a persistent reservation a conflict.
    pub fn release6(&mut self, nexus: &str) -> Result<(), Refusal> {
        if self.held.is_some() {
            return Err(Refusal::Conflict);
        }
        if self.spc2.as_deref() == Some(nexus) {
            self.spc2 = None;
        }
        Ok(())
    }

    /// The nexus logged out (or its connection ended): its SPC-2 reservation goes, its
    /// persistent registrations stay (SPC-4 5.13.1).
    pub fn nexus_gone(&mut self, nexus: &str) {
        if self.spc2.as_deref() == Some(nexus) {
            self.spc2 = None;
        }
    }

    /// A LUN reset or a target reset: the SPC-2 reservation ends, PR state stays.
    pub fn reset(&mut self) {
        self.spc2 = None;
    }

    /// PERSISTENT RESERVE IN: READ KEYS, READ RESERVATION, REPORT CAPABILITIES appended to
    /// `out`, cut to the allocation length.
    pub fn pr_in(&self, service: u8, alloc_len: u16, out: &mut Vec<u8>) -> Result<(), Sense> {
        let alloc = usize::from(alloc_len);
        let start = out.len();
        match service {
            0 => {
                out.extend_from_slice(&self.generation.to_be_bytes());
                out.extend_from_slice(&((self.registrants.len() * 8) as u32).to_be_bytes());
                for (_, k) in &self.registrants {
                    out.extend_from_slice(&k.to_be_bytes());
                }
            }
            1 => {
                out.extend_from_slice(&self.generation.to_be_bytes());
                match &self.held {
                    None => out.extend_from_slice(&0u32.to_be_bytes()),
                    Some(h) => {
                        out.extend_from_slice(&16u32.to_be_bytes());
                        let key = if all_registrants(h.kind) { 0 } else { self.key_of(&h.holder).unwrap_or(0) };
                        out.extend_from_slice(&key.to_be_bytes());
                        out.extend_from_slice(&[0, 0, 0, 0, 0, h.kind & 0x0f, 0, 0]);
                    }
                }
            }
            2 => {
                // Length 8; no CRH/SIP_C/ATP_C, PTPL_C = 0 (nothing persists); TMV with the
                // six types this target knows.
                out.extend_from_slice(&[0, 8, 0, 0x80, 0x80 | 0x40 | 0x20 | 0x08 | 0x02, 0x01, 0, 0]);
            }
            _ => return Err(Sense::invalid_field(1, Some(4))),
        }
        out.truncate(start + alloc.min(out.len() - start));
        Ok(())
    }

    /// PERSISTENT RESERVE OUT: `service` action, the CDB's SCOPE/TYPE byte and the parameter
    /// list (`scsi::execute` took exactly [`PROUT_PARAM_LEN`] bytes). A registration past
    /// `registrants_max` (iscsi.registrants_max) gets INSUFFICIENT REGISTRATION RESOURCES.
    pub fn pr_out(
        &mut self,
        nexus: &str,
        service: u8,
        scope_type: u8,
        param: &[u8; PROUT_PARAM_LEN as usize],
        registrants_max: usize,
    ) -> Result<(), Refusal> {
        let check = |s| Err(Refusal::Check(s));
        let action = service;
        if self.spc2.as_deref().is_some_and(|h| h != nexus) {
            return Err(Refusal::Conflict);
        }
        let (key, sa_key, flags) = (be64(param, 0), be64(param, 8), param[20]);
        if flags & 0x01 != 0 {
            return check(Sense::invalid_param(20, Some(0)));
        }
        if flags & 0x0c != 0 {
            return check(Sense::invalid_param(20, Some(if flags & 0x08 != 0 { 3 } else { 2 })));
        }
        let (scope, k) = (scope_type >> 4, scope_type & 0x0f);
        let mine = self.key_of(nexus);
        match action {
            sa::REGISTER | sa::REGISTER_AND_IGNORE => {
                match mine {
                    None if action == sa::REGISTER && key != 0 => return Err(Refusal::Conflict),
                    None if sa_key == 0 => return Ok(()),
                    None => {
                        if self.registrants.len() >= registrants_max {
                            return check(Sense::new(super::key::ILLEGAL_REQUEST, 0x55, 0x04));
                        }
                        self.registrants.push((nexus.to_string(), sa_key));
                    }
                    Some(m) if action == sa::REGISTER && m != key => return Err(Refusal::Conflict),
                    Some(_) if sa_key == 0 => {
                        // A registrants-only holder that unregisters releases the reservation:
                        // the others hear of it (SPC-4 "Unregistering").
                        let released = self.holds(nexus) && self.held.as_ref().is_some_and(|h| registrants_only(h.kind));
                        self.unregister(nexus);
                        if released {
                            self.post(self.others(nexus), Notice::RELEASED, registrants_max);
                        }
                    }
                    Some(_) => self.registrants.iter_mut().filter(|(n, _)| n == nexus).for_each(|r| r.1 = sa_key),
                }
                self.generation = self.generation.wrapping_add(1);
                return Ok(());
            }
            sa::RESERVE | sa::RELEASE | sa::CLEAR | sa::PREEMPT | sa::PREEMPT_AND_ABORT => {}
            _ => return check(Sense::invalid_field(1, Some(4))),
        }
        if mine != Some(key) {
            return Err(Refusal::Conflict);
        }
        let typed = matches!(action, sa::RESERVE | sa::PREEMPT | sa::PREEMPT_AND_ABORT);
        if typed && scope != 0 {
            return check(Sense::invalid_field(2, Some(7)));
        }
        if typed && !valid_kind(k) {
            return check(Sense::invalid_field(2, Some(3)));
        }
        match action {
            sa::RESERVE => match &self.held {
                None => self.held = Some(Held { holder: nexus.to_string(), kind: k }),
                Some(h) if self.holds(nexus) && h.kind == k => {}
                Some(_) => return Err(Refusal::Conflict),
            },
            sa::RELEASE => match &self.held {
                Some(h) if self.holds(nexus) => {
                    if h.kind != k || scope != 0 {
                        // INVALID RELEASE OF PERSISTENT RESERVATION
                        return check(Sense::new(super::key::ILLEGAL_REQUEST, 0x26, 0x04));
                    }
                    // The other registrants of a registrants-only or all-registrants type
                    // hear of the release (SPC-4 "Releasing"); of the other types, nobody.
                    let tell = registrants_only(h.kind) || all_registrants(h.kind);
                    self.held = None;
                    if tell {
                        self.post(self.others(nexus), Notice::RELEASED, registrants_max);
                    }
                }
                _ => {}
            },
            sa::CLEAR => {
                // Every other registrant hears RESERVATIONS PREEMPTED (SPC-4 "Clearing").
                let others = self.others(nexus);
                self.registrants.clear();
                self.held = None;
                self.generation = self.generation.wrapping_add(1);
                self.post(others, Notice::CLEARED, registrants_max);
            }
            _ => self.preempt(nexus, sa_key, k, action == sa::PREEMPT_AND_ABORT, registrants_max)?,
        }
        Ok(())
    }

    /// The notice a PREEMPT (AND ABORT) left for `nexus`, taken (at most once).
    pub fn take_notice(&mut self, nexus: &str) -> Option<Notice> {
        let i = self.notices.iter().position(|(n, _)| n == nexus)?;
        Some(self.notices.remove(i).1)
    }

    /// Every registered nexus but `nexus`.
    fn others(&self, nexus: &str) -> Vec<String> {
        self.registrants.iter().filter(|(n, _)| n != nexus).map(|(n, _)| n.clone()).collect()
    }

    /// Leaves `notice` for each nexus of `to`; one per nexus (merged with one already waiting),
    /// at most `max` (the oldest go first).
    fn post(&mut self, to: Vec<String>, notice: Notice, max: usize) {
        if to.is_empty() {
            return;
        }
        for n in to {
            if let Some(e) = self.notices.iter_mut().find(|(m, _)| *m == n) {
                e.1.merge(notice);
                continue;
            }
            if self.notices.len() >= max.max(1) {
                self.notices.remove(0);
            }
            self.notices.push((n, notice));
        }
        self.posted += 1;
    }

    fn unregister(&mut self, nexus: &str) {
        let held = self.holds(nexus);
        self.registrants.retain(|(n, _)| n != nexus);
        if let Some(h) = &self.held {
            // The holder of a one-holder type loses it; an all-registrants reservation ends
            // with its last registrant.
            if (held && !all_registrants(h.kind)) || self.registrants.is_empty() {
                self.held = None;
            }
        }
    }

    /// PREEMPT (`abort` false) and PREEMPT AND ABORT: the registrations of `sa_key` (every
    /// other one under an all-registrants reservation with `sa_key` 0) are removed, the
    /// reservation passes to `nexus` when it was theirs, and each removed nexus gets a
    /// [`Notice`] (its session reports REGISTRATIONS PREEMPTED and, on an abort, loses its
    /// tasks). The preempting nexus keeps its own tasks and registration (SPC-4 5.13.11.2.6).
    /// When the reservation passes with another type, the registrants that stay hear
    /// RESERVATIONS RELEASED (SPC-4 "Preempting a persistent reservation").
    fn preempt(&mut self, nexus: &str, sa_key: u64, k: u8, abort: bool, max: usize) -> Result<(), Refusal> {
        let mut retyped = false;
        let gone: Vec<String> = match self.held.clone() {
            Some(h) if all_registrants(h.kind) && sa_key == 0 => {
                let gone = self.remove_registrants(|n, _| n != nexus);
                self.held = Some(Held { holder: nexus.to_string(), kind: k });
                gone
            }
            Some(h) if !all_registrants(h.kind) && self.key_of(&h.holder) == Some(sa_key) => {
                let gone = self.remove_registrants(|n, key| n != nexus && key == sa_key);
                self.held = Some(Held { holder: nexus.to_string(), kind: k });
                retyped = h.kind != k;
                gone
            }
            _ => {
                if sa_key == 0 {
                    return Err(Refusal::Check(Sense::invalid_param(8, None)));
                }
                let gone = self.remove_registrants(|n, key| n != nexus && key == sa_key);
                if gone.is_empty() {
                    return Err(Refusal::Conflict);
                }
                gone
            }
        };
        self.generation = self.generation.wrapping_add(1);
        self.post(gone, Notice { abort, ..Notice::PREEMPTED }, max);
        if retyped {
            self.post(self.others(nexus), Notice::RELEASED, max);
        }
        Ok(())
    }

    /// Removes the registrations `drop` picks; returns their nexuses.
    fn remove_registrants(&mut self, drop: impl Fn(&str, u64) -> bool) -> Vec<String> {
        let mut gone = Vec::new();
        self.registrants.retain(|(n, key)| {
            let d = drop(n, *key);
            if d {
                gone.push(n.clone());
            }
            !d
        });
        gone
    }
}

/// Every LUN's reservation state, by vdisk name, shared by the sessions of all workers; one
/// entry per vdisk that has seen a reservation command (bounded by the configured vdisks).
/// The epoch counts the notices posted on any LUN, so that a session learns with one atomic
/// load per PDU whether it must look for one under the lock; `reserved` counts the LUNs that
/// hold a reservation, so that a command checks for a conflict under the lock only when one
/// exists (the lock is shared by every worker: taking it for each READ cost 2-3% at QD32).
#[derive(Debug, Default)]
pub struct Table {
    map: std::sync::Mutex<std::collections::HashMap<String, State>>,
    epoch: std::sync::atomic::AtomicU64,
    reserved: std::sync::atomic::AtomicUsize,
}

impl Table {
    /// Runs `f` on the state of `vdisk` under the lock (never held across I/O).
    pub fn with<R>(&self, vdisk: &str, f: impl FnOnce(&mut State) -> R) -> R {
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let s = match m.get_mut(vdisk) {
            Some(s) => s,
            None => m.entry(vdisk.to_string()).or_default(),
        };
        let (posted, reserved) = (s.posted, s.is_reserved());
        let r = f(s);
        if s.posted != posted {
            // Under the lock: a session that sees the new epoch and then takes the lock finds
            // the notice.
            self.epoch.fetch_add(1, std::sync::atomic::Ordering::Release);
        }
        match (reserved, s.is_reserved()) {
            (false, true) => _ = self.reserved.fetch_add(1, std::sync::atomic::Ordering::Release),
            (true, false) => _ = self.reserved.fetch_sub(1, std::sync::atomic::Ordering::Release),
            _ => {}
        }
        r
    }

    /// Whether any LUN holds a reservation (one atomic load): when none does, no command
    /// conflicts and [`State::conflicts`] need not be asked. A reservation made on another
    /// worker at the same moment as a command is ordered after it, as two commands of two
    /// sessions are.
    pub fn any_reserved(&self) -> bool {
        self.reserved.load(std::sync::atomic::Ordering::Acquire) > 0
    }

    /// Moves whenever a notice is posted on any LUN (see [`State::take_notice`]).
    pub fn epoch(&self) -> u64 {
        self.epoch.load(std::sync::atomic::Ordering::Acquire)
    }
}
