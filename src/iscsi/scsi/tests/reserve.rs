//! Reservations: SPC-2 RESERVE/RELEASE(6), persistent reservations and the conflict table.

use super::super::reserve::{kind, Refusal, State};

const REGISTRANTS_MAX: usize = 64;
use super::super::{op, Action, Sense};
use super::*;

const A: &str = "iqn.a,i,0x000000000001";
const B: &str = "iqn.b,i,0x000000000002";
const C: &str = "iqn.c,i,0x000000000003";

const READ: [u8; 10] = [op::READ_10, 0, 0, 0, 0, 0, 0, 0, 1, 0];
const WRITE: [u8; 10] = [op::WRITE_10, 0, 0, 0, 0, 0, 0, 0, 1, 0];
const INQ: [u8; 6] = [op::INQUIRY, 0, 0, 0, 36, 0];

fn param(key: u64, sa_key: u64, flags: u8) -> [u8; 24] {
    let mut p = [0u8; 24];
    p[..8].copy_from_slice(&key.to_be_bytes());
    p[8..16].copy_from_slice(&sa_key.to_be_bytes());
    p[20] = flags;
    p
}

fn out(s: &mut State, nexus: &str, sa: u8, k: u8, key: u64, sa_key: u64) -> Result<(), Refusal> {
    s.pr_out(nexus, sa, k, &param(key, sa_key, 0), REGISTRANTS_MAX)
}

fn keys(s: &State) -> Vec<u64> {
    let mut o = Vec::new();
    s.pr_in(0, 1024, &mut o).unwrap();
    let n = be32(&o, 4) as usize / 8;
    (0..n).map(|i| be64(&o, 8 + 8 * i)).collect()
}

fn reservation(s: &State) -> Option<(u64, u8)> {
    let mut o = Vec::new();
    s.pr_in(1, 1024, &mut o).unwrap();
    (be32(&o, 4) == 16).then(|| (be64(&o, 8), o[21]))
}

#[test]
fn spc2_reserve_release() {
    let mut s = State::default();
    s.reserve6(A).unwrap();
    s.reserve6(A).unwrap();
    assert_eq!(s.reserve6(B), Err(Refusal::Conflict));
    assert!(s.conflicts(B, &READ) && s.conflicts(B, &WRITE));
    assert!(!s.conflicts(B, &INQ), "INQUIRY passes every reservation");
    assert!(!s.conflicts(A, &WRITE));
    // RELEASE from another nexus: GOOD, nothing released.
    s.release6(B).unwrap();
    assert!(s.conflicts(B, &READ));
    s.release6(A).unwrap();
    assert!(!s.conflicts(B, &WRITE));
    s.reserve6(B).unwrap();
    s.nexus_gone(B);
    s.reserve6(A).unwrap();
    s.reset();
    s.reserve6(B).unwrap();
}

#[test]
fn register_rules() {
    let mut s = State::default();
    // Unregistered with a non-zero key: conflict; with sa key 0: nothing happens.
    assert_eq!(out(&mut s, A, 0, 0, 5, 6), Err(Refusal::Conflict));
    out(&mut s, A, 0, 0, 0, 0).unwrap();
    assert!(keys(&s).is_empty());
    out(&mut s, A, 0, 0, 0, 0x11).unwrap();
    out(&mut s, B, 6, 0, 99, 0x22).unwrap();
    assert_eq!(keys(&s), [0x11, 0x22]);
    // Wrong key: conflict; REGISTER AND IGNORE EXISTING KEY changes it anyway.
    assert_eq!(out(&mut s, A, 0, 0, 0x12, 0x13), Err(Refusal::Conflict));
    out(&mut s, A, 6, 0, 0, 0x13).unwrap();
    out(&mut s, A, 0, 0, 0x13, 0).unwrap();
    assert_eq!(keys(&s), [0x22]);
    let mut o = Vec::new();
    s.pr_in(0, 1024, &mut o).unwrap();
    assert_eq!(be32(&o, 0), 4, "generation counts the registration changes");
    // APTPL is refused (nothing persists), SPEC_I_PT and ALL_TG_PT too.
    for f in [0x01, 0x04, 0x08] {
        assert!(matches!(s.pr_out(C, 0, 0, &param(0, 7, f), REGISTRANTS_MAX), Err(Refusal::Check(_))), "{f:#x}");
    }
    assert_eq!(s.pr_out(C, 0, 0, &param(0, 7, 1), REGISTRANTS_MAX), Err(Refusal::Check(Sense::invalid_param(20, Some(0)))));
}

#[test]
fn registrants_are_bounded() {
    let mut s = State::default();
    for i in 0..REGISTRANTS_MAX {
        out(&mut s, &format!("n{i}"), 0, 0, 0, 1 + i as u64).unwrap();
    }
    match out(&mut s, "one-more", 0, 0, 0, 1000) {
        Err(Refusal::Check(c)) => assert_eq!(c, Sense::new(key::ILLEGAL_REQUEST, 0x55, 0x04)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn write_exclusive_and_exclusive_access() {
    for (k, reads_conflict) in [(kind::WRITE_EXCLUSIVE, false), (kind::EXCLUSIVE_ACCESS, true)] {
        let mut s = State::default();
        out(&mut s, A, 0, 0, 0, 1).unwrap();
        out(&mut s, B, 0, 0, 0, 2).unwrap();
        assert_eq!(out(&mut s, C, 1, k, 3, 0), Err(Refusal::Conflict), "unregistered RESERVE");
        out(&mut s, A, 1, k, 1, 0).unwrap();
        out(&mut s, A, 1, k, 1, 0).unwrap();
        assert_eq!(reservation(&s), Some((1, k)));
        assert_eq!(out(&mut s, B, 1, k, 2, 0), Err(Refusal::Conflict));
        assert!(!s.conflicts(A, &WRITE));
        for n in [B, C] {
            assert!(s.conflicts(n, &WRITE));
            assert_eq!(s.conflicts(n, &READ), reads_conflict);
            assert!(!s.conflicts(n, &INQ));
        }
        assert_eq!(s.reserve6(B), Err(Refusal::Conflict), "RESERVE(6) under a persistent reservation");
        // RELEASE by a non-holder does nothing; by the holder with another type is refused.
        out(&mut s, B, 2, k, 2, 0).unwrap();
        assert!(reservation(&s).is_some());
        assert_eq!(out(&mut s, A, 2, 6, 1, 0), Err(Refusal::Check(Sense::new(key::ILLEGAL_REQUEST, 0x26, 0x04))));
        out(&mut s, A, 2, k, 1, 0).unwrap();
        assert_eq!(reservation(&s), None);
        assert!(!s.conflicts(C, &WRITE));
    }
}

#[test]
fn registrants_only_and_all_registrants() {
    for k in [kind::WRITE_EXCLUSIVE_RO, kind::EXCLUSIVE_ACCESS_RO, kind::WRITE_EXCLUSIVE_AR, kind::EXCLUSIVE_ACCESS_AR] {
        let mut s = State::default();
        out(&mut s, A, 0, 0, 0, 1).unwrap();
        out(&mut s, B, 0, 0, 0, 2).unwrap();
        out(&mut s, A, 1, k, 1, 0).unwrap();
        assert!(!s.conflicts(B, &WRITE) && !s.conflicts(B, &READ), "a registrant has access ({k})");
        assert!(s.conflicts(C, &WRITE));
        let exclusive = matches!(k, kind::EXCLUSIVE_ACCESS_RO | kind::EXCLUSIVE_ACCESS_AR);
        assert_eq!(s.conflicts(C, &READ), exclusive);
        let ar = matches!(k, kind::WRITE_EXCLUSIVE_AR | kind::EXCLUSIVE_ACCESS_AR);
        assert_eq!(reservation(&s).unwrap().0, if ar { 0 } else { 1 }, "key of an all-registrants reservation is 0");
        // The holder unregisters: a registrants-only reservation goes, all-registrants stays.
        out(&mut s, A, 0, 0, 1, 0).unwrap();
        assert_eq!(reservation(&s).is_some(), ar);
        out(&mut s, B, 0, 0, 2, 0).unwrap();
        assert_eq!(reservation(&s), None, "no registrant left");
    }
}

#[test]
fn clear_and_preempt() {
    let mut s = State::default();
    out(&mut s, A, 0, 0, 0, 1).unwrap();
    out(&mut s, B, 0, 0, 0, 2).unwrap();
    out(&mut s, C, 0, 0, 0, 3).unwrap();
    out(&mut s, A, 1, kind::WRITE_EXCLUSIVE, 1, 0).unwrap();
    // Preempt the holder: its registration goes, the reservation moves with the new type.
    out(&mut s, B, 4, kind::EXCLUSIVE_ACCESS, 2, 1).unwrap();
    assert_eq!(keys(&s), [2, 3]);
    assert_eq!(reservation(&s), Some((2, kind::EXCLUSIVE_ACCESS)));
    // Preempting a key nobody holds: conflict; key 0 without an all-registrants type: refused.
    assert_eq!(out(&mut s, C, 4, kind::EXCLUSIVE_ACCESS, 3, 9), Err(Refusal::Conflict));
    assert!(matches!(out(&mut s, C, 4, kind::EXCLUSIVE_ACCESS, 3, 0), Err(Refusal::Check(_))));
    // Preempting a non-holder removes its registration only.
    out(&mut s, B, 5, kind::EXCLUSIVE_ACCESS, 2, 3).unwrap();
    assert_eq!(keys(&s), [2]);
    assert_eq!(out(&mut s, C, 3, 0, 3, 0), Err(Refusal::Conflict), "CLEAR from the preempted");
    out(&mut s, B, 3, 0, 2, 0).unwrap();
    assert_eq!((keys(&s), reservation(&s)), (vec![], None));
    assert_eq!(out(&mut s, A, 1, 9, 1, 0), Err(Refusal::Conflict), "unregistered after CLEAR");
}

#[test]
fn preempt_all_registrants_with_key_zero() {
    let mut s = State::default();
    out(&mut s, A, 0, 0, 0, 1).unwrap();
    out(&mut s, B, 0, 0, 0, 2).unwrap();
    out(&mut s, A, 1, kind::EXCLUSIVE_ACCESS_AR, 1, 0).unwrap();
    out(&mut s, B, 4, kind::WRITE_EXCLUSIVE, 2, 0).unwrap();
    assert_eq!((keys(&s), reservation(&s)), (vec![2], Some((2, kind::WRITE_EXCLUSIVE))));
}

#[test]
fn bad_type_scope_and_report_capabilities() {
    let mut s = State::default();
    out(&mut s, A, 0, 0, 0, 1).unwrap();
    assert_eq!(out(&mut s, A, 1, 2, 1, 0), Err(Refusal::Check(Sense::invalid_field(2, Some(3)))));
    assert_eq!(out(&mut s, A, 1, 0x11, 1, 0), Err(Refusal::Check(Sense::invalid_field(2, Some(7)))));
    let mut o = Vec::new();
    s.pr_in(2, 8, &mut o).unwrap();
    assert_eq!(be16(&o, 0), 8);
    assert_eq!(o[2] & 0x01, 0, "PTPL_C = 0: nothing persists");
    assert_eq!(o[3] & 0x80, 0x80, "TMV");
    assert_eq!((o[4], o[5]), (0xEA, 0x01));
    o.clear();
    s.pr_in(0, 4, &mut o).unwrap();
    assert_eq!(o.len(), 4, "cut at the allocation length");
    assert!(s.pr_in(3, 8, &mut o).is_err());
}

#[test]
fn execute_routes_reservation_commands() {
    let l = lun();
    let mut o = Vec::new();
    assert_eq!(execute(&[op::RESERVE_6, 0, 0, 0, 0, 0], 0, &l, &mut o), Action::Reserve6);
    assert_eq!(execute(&[op::RELEASE_6, 0, 0, 0, 0, 0], 0, &l, &mut o), Action::Release6);
    assert!(matches!(execute(&[op::RESERVE_6, 1, 0, 0, 0, 0], 0, &l, &mut o), Action::Check(_)), "3rd party");
    let pr_in = [op::PERSISTENT_RESERVE_IN, 1, 0, 0, 0, 0, 0, 0, 40, 0];
    assert_eq!(execute(&pr_in, 0, &l, &mut o), Action::PrIn { service: 1, alloc_len: 40 });
    let mut pr_out = [op::PERSISTENT_RESERVE_OUT, 1, 0x03, 0, 0, 0, 0, 0, 24, 0];
    assert_eq!(execute(&pr_out, 0, &l, &mut o), Action::DataOut { len: 24 });
    let p = param(1, 0, 0);
    assert_eq!(execute_data(&pr_out, &p, &l, &mut o), Action::PrOut { service: 1, scope_type: 3, param: p });
    assert_eq!(execute_data(&pr_out, &p[..20], &l, &mut o), Action::Check(Sense::param_list_length()));
    pr_out[8] = 25;
    assert_eq!(execute(&pr_out, 0, &l, &mut o), Action::Check(Sense::param_list_length()));
}

#[test]
fn a_preempt_leaves_one_notice_per_removed_nexus_taken_once_and_bounded() {
    use super::super::reserve::{Notice, Table};
    let t = Table::default();
    let e0 = t.epoch();
    t.with("disk", |s| {
        for (n, k) in [(A, 1), (B, 2), (C, 2)] {
            out(s, n, 0, 0, 0, k).unwrap();
        }
        // A preempts key 2 (B and C) and aborts their tasks.
        out(s, A, 5, kind::WRITE_EXCLUSIVE, 1, 2).unwrap();
    });
    assert_ne!(t.epoch(), e0, "the epoch moves with a notice");
    let e1 = t.epoch();
    t.with("disk", |s| {
        assert_eq!(s.take_notice(A), None, "the preempting nexus gets none");
        assert_eq!(s.take_notice(B), Some(Notice { abort: true, preempted: true, ..Notice::default() }));
        assert_eq!(s.take_notice(B), None, "taken once");
        assert_eq!(keys(s), [1]);
    });
    assert_eq!(t.epoch(), e1, "taking a notice posts none");
    // A plain PREEMPT: no abort; a later abort for the same nexus is kept with it.
    t.with("disk", |s| {
        out(s, B, 0, 0, 0, 2).unwrap();
        out(s, A, 4, kind::WRITE_EXCLUSIVE, 1, 2).unwrap();
        out(s, B, 0, 0, 0, 2).unwrap();
        out(s, A, 5, kind::WRITE_EXCLUSIVE, 1, 2).unwrap();
        let aborted = Notice { abort: true, preempted: true, ..Notice::default() };
        assert_eq!(s.take_notice(B), Some(aborted));
        assert_eq!(s.take_notice(C), Some(aborted), "C's from the first preempt");
    });
    // At most registrants_max notices wait: the oldest go.
    let mut s = State::default();
    let names: Vec<String> = (0..5).map(|i| format!("iqn.n{i},i,0x0000000000{i:02}")).collect();
    for (i, n) in names.iter().enumerate() {
        s.pr_out(n, 0, 0, &param(0, 10 + i as u64, 0), 3).unwrap();
        if i > 0 {
            s.pr_out(&names[0], 4, kind::WRITE_EXCLUSIVE, &param(10, 10 + i as u64, 0), 3).unwrap();
        }
    }
    assert_eq!(s.take_notice(&names[1]), None, "evicted");
    assert!((2..5).all(|i| s.take_notice(&names[i]) == Some(Notice { preempted: true, ..Notice::default() })));
}

/// The notices each registrant holds after `f` ran on a LUN where A, B and C are registered
/// (keys 1, 2, 3), in the order A, B, C (each taken, so empty afterwards).
fn notices_after(f: impl FnOnce(&mut State)) -> Vec<Option<super::super::reserve::Notice>> {
    let mut s = State::default();
    for (n, k) in [(A, 1), (B, 2), (C, 3)] {
        out(&mut s, n, 0, 0, 0, k).unwrap();
    }
    f(&mut s);
    [A, B, C].iter().map(|n| s.take_notice(n)).collect()
}

#[test]
fn clear_release_unregister_and_a_retyping_preempt_tell_the_other_registrants() {
    use super::super::reserve::{Notice, Table};
    let released = Some(Notice { released: true, ..Notice::default() });
    let cleared = Some(Notice { cleared: true, ..Notice::default() });
    // CLEAR: every other registrant, RESERVATIONS PREEMPTED (with or without a reservation).
    assert_eq!(notices_after(|s| out(s, A, 3, 0, 1, 0).unwrap()), [None, cleared, cleared]);
    let t = Table::default();
    let e0 = t.epoch();
    t.with("disk", |s| out(s, A, 0, 0, 0, 1).unwrap());
    t.with("disk", |s| out(s, A, 3, 0, 1, 0).unwrap());
    assert_eq!(t.epoch(), e0, "a CLEAR with nobody else registered posts nothing");
    // RELEASE: RESERVATIONS RELEASED to the others for the registrants-only and all-registrants
    // types; nothing for Write Exclusive and Exclusive Access.
    for k in [kind::WRITE_EXCLUSIVE_RO, kind::EXCLUSIVE_ACCESS_RO, kind::WRITE_EXCLUSIVE_AR, kind::EXCLUSIVE_ACCESS_AR] {
        let n = notices_after(|s| {
            out(s, A, 1, k, 1, 0).unwrap();
            out(s, A, 2, k, 1, 0).unwrap();
            assert_eq!(reservation(s), None);
        });
        assert_eq!(n, [None, released, released], "type {k}");
    }
    for k in [kind::WRITE_EXCLUSIVE, kind::EXCLUSIVE_ACCESS] {
        assert_eq!(notices_after(|s| [1, 2].iter().for_each(|&sa| out(s, A, sa, k, 1, 0).unwrap())), [None; 3], "type {k}");
    }
    // A RELEASE that releases nothing (B is not the holder) tells nobody.
    let n = notices_after(|s| {
        out(s, A, 1, kind::WRITE_EXCLUSIVE_RO, 1, 0).unwrap();
        out(s, B, 2, kind::WRITE_EXCLUSIVE_RO, 2, 0).unwrap();
        assert!(reservation(s).is_some());
    });
    assert_eq!(n, [None; 3]);
    // A registrants-only holder that unregisters releases the reservation: the others hear it.
    let n = notices_after(|s| {
        out(s, B, 1, kind::EXCLUSIVE_ACCESS_RO, 2, 0).unwrap();
        out(s, B, 0, 0, 2, 0).unwrap();
        assert_eq!((reservation(s), keys(s)), (None, vec![1, 3]));
    });
    assert_eq!(n, [released, None, released]);
    // A Write Exclusive holder that unregisters: released, nobody told.
    assert_eq!(notices_after(|s| [(1, 1), (0, 0)].iter().for_each(|&(sa, k)| out(s, B, sa, k, 2, 0).unwrap())), [None; 3]);
    // PREEMPT of the holder with another type: the holder is preempted, the third registrant
    // hears RESERVATIONS RELEASED; with the same type it hears nothing.
    let preempted = Some(Notice { preempted: true, ..Notice::default() });
    let n = notices_after(|s| {
        out(s, B, 1, kind::WRITE_EXCLUSIVE, 2, 0).unwrap();
        out(s, A, 4, kind::EXCLUSIVE_ACCESS, 1, 2).unwrap();
        assert_eq!(reservation(s), Some((1, kind::EXCLUSIVE_ACCESS)));
    });
    assert_eq!(n, [None, preempted, released]);
    let n = notices_after(|s| {
        out(s, B, 1, kind::WRITE_EXCLUSIVE, 2, 0).unwrap();
        out(s, A, 4, kind::WRITE_EXCLUSIVE, 1, 2).unwrap();
    });
    assert_eq!(n, [None, preempted, None]);
    // Notices for one nexus merge: preempted by one PREEMPT, then a CLEAR.
    let n = notices_after(|s| {
        out(s, A, 4, kind::WRITE_EXCLUSIVE, 1, 2).unwrap();
        out(s, B, 0, 0, 0, 2).unwrap();
        out(s, A, 3, 0, 1, 0).unwrap();
    });
    assert_eq!(n, [None, Some(Notice { preempted: true, cleared: true, ..Notice::default() }), cleared]);
}

#[test]
fn the_table_counts_the_luns_that_hold_a_reservation() {
    use super::super::reserve::Table;
    let t = Table::default();
    assert!(!t.any_reserved());
    // Registrations alone reserve nothing: no command can conflict.
    t.with("a", |s| out(s, A, 0, 0, 0, 1).unwrap());
    assert!(!t.any_reserved());
    t.with("a", |s| out(s, A, 1, kind::WRITE_EXCLUSIVE, 1, 0).unwrap());
    t.with("b", |s| s.reserve6(B).unwrap());
    assert!(t.any_reserved());
    assert!(t.with("b", |s| s.conflicts(A, &WRITE)), "B's SPC-2 reservation");
    // B's session ends: its SPC-2 reservation goes; A's persistent one stays.
    t.with("b", |s| s.nexus_gone(B));
    assert!(t.any_reserved());
    t.with("a", |s| out(s, A, 2, kind::WRITE_EXCLUSIVE, 1, 0).unwrap());
    assert!(!t.any_reserved(), "released");
    t.with("a", |s| out(s, A, 1, kind::EXCLUSIVE_ACCESS, 1, 0).unwrap());
    t.with("a", |s| out(s, A, 1, kind::EXCLUSIVE_ACCESS, 1, 0).unwrap());
    assert!(t.any_reserved(), "a repeated RESERVE counts once");
    t.with("a", |s| out(s, A, 3, 0, 1, 0).unwrap());
    assert!(!t.any_reserved(), "cleared");
    t.with("b", |s| s.reserve6(B).unwrap());
    t.with("b", |s| s.reset());
    assert!(!t.any_reserved(), "a LUN reset ends an SPC-2 reservation");
}
