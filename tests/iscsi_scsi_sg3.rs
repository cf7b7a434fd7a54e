//! The iSCSI target's SCSI answers decoded by an independent implementation: sg3_utils
//! (Debian sg3-utils) reads INQUIRY data, VPD pages, GET LBA STATUS data and sense data from a
//! file (`--inhex`/`--binary`) with the same decoders it uses on real disks. The bytes come
//! from `bootfarm::iscsi::scsi` exactly as a session would send them.

use bootfarm::iscsi::scsi::{self, execute, Action, Lun, Sense};
use std::path::PathBuf;
use std::process::Command;

fn lun(writable: bool) -> Lun<'static> {
    Lun {
        blocks: 2048,
        block_len: 512,
        vdisk: "win10",
        designator: scsi::designator_of("win10", &[7; 16], 1 << 20),
        writable,
        max_transfer_blocks: 512,
        write_same_max_blocks: 65536,
        unmap_descriptors_max: 256,
        relative_port: 2,
        port_group: 3,
    }
}

fn file(tag: &str, bytes: &[u8]) -> PathBuf {
    let p = std::env::temp_dir().join(format!("bootfarm-sg3-{}-{tag}.bin", std::process::id()));
    std::fs::write(&p, bytes).unwrap();
    p
}

/// Runs a sg3_utils decoder on `bytes`; its stdout, after checking it exited 0.
fn decode(tag: &str, bytes: &[u8], tool: &str, args: &[&str]) -> String {
    let p = file(tag, bytes);
    let mut cmd = Command::new(tool);
    cmd.args(args);
    if tool == "sg_decode_sense" {
        cmd.arg(format!("--binary={}", p.display()));
    } else {
        cmd.arg("--raw").arg(format!("--inhex={}", p.display()));
    }
    let out = cmd.output().unwrap_or_else(|e| panic!("{tool} (Debian sg3-utils) must be installed: {e}"));
    let _ = std::fs::remove_file(&p);
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{tool} {args:?} failed: {text}");
    text
}

fn answer(cdb: &[u8], lun_id: u64, l: &Lun) -> Vec<u8> {
    let mut out = Vec::new();
    assert_eq!(execute(cdb, lun_id, l, &mut out), Action::Data, "{cdb:02x?}");
    out
}

fn has(text: &str, want: &[&str]) {
    for w in want {
        assert!(text.contains(w), "missing {w:?} in:\n{text}");
    }
}

#[test]
fn standard_inquiry() {
    let t = decode("inq", &answer(&[0x12, 0, 0, 0, 0xFF, 0], 0, &lun(true)), "sg_inq", &[]);
    has(
        &t,
        &[
            "PQual=0  PDT=0",
            "version=0x06  [SPC-4]",
            "HiSUP=1  Resp_data_format=2",
            "TPGS=1",
            "Protect=0",
            "CmdQue=1",
            "length=96",
            "Vendor identification: BOOTFARM",
            "Product identification: win10",
        ],
    );
    // A LUN that does not exist: qualifier 3, type 1Fh.
    let t = decode("inq1", &answer(&[0x12, 0, 0, 0, 0xFF, 0], 1, &lun(true)), "sg_inq", &[]);
    has(&t, &["PQual=3  PDT=31"]);
}

#[test]
fn vpd_pages() {
    let l = lun(true);
    let vpd = |page: u8| answer(&[0x12, 1, page, 0, 0xFF, 0], 0, &l);
    let t = decode("vpd00", &vpd(0x00), "sg_vpd", &[]);
    has(
        &t,
        &[
            "Supported VPD pages [sv]",
            "Unit serial number [sn]",
            "Device identification [di]",
            "Block limits (SBC) [bl]",
            "Block device characteristics (SBC) [bdc]",
            "Logical block provisioning (SBC) [lbpv]",
        ],
    );
    let hex: String = l.designator.iter().map(|b| format!("{b:02x}")).collect();
    has(&decode("vpd80", &vpd(0x80), "sg_vpd", &[]), &[&format!("Unit serial number: {hex}")]);
    let t = decode("vpd83", &vpd(0x83), "sg_vpd", &[]);
    has(
        &t,
        &[
            "Addressed logical unit:",
            "designator type: NAA,  code set: Binary",
            &format!("0x{hex}"),
            "designator type: T10 vendor identification,  code set: ASCII",
            "vendor id: BOOTFARM",
            "vendor specific: win10",
            "Target port:",
            "transport: Internet SCSI (iSCSI)",
            "Relative target port: 0x2",
            "Target port group: 0x3",
        ],
    );
    // sg_vpd's own check of the NAA layout: IEEE Registered Extended with our company id.
    let t = decode("vpd83l", &vpd(0x83), "sg_vpd", &["--long"]);
    has(&t, &["NAA 6, IEEE Company_id: 0x2b00f"]);
    let t = decode("vpdb0", &vpd(0xB0), "sg_vpd", &[]);
    has(
        &t,
        &[
            "Write same non-zero (WSNZ): 0",
            "Optimal transfer length granularity: 8 blocks",
            "Maximum transfer length: 512 blocks",
            "Maximum unmap LBA count: 65536",
            "Maximum unmap block descriptor count: 256",
            "Maximum write same length: 0x10000 blocks",
        ],
    );
    has(&decode("vpdb1", &vpd(0xB1), "sg_vpd", &[]), &["Non-rotating medium"]);
    let t = decode("vpdb2", &vpd(0xB2), "sg_vpd", &[]);
    has(&t, &["(LBPU): 1", "(LBPWS): 1", "(LBPWS10): 1", "(LBPRZ): 1", "(ANC_SUP): 0", "Provisioning type: 2 (thin provisioned)"]);
    // No write cache: nothing to unmap.
    let ro = lun(false);
    let t = decode("vpdb2ro", &answer(&[0x12, 1, 0xB2, 0, 0xFF, 0], 0, &ro), "sg_vpd", &[]);
    has(&t, &["(LBPU): 0", "(LBPWS): 0", "(LBPRZ): 0"]);
    let t = decode("vpdb0ro", &answer(&[0x12, 1, 0xB0, 0, 0xFF, 0], 0, &ro), "sg_vpd", &[]);
    has(&t, &["Maximum unmap LBA count: 0", "Maximum unmap block descriptor count: 0"]);
}

#[test]
fn get_lba_status_data() {
    let mut out = Vec::new();
    // 4 KiB written, 8 KiB unmapped (zero range), 4 KiB never written (hole).
    scsi::lba_status(16, &[(4096, 0), (8192, 2), (4096, 3)], &lun(true), 1024, &mut out);
    let t = decode("lbas", &out, "sg_get_lba_status", &["--maxlen=1024"]);
    has(&t, &["[1] LBA: 0x0000000000000010  blocks:          8  mapped", "[2] LBA: 0x0000000000000018  blocks:         24  deallocated"]);
}

#[test]
fn sense_data() {
    let fixed = |s: Sense| {
        let mut v = Vec::new();
        s.write(&mut v);
        v
    };
    let t = decode("s1", &fixed(Sense::invalid_field(1, Some(4))), "sg_decode_sense", &[]);
    has(&t, &["Fixed format, current", "Sense key: Illegal Request", "Invalid field in cdb", "byte 1 bit 4"]);
    let t = decode("s2", &fixed(Sense::invalid_param(17, None)), "sg_decode_sense", &[]);
    has(&t, &["Invalid field in parameter list", "Error in Data parameters: byte 17"]);
    has(&decode("s3", &fixed(Sense::lba_out_of_range()), "sg_decode_sense", &[]), &["Logical block address out of range"]);
    has(&decode("s4", &fixed(Sense::invalid_opcode()), "sg_decode_sense", &[]), &["Invalid command operation code"]);
    has(&decode("s5", &fixed(Sense::lun_not_supported()), "sg_decode_sense", &[]), &["Logical unit not supported"]);
    has(&decode("s6", &fixed(Sense::write_protected()), "sg_decode_sense", &[]), &["Data Protect", "Write protected"]);
    has(
        &decode("s7", &fixed(Sense::power_on_reset()), "sg_decode_sense", &[]),
        &["Unit Attention", "Power on, reset, or bus device reset occurred"],
    );
    has(&decode("s8", &fixed(Sense::lun_reset()), "sg_decode_sense", &[]), &["Unit Attention", "Bus device reset function occurred"]);
    has(&decode("s9", &fixed(Sense::saving_not_supported()), "sg_decode_sense", &[]), &["Saving parameters not supported"]);
    has(&decode("s10", &fixed(Sense::param_list_length()), "sg_decode_sense", &[]), &["Parameter list length error"]);
    has(&decode("s11", &fixed(Sense::space_allocation_failed()), "sg_decode_sense", &[]), &["Space allocation failed write protect"]);
    let t = decode("s12", &fixed(Sense::miscompare(77)), "sg_decode_sense", &[]);
    has(&t, &["Miscompare", "Miscompare during verify operation", "Info fld=0x4d"]);
    let mut d = Vec::new();
    Sense::miscompare(1 << 33).write_descriptor(&mut d);
    let t = decode("s13", &d, "sg_decode_sense", &[]);
    has(&t, &["Descriptor format, current", "Miscompare", "Information: 0x0000000200000000"]);
    let mut d = Vec::new();
    Sense::invalid_field(10, None).write_descriptor(&mut d);
    has(&decode("s14", &d, "sg_decode_sense", &[]), &["Descriptor format", "Invalid field in cdb", "byte 10"]);
    // REQUEST SENSE's answer is sense data too.
    let t = decode("s15", &answer(&[0x03, 0, 0, 0, 18, 0], 0, &lun(true)), "sg_decode_sense", &[]);
    has(&t, &["No Sense"]);
}
