//! Files that change under the server: images truncated or copied over while served (refused as
//! damaged, never a crash), images replaced the safe way (served again with the new bytes),
//! FIFOs where a file is expected (refused at once, nothing hangs).

mod common;
use common::*;
use std::process::Command;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

fn mkfifo(p: &std::path::Path) {
    let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo {}", p.display());
}

/// Runs bootfarm with a deadline: a hang is a failure, not a stuck test.
fn bootfarm_within(args: &[&str], limit: Duration) -> (Option<i32>, String) {
    let mut child =
        Command::new(bin()).args(args).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let end = Instant::now() + limit;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            return (st.code(), text);
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("bootfarm {args:?} still running after {limit:?}: it hangs");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn config_text(tftp: u16, http: u16, nbd: u16, vdisks: &[(&str, &str)]) -> String {
    let mut s = format!(
        "[server]\ntftp_port = {tftp}\nhttp_port = {http}\nnbd_port = {nbd}\nworkers = 2\nreload_poll_ms = 50\nreload_debounce_ms = 50\n[tftp]\nroot = \"boot\"\n"
    );
    for (name, path) in vdisks {
        s.push_str(&format!("[[vdisk]]\nname = \"{name}\"\npath = \"{path}\"\n"));
    }
    s
}

#[test]
fn a_fifo_as_vdisk_or_config_is_refused_at_once_and_a_reload_to_one_keeps_serving() {
    let dir = TempDir::new("fifo");
    std::fs::create_dir_all(dir.join("boot")).unwrap();
    std::fs::write(dir.join("a.raw"), pattern(1, 0, MIB as usize)).unwrap();
    let fifo = dir.join("pipe.vhdx");
    mkfifo(&fifo);

    let (code, out) = bootfarm_within(&["vdisk", "inspect", fifo.to_str().unwrap()], Duration::from_secs(10));
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("is a FIFO") && out.contains("regular file or a block device"), "{out}");

    let (http, tftp, nbd) = (free_port(), free_port(), free_port());
    let cfg = dir.join("bootfarm.toml");
    std::fs::write(&cfg, config_text(tftp, http, nbd, &[("a", "a.raw"), ("p", "pipe.vhdx")])).unwrap();
    let (code, out) = bootfarm_within(&["config", "check", cfg.to_str().unwrap()], Duration::from_secs(10));
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("vdisk[1].path") && out.contains("is a FIFO"), "{out}");

    let cfg_fifo = dir.join("fifo.toml");
    mkfifo(&cfg_fifo);
    let (code, out) = bootfarm_within(&["config", "check", cfg_fifo.to_str().unwrap()], Duration::from_secs(10));
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("is a FIFO"), "{out}");

    // Serving: a reload to a FIFO vdisk is refused, the last good configuration keeps serving,
    // and the control thread still takes SIGTERM.
    std::fs::write(&cfg, config_text(tftp, http, nbd, &[("a", "a.raw")])).unwrap();
    let mut server = Server::start(&["--config", cfg.to_str().unwrap()]);
    std::fs::write(&cfg, config_text(tftp, http, nbd, &[("a", "a.raw"), ("p", "pipe.vhdx")])).unwrap();
    let refused = server.wait_for("configuration refused");
    assert!(refused.contains("is a FIFO"), "{refused}");
    server.signal(libc::SIGHUP);
    let body = run(Command::new("curl").args(["-sS", "-r", "0-15", &format!("http://127.0.0.1:{http}/vdisk/a")])).stdout;
    assert_eq!(body, pattern(1, 0, 16));
    let t = Instant::now();
    server.signal(libc::SIGTERM);
    let end = t + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = server.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < end, "SIGTERM did not stop the server within 10 s");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
}
