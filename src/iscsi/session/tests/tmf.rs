//! Task management through whole sessions: PREEMPT AND ABORT reaching the tasks of another
//! initiator's session (which may live on another worker: only the shared reservation table
//! joins them), RELEASE and CLEAR reaching it as unit attentions, and ABORT TASK of a command numbered but not yet received (RFC 7143 11.5.1 b).

use super::reserve::prout;
use super::*;

const OTHER: &str = "iqn.1994-05.com.redhat:test-b";
/// PERSISTENT RESERVE OUT service actions and types used here.
const REGISTER: u8 = 0;
const RESERVE: u8 = 1;
const RELEASE: u8 = 2;
const CLEAR: u8 = 3;
const PREEMPT: u8 = 4;
const PREEMPT_AND_ABORT: u8 = 5;
const WRITE_EXCLUSIVE: u8 = 1;
const WRITE_EXCLUSIVE_RO: u8 = 5;
const WRITE_EXCLUSIVE_AR: u8 = 7;

/// A session kept open between sends, as a worker keeps it.
struct Live {
    s: Session<TestEnv>,
    rx: Vec<u8>,
    out: Vec<u8>,
    seen: usize,
}

impl Live {
    fn open(e: &mut TestEnv, login: Vec<u8>) -> Live {
        let mut l = Live { s: Session::new(e, peer(), Instant::now()), rx: Vec::new(), out: Vec::new(), seen: 0 };
        let p = l.send(e, &login);
        assert!(p.len() == 2 && p.iter().all(|r| r.opcode() == op::LOGIN_RESPONSE && r.h[36] == 0), "{p:?}");
        l
    }

    /// Sends `bytes`; returns the PDUs they brought.
    fn send(&mut self, e: &mut TestEnv, bytes: &[u8]) -> Vec<Pdu> {
        self.rx.extend_from_slice(bytes);
        pump(&mut self.s, e, &mut self.rx, &mut self.out, Instant::now());
        assert!(!self.s.is_done(), "the session goes on");
        let p = pdus(&self.out[self.seen..]);
        self.seen = self.out.len();
        p
    }

    /// Ends the connection; returns every PDU the session sent, the login's included.
    fn close(mut self, e: &mut TestEnv) -> Vec<Pdu> {
        self.s.on_eof(e, Instant::now());
        pump(&mut self.s, e, &mut self.rx, &mut self.out, Instant::now());
        self.s.on_closed(e, false, Instant::now());
        pdus(&self.out)
    }
}

fn tmf_req(itt: u32, function: u8, ref_itt: u32, cmdsn: u32, ref_cmdsn: u32) -> Vec<u8> {
    pdu(op::TASK_MGMT | FLAG_IMMEDIATE, 0x80 | function, &[(16, itt), (20, ref_itt), (24, cmdsn), (32, ref_cmdsn)], &[])
}

fn tur(itt: u32, cmdsn: u32) -> Vec<u8> {
    cmd(itt, cmdsn, FLAG_FINAL, 0, &[0; 6], &[])
}

fn tmf_response(p: &[Pdu], itt: u32) -> u8 {
    let t = p.iter().find(|r| r.opcode() == op::TASK_MGMT_RESPONSE && r.u32(16) == itt).expect("a TMF response");
    t.h[2]
}

/// (sense key, ASC, ASCQ) of command `itt`'s CHECK CONDITION.
fn sense_of(p: &[Pdu], itt: u32) -> (u8, u8, u8) {
    let r = p.iter().find(|r| r.opcode() == op::SCSI_RESPONSE && r.u32(16) == itt).expect("a SCSI Response");
    assert_eq!(r.h[3], wire::status::CHECK_CONDITION);
    (r.data[2 + 2] & 0x0F, r.data[2 + 12], r.data[2 + 13])
}

/// The R2T for `itt` among `p`: (TTT, offset, length).
fn r2t_of(p: &[Pdu], itt: u32) -> (u32, u32, u32) {
    let r = p.iter().find(|r| r.opcode() == op::R2T && r.u32(16) == itt).expect("an R2T");
    (r.u32(20), r.u32(40), r.u32(44))
}

#[test]
fn preempt_and_abort_aborts_the_preempted_sessions_tasks_and_leaves_it_unit_attentions() {
    let f = fixture("tmf-preempt-abort", "", "");
    let mut e = env(&f);
    // A registers key 0xA and holds Write Exclusive, Registrants Only: B, registered too, may
    // write beside it.
    let mut a = Live::open(&mut e, login());
    let p = a.send(&mut e, &[prout(1, 2, REGISTER, 0, 0, 0xA), prout(2, 3, RESERVE, WRITE_EXCLUSIVE_RO, 0xA, 0)].concat());
    assert_eq!([result(&p, 1).1, result(&p, 2).1], [Some(0); 2]);
    let mut b = Live::open(&mut e, login_as(OTHER, TARGET, OPS));
    let p = b.send(&mut e, &prout(1, 2, REGISTER, 0, 0, 0xB));
    assert_eq!(result(&p, 1).1, Some(0));
    // Both start a WRITE that waits for solicited data.
    let p = a.send(&mut e, &write(10, 4, 8, &[0xAA; 4096], 0, true));
    let (a_ttt, off, len) = r2t_of(&p, 10);
    assert_eq!((off, len), (0, 4096));
    let p = b.send(&mut e, &write(20, 3, 16, &[0xBB; 4096], 0, true));
    let (b_ttt, _, _) = r2t_of(&p, 20);
    // B preempts A's key and aborts A's tasks, taking Write Exclusive.
    let p = b.send(&mut e, &prout(21, 4, PREEMPT_AND_ABORT, WRITE_EXCLUSIVE, 0xB, 0xA));
    assert_eq!(result(&p, 21).1, Some(0), "PREEMPT AND ABORT: GOOD");
    // The preempting initiator's own task is untouched: its data comes, GOOD.
    let p = b.send(&mut e, &data_out(20, b_ttt, 0, &[0xBB; 4096], true));
    assert_eq!(result(&p, 20).1, Some(0));
    // A's late Data-Out is dropped: no Reject, no status for the aborted WRITE.
    let p = a.send(&mut e, &data_out(10, a_ttt, 0, &[0xAA; 4096], true));
    assert!(p.is_empty(), "nothing for an aborted task's Data-Out: {p:?}");
    // A's next commands see the unit attentions (commands cleared, then its registration
    // preempted), then the conflict under B's Write Exclusive.
    let p = a.send(&mut e, &[tur(11, 5), tur(12, 6), tur(13, 7), write(14, 8, 8, &[0xAA; 512], 512, true), read(15, 9, 8, 8)].concat());
    assert_eq!(sense_of(&p, 11), (6, 0x2F, 0x00), "COMMANDS CLEARED BY ANOTHER INITIATOR");
    assert_eq!(sense_of(&p, 12), (6, 0x2A, 0x05), "REGISTRATIONS PREEMPTED");
    assert_eq!(result(&p, 13).1, Some(0));
    assert_eq!(result(&p, 14).1, Some(wire::status::RESERVATION_CONFLICT));
    assert_eq!(result(&p, 15), (f.content[8 * 512..16 * 512].to_vec(), Some(0)), "the aborted WRITE never reached A's cache");
    // A's session is open still: the cache space its WRITE reserved went back with the
    // abort; what is held is B's 4 KiB.
    assert_eq!(e.registry.total.load(std::sync::atomic::Ordering::Relaxed), 4096, "only B's written blocks are held");
    // B's session saw no unit attention of its own.
    let p = b.send(&mut e, &tur(22, 5));
    assert_eq!(result(&p, 22).1, Some(0));
    let all_a = a.close(&mut e);
    let for_10: Vec<u8> = all_a.iter().filter(|r| r.u32(16) == 10).map(|r| r.opcode()).collect();
    assert_eq!(for_10, [op::R2T], "the aborted WRITE got its R2T (before the abort) and nothing after");
    assert!(all_a.iter().all(|r| r.opcode() != op::REJECT));
    b.close(&mut e);
}

#[test]
fn preempt_without_abort_keeps_the_tasks_and_reports_the_lost_registration() {
    let f = fixture("tmf-preempt", "", "");
    let mut e = env(&f);
    let mut a = Live::open(&mut e, login());
    let p = a.send(&mut e, &prout(1, 2, REGISTER, 0, 0, 0xA));
    assert_eq!(result(&p, 1).1, Some(0));
    let p = a.send(&mut e, &write(2, 3, 8, &[0xAA; 4096], 0, true));
    let (ttt, _, _) = r2t_of(&p, 2);
    let mut b = Live::open(&mut e, login_as(OTHER, TARGET, OPS));
    let p = b.send(&mut e, &[prout(1, 2, REGISTER, 0, 0, 0xB), prout(2, 3, PREEMPT, WRITE_EXCLUSIVE, 0xB, 0xA)].concat());
    assert_eq!([result(&p, 1).1, result(&p, 2).1], [Some(0); 2]);
    // A's WRITE was started before the preempt: PREEMPT aborts nothing, it completes.
    let p = a.send(&mut e, &data_out(2, ttt, 0, &[0xAA; 4096], true));
    assert_eq!(result(&p, 2).1, Some(0));
    let p = a.send(&mut e, &[tur(3, 4), tur(4, 5)].concat());
    assert_eq!(sense_of(&p, 3), (6, 0x2A, 0x05), "REGISTRATIONS PREEMPTED, no COMMANDS CLEARED");
    assert_eq!(result(&p, 4).1, Some(0));
    a.close(&mut e);
    b.close(&mut e);
}

#[test]
fn a_release_and_a_clear_reach_the_other_initiators_session_as_unit_attentions() {
    let f = fixture("tmf-release-clear", "", "");
    let mut e = env(&f);
    // A holds Write Exclusive, All Registrants; B is registered under it.
    let mut a = Live::open(&mut e, login());
    let p = a.send(&mut e, &[prout(1, 2, REGISTER, 0, 0, 0xA), prout(2, 3, RESERVE, WRITE_EXCLUSIVE_AR, 0xA, 0)].concat());
    assert_eq!([result(&p, 1).1, result(&p, 2).1], [Some(0); 2]);
    let mut b = Live::open(&mut e, login_as(OTHER, TARGET, OPS));
    let p = b.send(&mut e, &[prout(1, 2, REGISTER, 0, 0, 0xB), tur(2, 3)].concat());
    assert_eq!([result(&p, 1).1, result(&p, 2).1], [Some(0); 2]);
    // A releases: B's next command reports RESERVATIONS RELEASED, the one after is GOOD.
    let p = a.send(&mut e, &prout(3, 4, RELEASE, WRITE_EXCLUSIVE_AR, 0xA, 0));
    assert_eq!(result(&p, 3).1, Some(0));
    let p = b.send(&mut e, &[tur(3, 4), tur(4, 5)].concat());
    assert_eq!(sense_of(&p, 3), (6, 0x2A, 0x04), "RESERVATIONS RELEASED");
    assert_eq!(result(&p, 4).1, Some(0));
    // B clears: A's next command reports RESERVATIONS PREEMPTED; B itself hears nothing.
    let p = b.send(&mut e, &[prout(5, 6, CLEAR, 0, 0xB, 0), tur(6, 7)].concat());
    assert_eq!([result(&p, 5).1, result(&p, 6).1], [Some(0); 2]);
    let p = a.send(&mut e, &[tur(4, 5), tur(5, 6)].concat());
    assert_eq!(sense_of(&p, 4), (6, 0x2A, 0x03), "RESERVATIONS PREEMPTED");
    assert_eq!(result(&p, 5).1, Some(0));
    a.close(&mut e);
    b.close(&mut e);
}

#[test]
fn abort_task_of_a_command_not_yet_received_completes_and_the_command_is_dropped() {
    let f = fixture("tmf-unseen", "", "");
    let mut e = env(&f);
    let mut s = login();
    // The initiator numbered WRITE 30 as CmdSN 2 but sends the ABORT TASK (CmdSN 3) first.
    s.extend(tmf_req(31, wire::tmf::ABORT_TASK, 30, 3, 2));
    // The WRITE comes after all, with immediate data and an unsolicited Data-Out.
    s.extend(write(30, 2, 0, &[0x77; 1024], 512, false));
    s.extend(data_out(30, TAG_NONE, 512, &[0x77; 512], true));
    // The window moved on past CmdSN 2: CmdSN 3 is the next.
    s.extend(read(32, 3, 0, 2));
    let (out, ended) = drive(&mut e, &s, &[], Instant::now());
    assert!(!ended);
    let p = after_login(&out);
    assert_eq!(tmf_response(&p, 31), wire::tmf::COMPLETE, "RFC 7143 11.5.1 b: Function complete");
    assert!(p.iter().all(|r| r.u32(16) != 30), "the aborted command is not executed, not answered");
    assert!(p.iter().all(|r| r.opcode() != op::REJECT));
    assert_eq!(result(&p, 32), (f.content[..1024].to_vec(), Some(0)), "the WRITE never ran");
    let t = p.iter().find(|r| r.opcode() == op::TASK_MGMT_RESPONSE).unwrap();
    assert_eq!(t.u32(28), 3, "ExpCmdSN counts CmdSN 2 as received");
    assert_eq!(e.counters.get(Counter::IscsiWindowDrops), 0);
}

#[test]
fn abort_task_of_a_cmdsn_ahead_of_expcmdsn_is_stepped_over_when_the_window_gets_there() {
    let f = fixture("tmf-ahead", "", "");
    let mut e = env(&f);
    let mut s = login();
    // CmdSN 2 (a READ) and 3 (a WRITE) are numbered; the abort of 3 overtakes both.
    s.extend(tmf_req(40, wire::tmf::ABORT_TASK, 41, 4, 3));
    s.extend(read(42, 2, 0, 1));
    s.extend(write(41, 3, 0, &[0x66; 512], 512, true));
    s.extend(read(43, 4, 0, 1));
    let (out, _) = drive(&mut e, &s, &[], Instant::now());
    let p = after_login(&out);
    assert_eq!(tmf_response(&p, 40), wire::tmf::COMPLETE);
    assert_eq!(result(&p, 42), (f.content[..512].to_vec(), Some(0)));
    assert!(p.iter().all(|r| r.u32(16) != 41), "CmdSN 3 dropped");
    assert_eq!(result(&p, 43), (f.content[..512].to_vec(), Some(0)), "CmdSN 4 admitted after the step over 3");
    assert_eq!(e.counters.get(Counter::IscsiWindowDrops), 0);
}

#[test]
fn abort_task_outside_the_window_or_not_below_its_own_cmdsn_answers_task_does_not_exist() {
    let f = fixture("tmf-notask", "", "");
    let mut e = env(&f);
    let mut s = login();
    // Window [2, 2 + 127]: 500 lies past MaxCmdSN (c); 1 below ExpCmdSN (c); 2 is inside the
    // window but not below the request's CmdSN 2 (the case b does not cover).
    s.extend(tmf_req(50, wire::tmf::ABORT_TASK, 60, 2, 500));
    s.extend(tmf_req(51, wire::tmf::ABORT_TASK, 61, 2, 1));
    s.extend(tmf_req(52, wire::tmf::ABORT_TASK, 62, 2, 2));
    // None of them consumed a CmdSN: a command with CmdSN 2 runs.
    s.extend(write(62, 2, 0, &[0x55; 512], 512, true));
    s.extend(read(63, 3, 0, 1));
    let (out, _) = drive(&mut e, &s, &[], Instant::now());
    let p = after_login(&out);
    for itt in [50, 51, 52] {
        assert_eq!(tmf_response(&p, itt), wire::tmf::NO_TASK, "ABORT TASK {itt}");
    }
    assert_eq!(result(&p, 62).1, Some(0));
    assert_eq!(result(&p, 63), (vec![0x55; 512], Some(0)));
}

#[test]
fn cmdsns_aborted_before_arrival_are_remembered_up_to_their_limit() {
    let f = fixture("tmf-bound", "", "");
    let mut e = env(&f);
    let mut s = login();
    // 100 commands numbered and aborted before they come, each at ExpCmdSN: ExpCmdSN steps
    // over all of them, the last ABORTED_MAX CmdSNs are remembered.
    for i in 0..100u32 {
        s.extend(tmf_req(1000 + i, wire::tmf::ABORT_TASK, 5000 + i, 3 + i, 2 + i));
    }
    // The oldest comes late: forgotten, so it is below the window (dropped and counted); a
    // recent one is dropped quietly; the next CmdSN runs.
    s.extend(tur(6000, 2));
    s.extend(tur(6001, 101));
    s.extend(tur(6002, 102));
    let (out, _) = drive(&mut e, &s, &[], Instant::now());
    let p = after_login(&out);
    assert!((0..100).all(|i| tmf_response(&p, 1000 + i) == wire::tmf::COMPLETE));
    assert_eq!([result(&p, 6000).1, result(&p, 6001).1, result(&p, 6002).1], [None, None, Some(0)]);
    assert_eq!(e.counters.get(Counter::IscsiWindowDrops), 1, "only the forgotten one counts as outside the window");
}
