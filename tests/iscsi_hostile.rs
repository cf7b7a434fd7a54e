//! What no real initiator sends, from a raw client: out-of-window CmdSN, unsolicited data
//! beyond FirstBurstLength, Data-Out beyond an R2T, oversized data segments, garbage and target
//! opcodes, SNACK under ERL 0, commands before login, oversized login text. Each ends in a
//! Reject or a closed connection, and a good initiator is served right after.

mod common;
#[path = "iscsi/raw.rs"]
mod raw;
use common::iscsi::{bounded, output, text};
use common::*;
use raw::{bhs, put32, Raw, Refusal, LUN0};

const PREFIX: &str = "iqn.2026-12.org.bootfarm";
const TARGET: &str = "iqn.2026-12.org.bootfarm:disk";
const INITIATOR: &str = "iqn.2026-12.test:hostile";

struct Fixture {
    _dir: TempDir,
    server: Server,
    port: u16,
}

/// One 8 MiB vdisk "disk" with data in its first MiB; `iscsi` added to [iscsi].
fn fixture(iscsi: &str) -> Fixture {
    let dir = TempDir::new("iscsi-hostile");
    std::fs::create_dir_all(dir.join("boot")).unwrap();
    let src = dir.join("src.raw");
    std::fs::File::create(&src).unwrap().set_len(8 << 20).unwrap();
    write_at(&src, 0, &pattern(5, 0, 1 << 20));
    let vhdx = dir.join("disk.vhdx");
    qemu_img(&["convert", "-f", "raw", "-O", "vhdx", src.to_str().unwrap(), vhdx.to_str().unwrap()]);
    let port = free_port();
    let cfg = format!(
        "[server]\ntftp_port = {}\nhttp_port = {}\nnbd_port = {}\n[tftp]\nroot = \"boot\"\n[nbd]\ncache_dir = \"cache\"\n[iscsi]\niqn_prefix = \"{PREFIX}\"\n{iscsi}\n[[vdisk]]\nname = \"disk\"\npath = \"disk.vhdx\"\n",
        free_port(),
        free_port(),
        free_port()
    );
    std::fs::write(dir.join("bootfarm.toml"), cfg).unwrap();
    let server = Server::start(&["--config", dir.join("bootfarm.toml").to_str().unwrap(), "--iscsi-port", &port.to_string()]);
    Fixture { _dir: dir, server, port }
}

impl Fixture {
    fn login(&self, ops: &[(&str, &str)]) -> Raw {
        Raw::login(self.port, INITIATOR, Some(TARGET), ops).unwrap_or_else(|e| panic!("login: {e:?}\n{}", self.server.log()))
    }
    /// A good initiator is served: libiscsi's iscsi-inq, and a raw login reading block 0.
    fn still_serving(&self, after: &str) {
        let o = output(bounded(30, "iscsi-inq").arg(format!("iscsi://127.0.0.1:{}/{TARGET}/0", self.port)));
        assert!(o.status.success(), "after {after}: iscsi-inq failed: {}\nserver log:\n{}", text(&o), self.server.log());
        let mut r = self.login(&[]);
        let (st, d, _) = r.scsi_in(&[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0], 512);
        assert_eq!((st, &d[..]), (0, &pattern(5, 0, 512)[..]), "after {after}: READ 10 of block 0");
    }
    /// Clears the unit attention a new session may start with (power on / reset).
    fn ready(&self, r: &mut Raw) {
        for _ in 0..3 {
            if r.scsi_in(&[0, 0, 0, 0, 0, 0], 0).0 == 0 {
                return;
            }
        }
        panic!("TEST UNIT READY never GOOD");
    }
}

fn expect_refused(r: &mut Raw, what: &str) -> Refusal {
    let how = r.refused();
    println!("{what}: {how:?}");
    how
}

#[test]
fn cmdsn_outside_the_window_is_dropped_and_the_session_goes_on() {
    let f = fixture("commands_in_flight_max = 4");
    let mut r = f.login(&[]);
    f.ready(&mut r);
    // Too high (beyond MaxCmdSN) and too low (already used): dropped without an answer.
    for (above, what) in [(Some(1), "above MaxCmdSN"), (Some(1000), "far above"), (None, "below ExpCmdSN")] {
        let (exp, max) = (r.cmdsn, r.max_cmdsn);
        assert!(max.wrapping_sub(exp) < 4, "the window is commands_in_flight_max: CmdSN {exp}, MaxCmdSN {max}");
        let sn = match above {
            Some(n) => max.wrapping_add(n),
            None => exp.wrapping_sub(1),
        };
        r.cmdsn = sn;
        let b = r.command_bhs(&[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0], 512, true, false, 0);
        r.send(&b, &[]).unwrap();
        r.cmdsn = exp;
        // The next command in the window is answered, and it is the first thing that comes.
        let (st, d, _) = r.scsi_in(&[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0], 512);
        assert_eq!((st, d.len()), (0, 512), "the command after one {what}");
        // scsi_in asserts the ITT of every PDU it reads: nothing answered the dropped one.
    }
    f.still_serving("out-of-window CmdSN");
}

#[test]
fn unsolicited_data_beyond_first_burst_and_data_out_beyond_the_r2t_are_refused() {
    let f = fixture("initial_r2t = false\nfirst_burst_length = 65536\nmax_recv_data_segment_length = 65536");
    let mut r = f.login(&[("InitialR2T", "No"), ("ImmediateData", "Yes"), ("FirstBurstLength", "65536")]);
    assert_eq!(r.keys.get("InitialR2T").map(String::as_str), Some("No"), "{:?}", r.keys);
    f.ready(&mut r);
    // A 256 KiB WRITE 10 with 64 KiB of immediate data, then 64 KiB more unsolicited.
    let data = vec![0x5au8; 65536];
    let b = r.command_bhs(&[0x2a, 0, 0, 0, 0, 64, 0, 2, 0, 0], 262144, false, true, 65536);
    let itt = u32::from_be_bytes(b[16..20].try_into().unwrap());
    r.send(&b, &data).unwrap();
    let mut d = bhs(0x05, false, 0x80, 65536, LUN0, itt);
    put32(&mut d, 20, 0xffff_ffff);
    put32(&mut d, 28, r.exp_statsn);
    put32(&mut d, 40, 65536);
    let _ = r.send(&d, &data);
    expect_refused(&mut r, "unsolicited Data-Out beyond FirstBurstLength");
    f.still_serving("unsolicited data beyond the first burst");

    // An R2T for the rest of a write answered with more than it asked for.
    let mut r = f.login(&[("InitialR2T", "Yes"), ("ImmediateData", "No")]);
    f.ready(&mut r);
    let b = r.command_bhs(&[0x2a, 0, 0, 0, 0, 64, 0, 0, 8, 0], 4096, false, true, 0);
    let itt = u32::from_be_bytes(b[16..20].try_into().unwrap());
    r.send(&b, &[]).unwrap();
    let r2t = r.recv().unwrap();
    assert_eq!((r2t.op(), r2t.itt()), (0x31, itt), "{r2t:?}");
    assert_eq!(r2t.u32(44), 4096, "R2T desired length");
    let mut d = bhs(0x05, false, 0x80, 8192, LUN0, itt);
    put32(&mut d, 20, r2t.u32(20));
    put32(&mut d, 28, r.exp_statsn);
    let _ = r.send(&d, &[0x77; 8192]);
    expect_refused(&mut r, "Data-Out beyond the R2T");
    f.still_serving("Data-Out beyond the R2T");

    // Data-Out for a transfer tag the target never gave.
    let mut r = f.login(&[]);
    f.ready(&mut r);
    let mut d = bhs(0x05, false, 0x80, 512, LUN0, 0x4242);
    put32(&mut d, 20, 0x1234_5678);
    put32(&mut d, 28, r.exp_statsn);
    let _ = r.send(&d, &[0; 512]);
    expect_refused(&mut r, "Data-Out for an unknown task");
    f.still_serving("Data-Out for an unknown task");
}

#[test]
fn oversized_segments_garbage_opcodes_and_snack_are_refused() {
    let f = fixture("max_recv_data_segment_length = 65536");
    // A data segment longer than the MaxRecvDataSegmentLength we declared (the bytes are never
    // sent: the target must not wait for 16 MiB).
    let mut r = f.login(&[]);
    assert_eq!(r.keys.get("MaxRecvDataSegmentLength").map(String::as_str), Some("65536"), "{:?}", r.keys);
    f.ready(&mut r);
    let mut b = r.command_bhs(&[0x2a, 0, 0, 0, 0, 0, 0, 0x80, 0, 0], 16 << 20, false, true, 0);
    b[5..8].copy_from_slice(&[0xff, 0xff, 0xfc]);
    let _ = r.send(&b, &[0; 4096]);
    assert!(matches!(expect_refused(&mut r, "16 MiB data segment"), Refusal::Closed | Refusal::Reject { .. }));
    f.still_serving("an oversized data segment");
    // One byte over the limit, on a NOP-Out (ping with data), sent whole.
    let mut r = f.login(&[]);
    let mut b = bhs(0x00, true, 0x80, 65537, LUN0, 0x99);
    put32(&mut b, 20, 0xffff_ffff);
    put32(&mut b, 24, r.cmdsn);
    put32(&mut b, 28, r.exp_statsn);
    let _ = r.send(&b, &vec![0x33; 65537]);
    expect_refused(&mut r, "NOP-Out one byte over MaxRecvDataSegmentLength");
    f.still_serving("a segment one byte over");
    // At the limit: a ping with 64 KiB of data is echoed.
    let mut r = f.login(&[]);
    let ping: Vec<u8> = pattern(9, 0, 65536);
    let mut b = bhs(0x00, true, 0x80, ping.len(), LUN0, 0x98);
    put32(&mut b, 20, 0xffff_ffff);
    put32(&mut b, 24, r.cmdsn);
    put32(&mut b, 28, r.exp_statsn);
    r.send(&b, &ping).unwrap();
    let p = r.recv().unwrap();
    assert_eq!((p.op(), p.itt()), (0x20, 0x98), "{p:?}");
    assert!(p.data == ping, "NOP-In echoes the ping data");

    // Unassigned opcodes, a target opcode, a SNACK (ERL 0): each a Reject or a close.
    for (op, what) in [
        (0x1e, "unassigned opcode 0x1e"),
        (0x21, "a target opcode (SCSI Response)"),
        (0x3f, "Reject from an initiator"),
        (0x10, "SNACK under ERL 0"),
    ] {
        let mut r = f.login(&[]);
        let mut b = bhs(op, false, 0x80, 0, LUN0, 0x77);
        put32(&mut b, 24, r.cmdsn);
        put32(&mut b, 28, r.exp_statsn);
        let _ = r.send(&b, &[]);
        if let Refusal::Reject { rejected, .. } = expect_refused(&mut r, what) {
            assert_eq!(&rejected[..48.min(rejected.len())], &b[..], "a Reject carries the rejected BHS");
            // The connection goes on after a Reject: a ping is answered.
            let mut n = bhs(0x00, true, 0x80, 0, LUN0, 0x55);
            put32(&mut n, 20, 0xffff_ffff);
            put32(&mut n, 24, r.cmdsn);
            put32(&mut n, 28, r.exp_statsn);
            r.send(&n, &[]).unwrap();
            let p = r.recv().unwrap();
            assert_eq!((p.op(), p.itt()), (0x20, 0x55), "after a Reject of {what}: {p:?}");
        }
        f.still_serving(what);
    }
    // A burst of random bytes instead of PDUs.
    let mut r = Raw::connect(f.port);
    let _ = r.send(&<[u8; 48]>::try_from(&pattern(77, 0, 48)[..]).unwrap(), &pattern(78, 0, 4000));
    expect_refused(&mut r, "random bytes");
    f.still_serving("random bytes");
}

#[test]
fn commands_before_login_and_oversized_login_text_are_refused() {
    let f = fixture("text_bytes_max = 8192");
    // A SCSI command as the first PDU of a connection.
    let mut r = Raw::connect(f.port);
    let b = r.command_bhs(&[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0], 512, true, false, 0);
    let _ = r.send(&b, &[]);
    match r.recv() {
        Ok(p) if p.op() == 0x23 => assert_ne!(p.bhs[36], 0, "a login response refusing it: {p:?}"),
        Ok(p) if p.op() == 0x3f => {}
        Ok(p) => panic!("a SCSI command before login answered with {p:?}"),
        Err(_) => {}
    }
    f.still_serving("a command before login");
    // Login text across Login Requests with the C bit, beyond text_bytes_max.
    let mut r = Raw::connect(f.port);
    let isid = [0x80, 0x42, 0x99, 0, 0, 1, 0, 0];
    let chunk = raw::text_bytes(&[("X-bootfarm-test", &"a".repeat(4000))]);
    let mut refused = false;
    for i in 0..4u32 {
        let mut b = bhs(0x03, true, 0x40 | 1, chunk.len(), isid, 7);
        put32(&mut b, 24, 1);
        put32(&mut b, 28, i);
        if r.send(&b, &chunk).is_err() {
            refused = true;
            break;
        }
        match r.recv() {
            Ok(p) if p.op() == 0x23 && p.bhs[36] == 0 => continue, // an empty answer to a partial request
            Ok(p) if p.op() == 0x23 => {
                assert!(i >= 1, "refused only beyond 8192 bytes, at request {i}: {p:?}");
                refused = true;
                break;
            }
            Ok(p) => panic!("{p:?}"),
            Err(_) => {
                refused = true;
                break;
            }
        }
    }
    assert!(refused, "16 KB of login text accepted with text_bytes_max = 8192");
    f.still_serving("oversized login text");
    // A login that never finishes ties up nothing: a good client logs in beside it.
    let _idle = Raw::connect(f.port);
    f.still_serving("an idle connection before login");
}
