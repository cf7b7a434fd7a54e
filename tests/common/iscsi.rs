//! iSCSI peers for the integration tests: tgt (Debian's userspace tgtd) as the reference target
//! on a loopback portal with its own control socket, libiscsi's tools behind a time limit, and a
//! parser for `iscsi-test-cu`'s verbose CUnit output (per test: passed, skipped or failed).

use super::lab::die_with_parent;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// `program` behind coreutils' `timeout` (SIGTERM after `secs`, SIGKILL 5 s later), dying with
/// the test thread: no peer tool outlives a hung test.
pub fn bounded(secs: u64, program: &str) -> Command {
    let mut c = Command::new("timeout");
    c.args(["-k", "5", &secs.to_string(), program]);
    die_with_parent(&mut c);
    c
}

/// Runs `cmd` and returns its output whatever the exit status (the caller judges it); panics
/// only when it cannot start.
pub fn output(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (.ci/run installs it)"))
}

pub fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// A tgtd in the foreground on 127.0.0.1:`port` with its own control socket, one target per (IQN, backing file) with the disk at LUN 1 (tgt keeps LUN 0
/// for its controller), open to every initiator. Killed when dropped.
pub struct Tgt {
    child: Child,
    pub port: u16,
    pub log: PathBuf,
}

impl Tgt {
    pub fn start(dir: &Path, targets: &[(&str, &Path)]) -> Tgt {
        // tgtd takes control socket numbers up to 32767 and locks the one it takes: one that is
        // in use (another test's daemon) makes it exit at once, and a new port is tried.
        for _ in 0..8 {
            if let Some(t) = Tgt::try_start(dir, super::free_port()) {
                t.configure(targets);
                return t;
            }
        }
        panic!("tgtd did not start on 8 ports in a row; last log in {}", dir.display());
    }

    fn try_start(dir: &Path, port: u16) -> Option<Tgt> {
        let log = dir.join(format!("tgtd-{port}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = die_with_parent(
            Command::new("tgtd").args(["-f", "--iscsi", &format!("portal=127.0.0.1:{port}"), "-C"]).arg((port & 0x7fff).to_string()),
        )
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .expect("tgtd (Debian tgt; .ci/run installs it)");
        let mut t = Tgt { child, port, log };
        let end = Instant::now() + Duration::from_secs(15);
        // The control socket comes up first, then the portal; both within a second here.
        loop {
            if let Ok(Some(_)) = t.child.try_wait() {
                return None;
            }
            if t.adm_ok(&["--op", "show", "--mode", "sys"]) && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(t);
            }
            assert!(Instant::now() < end, "tgtd's control socket or portal not up within 15 s:\n{}", t.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn configure(&self, targets: &[(&str, &Path)]) {
        for (i, (iqn, backing)) in targets.iter().enumerate() {
            let tid = (i + 1).to_string();
            self.adm(&["--op", "new", "--mode", "target", "--tid", &tid, "-T", iqn]);
            self.adm(&["--op", "new", "--mode", "logicalunit", "--tid", &tid, "--lun", "1", "-b", backing.to_str().unwrap()]);
            self.adm(&["--op", "bind", "--mode", "target", "--tid", &tid, "-I", "ALL"]);
        }
    }

    fn adm_cmd(&self, args: &[&str]) -> Command {
        let mut c = bounded(20, "tgtadm");
        c.args(["-C", &(self.port & 0x7fff).to_string(), "--lld", "iscsi"]).args(args);
        c
    }

    fn adm_ok(&self, args: &[&str]) -> bool {
        output(&mut self.adm_cmd(args)).status.success()
    }

    /// tgtadm against this daemon; panics with its output (and tgtd's log) when it fails.
    pub fn adm(&self, args: &[&str]) -> String {
        let o = output(&mut self.adm_cmd(args));
        assert!(o.status.success(), "tgtadm {args:?}: {}\ntgtd log:\n{}", text(&o), self.log_text());
        text(&o)
    }

    /// The URL of the disk of target `iqn` (LUN 1).
    pub fn url(&self, iqn: &str) -> String {
        format!("iscsi://127.0.0.1:{}/{iqn}/1", self.port)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Tgt {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Passed,
    /// CUnit counts it as passed; the test printed `[SKIPPED]` (not implemented, not applicable).
    Skipped,
    Failed,
}

/// One test's result from `iscsi-test-cu -v`: "Suite.Test", its verdict and what it printed.
#[derive(Clone, Debug)]
pub struct CuTest {
    pub name: String,
    pub verdict: Verdict,
    pub output: String,
}

/// Parses `iscsi-test-cu -v` output. CUnit prints `Suite: S`, then per test `  Test: T ...`,
/// the test's own messages (indented; `[SKIPPED] ...`, `[FAILED] ...`), and its verdict,
/// `passed` or `FAILED`, right after the dots or at the start of a line (messages printed by a
/// suite's teardown may follow it on the same line). A test without a verdict (the run was cut
/// short) counts as failed.
pub fn parse_cunit(out: &str) -> Vec<CuTest> {
    let mut tests: Vec<CuTest> = Vec::new();
    let mut suite = String::new();
    let mut open = false; // the last test has no verdict yet
                          // A verdict, and whether the test printed `[SKIPPED]` before it (what a teardown prints
                          // after it, on the same line or later, belongs to no test).
    let verdict_of = |before: &str, s: &str| {
        let v = if s.starts_with("passed") {
            Verdict::Passed
        } else if s.starts_with("FAILED") {
            Verdict::Failed
        } else {
            return None;
        };
        Some(if v == Verdict::Passed && before.contains("[SKIPPED]") { Verdict::Skipped } else { v })
    };
    for line in out.lines() {
        if let Some(s) = line.strip_prefix("Suite: ") {
            suite = s.trim().to_string();
            open = false;
        } else if let Some(rest) = line.strip_prefix("  Test: ") {
            let (name, after) = rest.split_once(" ...").unwrap_or((rest, ""));
            let mut t = CuTest { name: format!("{suite}.{}", name.trim()), verdict: Verdict::Failed, output: after.to_string() };
            match verdict_of("", after) {
                Some(v) => t.verdict = v,
                None => open = true,
            }
            tests.push(t);
        } else if line.starts_with("Run Summary:") {
            open = false;
        } else if let Some(t) = tests.last_mut() {
            if open {
                if let Some(v) = verdict_of(&t.output, line) {
                    t.verdict = v;
                    open = false;
                }
                t.output.push('\n');
                t.output.push_str(line);
            }
        }
    }
    tests
}
