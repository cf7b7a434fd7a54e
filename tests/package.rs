//! The Debian package end to end, as root on the CI machine: build it (packaging/build-deb.sh:
//! a release build, a no-op when target/release is up to date), `lintian` it (no error, no
//! warning; the info tags it prints are explained in README "Install the package"), `dpkg -i`
//! it, `systemd-analyze verify` the unit, then run the unit's ExecStart the way systemd would
//! without systemd as PID 1: as its User, with its capabilities and LimitNOFILE, under its
//! seccomp rules (packaging/syscall-filter.py) and a NOTIFY_SOCKET this test listens on, in a
//! network namespace of its own (the packaged config binds 0.0.0.0:69/8080/10809, which other
//! servers on this machine may hold). READY=1, a reload by SIGHUP (RELOADING=1 then READY=1
//! with generation 2) and STOPPING=1 + exit 0 on SIGTERM are observed; `dpkg -r` stops a running
//! instance and leaves no process; `dpkg -P` leaves no conffile or state directory.
//!
//! CI time: the release build of bootfarm + bootstorm (fat LTO) from nothing takes ~5-8 min on
//! 2 cores; with target/release up to date the whole test takes ~1 min (lintian ~20 s).

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const REPO: &str = env!("CARGO_MANIFEST_DIR");
const UNIT: &str = "/lib/systemd/system/bootfarm.service";

fn sh(cmd: &mut Command) -> String {
    let out = common::run(cmd);
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn installed() -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f", "${Status}", "bootfarm"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

/// The notifications a service sends, as systemd's socket receives them.
struct Manager {
    socket: UnixDatagram,
    seen: Vec<String>,
}

impl Manager {
    /// Waits (30 s at most) for a datagram with `field`, keeping every one seen.
    fn expect(&mut self, field: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            self.socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
            if let Ok(n) = self.socket.recv(&mut buf) {
                let m = String::from_utf8_lossy(&buf[..n]).into_owned();
                self.seen.push(m.clone());
                if m.lines().any(|l| l == field) {
                    return m;
                }
            }
        }
        panic!("no notification with {field:?} within 30 s; seen: {:?}", self.seen);
    }
}

/// The value of `key=` in the installed unit.
fn unit_value(unit: &str, key: &str) -> String {
    unit.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix('=').map(str::to_string)).unwrap_or_else(|| panic!("{UNIT} has no {key}="))
}

/// The unit's ExecStart as systemd runs it: User=, AmbientCapabilities, CapabilityBoundingSet,
/// NoNewPrivileges, LimitNOFILE, the seccomp rules, a clean environment with NOTIFY_SOCKET, /
/// as working directory; in a new network namespace with its loopback up.
fn start_service(unit: &str, notify: &Path) -> Child {
    let user = unit_value(unit, "User");
    // systemd (PID 1) may raise the hard limit; here the test's root may lack CAP_SYS_RESOURCE
    // (containers): then the hard limit it has, and bootfarm warns with the figure it needs.
    let wanted: u64 = unit_value(unit, "LimitNOFILE").parse().unwrap();
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) };
    let can_raise = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|c| c & (1 << 24) != 0);
    let nofile = if can_raise { wanted } else { wanted.min(r.rlim_max) };
    if nofile < wanted {
        eprintln!("LimitNOFILE={wanted}: this test's root cannot raise the hard limit {} (no CAP_SYS_RESOURCE); using it", r.rlim_max);
    }
    assert_eq!(unit_value(unit, "AmbientCapabilities"), "CAP_NET_BIND_SERVICE");
    assert_eq!(unit_value(unit, "CapabilityBoundingSet"), "CAP_NET_BIND_SERVICE");
    let exec = unit_value(unit, "ExecStart");
    let script = format!(
        "ip link set lo up && exec prlimit --nofile={nofile}:{nofile} -- setpriv --reuid={user} --regid={user} --init-groups \
         --inh-caps=-all,+net_bind_service --ambient-caps=-all,+net_bind_service --bounding-set=-all,+net_bind_service \
         --no-new-privs -- /usr/bin/python3 {REPO}/packaging/syscall-filter.py {UNIT} -- {exec}"
    );
    Command::new("unshare")
        .args(["--net", "--", "/bin/sh", "-c", &script])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("NOTIFY_SOCKET", notify)
        .current_dir("/")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the packaged ExecStart")
}

/// Runs `args` inside the service's network namespace.
fn inside(pid: u32, args: &[&str]) -> Vec<u8> {
    common::run(Command::new("nsenter").args(["-t", &pid.to_string(), "-n", "--"]).args(args)).stdout
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the service did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Processes running as `uid`.
fn processes_of(uid: u32) -> Vec<String> {
    let mut out = Vec::new();
    for d in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(status) = std::fs::read_to_string(d.path().join("status")) else { continue };
        let running = !status.lines().any(|l| l.starts_with("State:") && l.contains("zombie"));
        let owner = status.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|v| v.split_whitespace().next()?.parse::<u32>().ok());
        if running && owner == Some(uid) {
            out.push(format!("{} {}", d.file_name().to_string_lossy(), status.lines().next().unwrap_or("")));
        }
    }
    out
}

#[test]
fn package_builds_installs_serves_as_its_unit_and_removes_cleanly() {
    assert_eq!(unsafe { libc::geteuid() }, 0, "this test installs a package: run it as root (CI does)");
    if installed() {
        sh(Command::new("dpkg").args(["-P", "bootfarm"]));
    }

    // 1. Build and lint.
    let t = Instant::now();
    let built = common::run(Command::new("bash").arg(format!("{REPO}/packaging/build-deb.sh")).current_dir(REPO)).stdout;
    let built = String::from_utf8_lossy(&built).into_owned();
    let deb = built.lines().last().unwrap().trim().to_string();
    let deb = Path::new(REPO).join(deb);
    assert!(deb.is_file(), "build-deb.sh printed {built:?}");
    eprintln!("package built in {:.1} s: {}", t.elapsed().as_secs_f64(), deb.display());
    let lint = Command::new("lintian").args(["--fail-on", "error,warning"]).arg(&deb).output().expect("lintian (.ci/run installs it)");
    let lint_text = String::from_utf8_lossy(&lint.stdout).into_owned() + &String::from_utf8_lossy(&lint.stderr);
    assert!(lint.status.success(), "lintian found errors or warnings:\n{lint_text}");
    assert!(!lint_text.lines().any(|l| l.starts_with("E:") || l.starts_with("W:")), "{lint_text}");

    // 2. Install.
    sh(Command::new("dpkg").arg("-i").arg(&deb).env("DEBIAN_FRONTEND", "noninteractive"));
    for f in [
        "/usr/bin/bootfarm",
        "/usr/bin/bootstorm",
        "/etc/bootfarm/bootfarm.toml",
        UNIT,
        "/usr/share/man/man1/bootfarm.1.gz",
        "/usr/share/man/man1/bootfarm-doctor.1.gz",
        "/usr/share/man/man1/bootfarm-vdisk-verify.1.gz",
        "/usr/share/man/man1/bootstorm-boot.1.gz",
        "/usr/share/bash-completion/completions/bootfarm",
        "/usr/share/zsh/vendor-completions/_bootstorm",
    ] {
        assert!(Path::new(f).exists(), "{f} not installed");
    }
    let conffiles = sh(Command::new("dpkg-query").args(["-W", "-f", "${Conffiles}", "bootfarm"]));
    assert!(conffiles.contains("/etc/bootfarm/bootfarm.toml"), "{conffiles}");
    let passwd = sh(Command::new("getent").args(["passwd", "bootfarm"]));
    let uid: u32 = passwd.split(':').nth(2).unwrap().parse().unwrap();
    assert!(uid < 1000, "bootfarm must be a system user: {passwd}");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata("/var/lib/bootfarm").unwrap().uid(), uid, "/var/lib/bootfarm must belong to bootfarm");
    assert!(Path::new("/srv/bootfarm/boot").is_dir() && Path::new("/srv/bootfarm/vdisks").is_dir());
    let config_ok = sh(Command::new("/usr/bin/bootfarm").args(["config", "check", "/etc/bootfarm/bootfarm.toml"]));
    assert!(config_ok.contains("valid"), "{config_ok}");

    // 3. The unit as systemd reads it (man pages looked up only where man is installed).
    let mut verify = Command::new("systemd-analyze");
    verify.arg("verify");
    if Command::new("man").arg("--version").output().is_err() {
        verify.arg("--man=no");
    }
    let v = verify.arg(UNIT).output().expect("systemd-analyze (package systemd; .ci/run installs it)");
    let v_text = String::from_utf8_lossy(&v.stdout).into_owned() + &String::from_utf8_lossy(&v.stderr);
    assert!(v.status.success() && !v_text.contains("bootfarm.service"), "systemd-analyze verify:\n{v_text}");
    let unit = std::fs::read_to_string(UNIT).unwrap();
    assert_eq!(unit_value(&unit, "Type"), "notify");
    assert_eq!(unit_value(&unit, "ExecReload"), "/bin/kill -HUP $MAINPID");

    // 4. The packaged ExecStart as the packaged user, told to a NOTIFY_SOCKET.
    let boot = b"bootfarm packaged bootstrap\n".repeat(100);
    std::fs::write("/srv/bootfarm/boot/hello.bin", &boot).unwrap();
    let dir = common::TempDir::new("package");
    let sock = dir.join("notify.sock");
    let mut manager = Manager { socket: UnixDatagram::bind(&sock).unwrap(), seen: Vec::new() };
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();

    let mut svc = start_service(&unit, &sock);
    let ready = manager.expect("READY=1");
    assert!(ready.contains("STATUS=generation 1"), "{ready}");
    let pid = svc.id();
    // It serves: TFTP on port 69 (as a user, through the ambient capability) and HTTP.
    let got = inside(pid, &["curl", "-sS", "--max-time", "10", "-o", "-", "tftp://127.0.0.1:69/hello.bin"]);
    assert!(got == boot, "TFTP gave {} bytes, not the {} of hello.bin", got.len(), boot.len());
    let health = String::from_utf8(inside(pid, &["curl", "-sS", "--max-time", "10", "http://127.0.0.1:8080/healthz"])).unwrap();
    assert!(health.starts_with("ok\n") && health.contains("generation 1"), "{health}");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(status.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some(&uid.to_string())), "{status}");
    assert!(status.lines().any(|l| l == "CapEff:\t0000000000000400"), "only CAP_NET_BIND_SERVICE: {status}");
    assert!(status.lines().any(|l| l == "NoNewPrivs:\t1") && status.lines().any(|l| l == "Seccomp:\t2"), "{status}");

    // The packaged doctor beside the running service (in its namespace): its ports are served
    // by bootfarm, the packaged configuration is valid; at most warnings (this machine's hard
    // open-file limit may be below the default limits' need).
    let out = Command::new("nsenter").args(["-t", &pid.to_string(), "-n", "--", "/usr/bin/bootfarm", "doctor"]).output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(matches!(out.status.code(), Some(0 | 1)), "doctor found errors:\n{report}");
    for want in [
        "tcp/8080 (server.http_port) is served by bootfarm",
        "udp/69 (server.tftp_port) is served by bootfarm",
        "/etc/bootfarm/bootfarm.toml: valid",
    ] {
        assert!(report.contains(want), "doctor: no {want:?} in:\n{report}");
    }

    // systemctl reload = ExecReload = SIGHUP.
    unsafe { libc::kill(pid as i32, libc::SIGHUP) };
    let reloading = manager.expect("RELOADING=1");
    assert!(reloading.lines().any(|l| l.starts_with("MONOTONIC_USEC=")), "{reloading}");
    let reloaded = manager.expect("READY=1");
    assert!(reloaded.contains("STATUS=generation 2"), "{reloaded}");
    let health = String::from_utf8(inside(pid, &["curl", "-sS", "--max-time", "10", "http://127.0.0.1:8080/healthz"])).unwrap();
    assert!(health.contains("generation 2"), "{health}");

    // systemctl stop = SIGTERM: STOPPING=1, then a drained exit 0.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    manager.expect("STOPPING=1");
    let exit = wait_exit(&mut svc, Duration::from_secs(30));
    assert!(exit.success(), "the service exited with {exit}");

    // 5. dpkg -r stops a running instance (prerm) and leaves no process of the user.
    let mut svc = start_service(&unit, &sock);
    manager.expect("READY=1");
    sh(Command::new("dpkg").args(["-r", "bootfarm"]));
    let exit = wait_exit(&mut svc, Duration::from_secs(5));
    assert!(exit.success(), "dpkg -r: the service was not drained ({exit})");
    assert!(processes_of(uid).is_empty(), "after dpkg -r: {:?}", processes_of(uid));
    assert!(!Path::new("/usr/bin/bootfarm").exists() && !Path::new(UNIT).exists());
    assert!(Path::new("/etc/bootfarm/bootfarm.toml").exists(), "dpkg -r keeps conffiles");
    sh(Command::new("dpkg").args(["-P", "bootfarm"]));
    assert!(!Path::new("/etc/bootfarm/bootfarm.toml").exists() && !Path::new("/var/lib/bootfarm").exists());
    let _ = std::fs::remove_file("/srv/bootfarm/boot/hello.bin");
    for d in ["/srv/bootfarm/boot", "/srv/bootfarm/vdisks", "/srv/bootfarm"] {
        let _ = std::fs::remove_dir(d); // only if empty: never an admin's images
    }
}

/// The same notifications from a plain `bootfarm serve` (no package, no root): READY with the
/// generation, a refused reload still answered by READY (systemd leaves "reloading" only on
/// READY=1) with the generation kept, a good one with the next, STOPPING at SIGTERM; every
/// RELOADING=1 is followed by its READY=1.
#[test]
fn serve_tells_the_service_manager_ready_reloading_and_stopping() {
    let dir = common::TempDir::new("notify-serve");
    std::fs::create_dir_all(dir.join("boot")).unwrap();
    let file = dir.join("bootfarm.toml");
    let good = |name: &str| {
        format!(
            "[server]\nname = \"{name}\"\ntftp_port = {}\nhttp_port = {}\nnbd_port = {}\n[tftp]\nroot = \"boot\"\n",
            common::free_port(),
            common::free_port(),
            common::free_port()
        )
    };
    std::fs::write(&file, good("node1")).unwrap();
    let sock = dir.join("notify.sock");
    let mut manager = Manager { socket: UnixDatagram::bind(&sock).unwrap(), seen: Vec::new() };
    let mut cmd = Command::new(common::bin());
    cmd.env("NOTIFY_SOCKET", &sock).args(["serve", "--config", file.to_str().unwrap()]);
    let mut server = common::Server::start_with(&mut cmd);
    let ready = manager.expect("READY=1");
    assert_eq!(ready, "READY=1\nSTATUS=generation 1");

    // A bad file: refused, generation 1 keeps serving, and systemd hears the reload end.
    std::fs::write(&file, "[server]\nlisten = \"not-an-ip\"\n[tftp]\nroot = \"boot\"\n").unwrap();
    server.signal(libc::SIGHUP);
    let refused = manager.expect("STATUS=generation 1 (last reload refused)");
    assert!(refused.starts_with("READY=1\n"), "{refused}");
    server.wait_for("server.listen = \"not-an-ip\": not an IP address");

    std::fs::write(&file, good("node1")).unwrap();
    server.signal(libc::SIGHUP);
    let reloaded = manager.expect("STATUS=generation 2");
    assert!(reloaded.starts_with("READY=1\n"), "{reloaded}");

    server.signal(libc::SIGTERM);
    manager.expect("STOPPING=1");
    let exit = wait_exit(&mut server.child, Duration::from_secs(30));
    assert!(exit.success(), "{exit}");
    // RELOADING=1 and READY=1 alternate: systemd never stays in "reloading".
    let kinds: Vec<&str> = manager.seen.iter().map(|m| m.lines().next().unwrap()).collect();
    let mut reloading = false;
    for k in &kinds {
        match *k {
            "RELOADING=1" => {
                assert!(!reloading, "two RELOADING=1 without a READY=1 between: {kinds:?}");
                reloading = true;
            }
            "READY=1" => reloading = false,
            _ => {}
        }
    }
    assert!(!reloading && kinds.iter().filter(|k| **k == "RELOADING=1").count() >= 2, "{kinds:?}");
}
