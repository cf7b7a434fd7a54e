//! libiscsi's conformance suite (`iscsi-test-cu`, families SCSI and iSCSI) against tgt and
//! bootfarm on the same image, in one run: every test that passes on tgt passes on bootfarm,
//! and every test bootfarm fails or skips is listed with its reason in README.md.

mod common;
use common::iscsi::{bounded, output, parse_cunit, text, CuTest, Tgt, Verdict};
use common::*;
use std::collections::BTreeMap;
use std::path::Path;

const FAMILIES: [&str; 2] = ["SCSI", "iSCSI"];
/// libiscsi's default (first) initiator name.
const CU_INITIATOR: &str = "iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-test";
const IQN_PREFIX: &str = "iqn.2026-12.org.bootfarm";
/// The README section whose table lists bootfarm's failures and skips (first column: the test).
const README_SECTION: &str = "### iscsi-test-cu: what bootfarm fails or skips";

/// A 32 MiB VHDX with data at the start, in the middle and at the end (a dynamic image with
/// unallocated blocks between), and its raw export for tgt.
fn image(dir: &TempDir) -> (std::path::PathBuf, std::path::PathBuf) {
    let src = dir.join("src.raw");
    std::fs::File::create(&src).unwrap().set_len(32 << 20).unwrap();
    write_at(&src, 0, &pattern(11, 0, 1 << 20));
    write_at(&src, 13 << 20, &pattern(12, 13 << 20, 70_000));
    write_at(&src, (32 << 20) - 8192, &pattern(13, (32 << 20) - 8192, 8192));
    let vhdx = dir.join("disk.vhdx");
    qemu_img(&["convert", "-f", "raw", "-O", "vhdx", "-o", "block_size=1M", src.to_str().unwrap(), vhdx.to_str().unwrap()]);
    let raw = dir.join("disk.export");
    let o = bootfarm(&["vdisk", "export", vhdx.to_str().unwrap(), "-o", raw.to_str().unwrap()]);
    assert!(o.status.success(), "vdisk export: {}", text(&o));
    (vhdx, raw)
}

/// The suites of a family, from `iscsi-test-cu --list` (lines `FAMILY.Suite`).
fn suites(family: &str) -> Vec<String> {
    let o = output(bounded(30, "iscsi-test-cu").arg("--list"));
    let list = text(&o);
    let v: Vec<String> = list
        .lines()
        .map(str::trim)
        .filter(|l| l.split('.').count() == 2 && l.starts_with(&format!("{family}.")))
        .map(str::to_string)
        .collect();
    assert!(!v.is_empty(), "iscsi-test-cu --list names no {family} suite:\n{list}");
    v
}

/// Every suite of `family` against `url`, one `iscsi-test-cu -d -v --test=FAMILY.Suite URL URL`
/// each (the second URL: the multipath tests' other path, the same target again; for them one
/// initiator name on both paths). One process
/// per suite: libiscsi keeps state between the suites of one run (after the CompareAndWrite
/// suite meets a target without COMPARE AND WRITE, the 16-byte CDBs of later suites carry a
/// stray bit: READ 16 of 256 blocks goes out as 257), so a suite's result would depend on the
/// suites before it. The output is kept in target/tmp/iscsi-conformance/.
fn suite(dir: &Path, tag: &str, family: &str, url: &str) -> Vec<CuTest> {
    let keep = Path::new(env!("CARGO_TARGET_TMPDIR")).join("iscsi-conformance");
    std::fs::create_dir_all(&keep).unwrap();
    let mut all = String::new();
    let mut tests = Vec::new();
    for s in suites(family) {
        let mut cmd = bounded(120, "iscsi-test-cu");
        if s.ends_with(".MultipathIO") {
            // Multipath is one host on two paths (Windows MPIO, dm-multipath): one initiator
            // name on both. libiscsi gives the second path its second name by default, which
            // on bootfarm is another target with its own write cache.
            cmd.args(["-i", CU_INITIATOR, "-I", CU_INITIATOR]);
        }
        let o = output(cmd.args(["-d", "-v", &format!("--test={s}"), url, url]).current_dir(dir));
        let out = text(&o);
        all.push_str(&out);
        let got = parse_cunit(&out);
        assert!(!got.is_empty(), "iscsi-test-cu against {tag} ({url}) ran no test of {s} ({}):\n{out}", o.status);
        tests.extend(got.into_iter().map(|t| CuTest { name: format!("{family}.{}", t.name), ..t }));
    }
    std::fs::write(keep.join(format!("cu-{tag}-{family}.log")), &all).unwrap();
    tests
}

/// README's table of bootfarm's failures and skips: (test or `Family.Suite.*` pattern, what
/// tgt does, as the second column says). A row whose tgt column is `pass` is a known break of
/// the rule "passes on tgt => passes on bootfarm", named there with its reason.
fn readme_listed() -> Vec<(String, String)> {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let Some(start) = readme.find(README_SECTION) else { return Vec::new() };
    readme[start..]
        .lines()
        .skip(1)
        .take_while(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let mut cols = l.strip_prefix("| `")?.split('|');
            let name = cols.next()?.trim().trim_end_matches('`').to_string();
            Some((name, cols.next()?.trim().to_string()))
        })
        .collect()
}

/// Whether README pattern `p` (a test, or a suite as `Family.Suite.*`) covers test `name`.
fn covers(p: &str, name: &str) -> bool {
    p == name || p.strip_suffix('*').is_some_and(|pre| name.starts_with(pre))
}

fn short(v: Option<Verdict>) -> &'static str {
    match v {
        Some(Verdict::Passed) => "pass",
        Some(Verdict::Skipped) => "skip",
        Some(Verdict::Failed) => "FAIL",
        None => "-",
    }
}

#[test]
fn iscsi_test_cu_passes_on_bootfarm_what_passes_on_tgt() {
    let dir = TempDir::new("iscsi-cu");
    let (vhdx, raw) = image(&dir);
    // tgt writes into its backing file: its own copy of the export.
    let tgt_iqn = format!("{IQN_PREFIX}.tgt:disk");
    let tgt = Tgt::start(&dir.0, &[(&tgt_iqn, &raw)]);
    let port = free_port();
    let cfg = format!(
        "[server]\ntftp_port = {}\nhttp_port = {}\nnbd_port = {}\niscsi_port = {port}\n[tftp]\nroot = \"boot\"\n[nbd]\ncache_dir = \"cache\"\n[iscsi]\niqn_prefix = \"{IQN_PREFIX}\"\n[[vdisk]]\nname = \"disk\"\npath = \"{}\"\n",
        free_port(),
        free_port(),
        free_port(),
        vhdx.display()
    );
    std::fs::create_dir_all(dir.join("boot")).unwrap();
    std::fs::write(dir.join("bootfarm.toml"), cfg).unwrap();
    let server = Server::start(&["--config", dir.join("bootfarm.toml").to_str().unwrap(), "--iscsi-port", &port.to_string()]);
    let ours = format!("iscsi://127.0.0.1:{port}/{IQN_PREFIX}:disk/0");

    let mut table: BTreeMap<String, (Option<Verdict>, Option<Verdict>, String)> = BTreeMap::new();
    for family in FAMILIES {
        for t in suite(&dir.0, "tgt", family, &tgt.url(&tgt_iqn)) {
            table.entry(t.name).or_default().0 = Some(t.verdict);
        }
        for t in suite(&dir.0, "bootfarm", family, &ours) {
            let e = table.entry(t.name).or_default();
            e.1 = Some(t.verdict);
            e.2 = t.output;
        }
    }
    let listed = readme_listed();
    println!("{:<58} {:>4} {:>8}", "test", "tgt", "bootfarm");
    let mut broken = Vec::new();
    let mut unlisted = Vec::new();
    let mut counts = BTreeMap::new();
    let mut known = Vec::new();
    for (name, (t, b, out)) in &table {
        println!("{name:<58} {:>4} {:>8}", short(*t), short(*b));
        *counts.entry((short(*t), short(*b))).or_insert(0) += 1;
        let row = listed.iter().find(|(p, _)| covers(p, name));
        if *t == Some(Verdict::Passed) && *b != Some(Verdict::Passed) {
            match row {
                Some((_, tgt)) if tgt == "pass" => known.push(name.clone()),
                _ => broken.push(format!("{name}: passes on tgt, {} on bootfarm:{out}", short(*b))),
            }
        }
        if *b != Some(Verdict::Passed) && row.is_none() {
            unlisted.push(format!("{name} ({}, tgt {})", short(*b), short(*t)));
        }
    }
    println!("(tgt, bootfarm) -> tests: {counts:?}");
    println!("{} tests pass on tgt and not on bootfarm, each named in README with its reason: {known:?}", known.len());
    for (p, _) in &listed {
        if !table.iter().any(|(n, e)| covers(p, n) && e.1 != Some(Verdict::Passed)) {
            println!("note: README lists {p} as failing or skipped on bootfarm, but it passes (or is not run) now");
        }
    }
    assert!(
        broken.is_empty(),
        "{} tests pass on tgt but not on bootfarm (and README does not name them as known):\n{}\nserver log:\n{}",
        broken.len(),
        broken.join("\n"),
        server.log()
    );
    assert!(unlisted.is_empty(), "bootfarm fails or skips tests that README's {README_SECTION:?} does not list:\n{}", unlisted.join("\n"));
    // The server survived the whole suite and still answers.
    let inq = output(bounded(30, "iscsi-inq").arg(&ours));
    assert!(inq.status.success(), "iscsi-inq after the suite: {}\n{}", text(&inq), server.log());
}

#[test]
fn cunit_verbose_output_parses_per_test() {
    let out = "Suite: Inquiry\n  Test: Standard ...passed\n  Test: BlockLimits ...    [SKIPPED] Logical unit is fully provisioned. Skipping test\npassed\nSuite: GetLBAStatus\n  Test: BeyondEol ...    [FAILED] GET_LBA_STATUS successful but should have failed\nFAILED\n    1. test_get_lba_status_beyond_eol.c:38  - CU_ASSERT_EQUAL(_r,0)\nSuite: Reserve6\n  Test: LUNReset ...passed    [FAILED] PRIN command: failed with sense.\n\nSuite: TestUnitReady\n  Test: Simple ...passed    [SKIPPED] PERSISTENT RESERVE IN is not implemented.\n\nSuite: iSCSIdatasn\n  Test: iSCSIDataSnInvalid ...FAILED\n    1. test_iscsi_datasn_invalid.c:98  - CU_ASSERT_NOT_EQUAL(ret,0)\n  Test: Cut ...\nRun Summary:    Type  Total\n";
    let r: Vec<(String, Verdict)> = parse_cunit(out).into_iter().map(|t| (t.name, t.verdict)).collect();
    let want = [
        ("Inquiry.Standard", Verdict::Passed),
        ("Inquiry.BlockLimits", Verdict::Skipped),
        ("GetLBAStatus.BeyondEol", Verdict::Failed),
        ("Reserve6.LUNReset", Verdict::Passed),
        ("TestUnitReady.Simple", Verdict::Passed),
        ("iSCSIdatasn.iSCSIDataSnInvalid", Verdict::Failed),
        ("iSCSIdatasn.Cut", Verdict::Failed),
    ];
    assert_eq!(r, want.map(|(n, v)| (n.to_string(), v)).to_vec());
}
