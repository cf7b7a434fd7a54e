//! MAINTENANCE IN: supported opcodes, task management functions, target port groups.

use super::*;

fn rsoc(options: u8, opcode: u8, sa: u16, alloc: u32) -> [u8; 12] {
    let mut c = [0xA3, 0x0C, options, opcode, 0, 0, 0, 0, 0, 0, 0, 0];
    c[4..6].copy_from_slice(&sa.to_be_bytes());
    c[6..10].copy_from_slice(&alloc.to_be_bytes());
    c
}

#[test]
fn report_supported_opcodes_all() {
    let d = data(&rsoc(0, 0, 0, 65535));
    let n = be32(&d, 0) as usize;
    assert_eq!(n + 4, d.len());
    assert_eq!(n % 8, 0);
    let descs: Vec<&[u8]> = d[4..].chunks(8).collect();
    // Every listed command runs (not INVALID COMMAND OPERATION CODE) and has its CDB length.
    for e in &descs {
        assert_eq!(cdb_len(e[0]), Some(usize::from(be16(e, 6))), "{e:02x?}");
        // libiscsi test_report_supported_opcodes_servactv: SA only with SERVACTV.
        if e[5] & 1 == 0 {
            assert_eq!(be16(e, 2), 0);
        }
    }
    for want in [0x00u8, 0x03, 0x12, 0x25, 0x28, 0x2A, 0x35, 0x42, 0x88, 0x8A, 0x93, 0x9E, 0xA0, 0xA3] {
        assert!(descs.iter().any(|e| e[0] == want), "{want:02x} listed");
    }
    // RCTD: 20 bytes per command, CTDP set, timeouts descriptor length 0Ah.
    let d = data(&rsoc(0x80, 0, 0, 65535));
    assert_eq!((be32(&d, 0) as usize) / 20, descs.len());
    for e in d[4..].chunks(20) {
        assert_eq!(e[5] & 0x02, 0x02);
        assert_eq!(be16(e, 8), 0x0A);
    }
    // Cut at the allocation length.
    assert_eq!(data(&rsoc(0, 0, 0, 10)).len(), 10);
}

#[test]
fn report_supported_opcodes_one_command() {
    // READ 10: CDB usage data with DPO/FUA (libiscsi test_read10_dpofua).
    let d = data(&rsoc(1, 0x28, 0, 65535));
    assert_eq!(d[1] & 0x07, 3, "supported");
    assert_eq!(be16(&d, 2), 10);
    assert_eq!(d[4], 0x28);
    assert_eq!(d[5] & 0x18, 0x18);
    // By opcode for a command with service actions: invalid; by opcode + SA: fine.
    invalid_field_at(check(&rsoc(1, 0x9E, 0x10, 65535)), 2, Some(2));
    let d = data(&rsoc(2, 0x9E, 0x10, 65535));
    assert_eq!((d[1] & 7, be16(&d, 2), d[4], d[5]), (3, 16, 0x9E, 0x10));
    // By opcode + SA for a command without: invalid.
    invalid_field_at(check(&rsoc(2, 0x28, 0, 65535)), 2, Some(2));
    // Not supported: SUPPORT 001b, no usage data.
    assert_eq!(data(&rsoc(1, 0x04, 0, 65535)), [0, 1, 0, 0]);
    assert_eq!(data(&rsoc(2, 0x9E, 0x11, 65535)), [0, 1, 0, 0]);
    // Option 3 takes either.
    assert_eq!(data(&rsoc(3, 0x28, 0x55, 65535))[4], 0x28);
    // RCTD adds the timeouts descriptor and CTDP.
    let d = data(&rsoc(0x81, 0x28, 0, 65535));
    assert_eq!(d[1] & 0x80, 0x80);
    assert_eq!(d.len(), 4 + 10 + 12);
    invalid_field_at(check(&rsoc(4, 0x28, 0, 65535)), 2, Some(2));
}

#[test]
fn every_listed_command_is_accepted_and_every_unlisted_refused() {
    // One-command answers agree with execute: a listed opcode never gets 20h/00h, an unlisted
    // one always does.
    let all = data(&rsoc(0, 0, 0, 65535));
    let listed: Vec<u8> = all[4..].chunks(8).map(|e| e[0]).collect();
    for opcode in 0..=255u8 {
        let mut cdb = [0u8; 16];
        cdb[0] = opcode;
        let (a, _) = run_on(&cdb, &lun());
        let refused = a == Action::Check(Sense::invalid_opcode());
        assert_eq!(refused, !listed.contains(&opcode), "{opcode:02x}: {a:?}");
    }
}

#[test]
fn report_supported_task_management_functions() {
    let d = data(&[0xA3, 0x0D, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0]);
    assert_eq!(d, [0xCA, 0, 0, 0], "ABORT TASK, ABORT TASK SET, LU RESET, TARGET RESET");
    let d = data(&[0xA3, 0x0D, 0x80, 0, 0, 0, 0, 0, 0, 16, 0, 0]);
    assert_eq!((d.len(), d[3]), (16, 0x0C));
    invalid_field_at(check(&[0xA3, 0x0D, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0]), 6, None);
}

#[test]
fn report_target_port_groups() {
    let l = Lun { relative_port: 2, port_group: 3, ..lun() };
    let (a, d) = run_on(&[0xA3, 0x0A, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], &l);
    assert_eq!(a, Action::Data);
    assert_eq!(d, [0, 0, 0, 12, 0x80, 0x01, 0, 3, 0, 0, 0, 1, 0, 0, 0, 2]);
    let (_, d) = run_on(&[0xA3, 0x2A, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], &l);
    assert_eq!(&d[..8], &[0, 0, 0, 16, 0x10, 0, 0, 0]);
    invalid_field_at(check(&[0xA3, 0x4A, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]), 1, Some(7));
    invalid_field_at(check(&[0xA3, 0x05, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]), 1, Some(4));
}

#[test]
fn what_ipxe_sends() {
    // iPXE: TEST UNIT READY, READ CAPACITY 10 (16 past 2^32), READ 10 / WRITE 10.
    let l = Lun { blocks: 16384, ..lun() };
    assert_eq!(run_on(&[0; 6], &l).0, Action::Good);
    assert_eq!(run_on(&[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], &l).1, [0, 0, 0x3F, 0xFF, 0, 0, 2, 0]);
    assert_eq!(run_on(&[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0], &l).0, Action::Read { lba: 0, blocks: 1 });
    assert_eq!(run_on(&[0x2A, 0, 0, 0, 0x10, 0, 0, 0, 1, 0], &l).0, Action::Write { lba: 4096, blocks: 1, fua: false });
}
