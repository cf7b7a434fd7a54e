//! `bootstorm dhcp` on a real L2 segment (network namespaces: a bridge, a server, the clients;
//! root needed, skipped with the reason otherwise): a storm of every client kind against
//! bootfarm's ProxyDHCP completes with one answer per request, the same storm against dnsmasq's
//! proxy mode (the peer) completes for the kinds it serves, and the kinds it ignores are
//! reported as failures, not hidden.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The workspace's bootfarm binary, built alongside this test.
fn bootfarm_bin() -> PathBuf {
    let me = std::env::current_exe().unwrap();
    let b = me.parent().unwrap().parent().unwrap().join("bootfarm");
    if !b.exists() {
        let st = Command::new(env!("CARGO")).args(["build", "-q", "-p", "bootfarm", "--bin", "bootfarm"]).status().unwrap();
        assert!(st.success());
    }
    b
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip (iproute2)");
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// br (bridge), srv at 10.79.0.2 and cli at 10.79.0.10, removed (with the servers) on drop.
struct Segment {
    ns: String,
    dir: PathBuf,
    children: Vec<Child>,
}

impl Segment {
    fn new() -> Result<Segment, String> {
        let ns = format!("bsdhcp-{}", std::process::id());
        let probe = Command::new("ip").args(["netns", "add", &format!("{ns}-br")]).output().expect("ip (iproute2)");
        if !probe.status.success() {
            let err = String::from_utf8_lossy(&probe.stderr).into_owned();
            if err.contains("Operation not permitted") || err.contains("Permission denied") {
                return Err(format!("cannot create a network namespace ({}): needs root", err.trim()));
            }
            panic!("ip netns add: {err}");
        }
        let dir = std::env::temp_dir().join(format!("{ns}-files"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("boot")).unwrap();
        let s = Segment { ns: ns.clone(), dir, children: vec![] };
        ip(&["-n", &format!("{ns}-br"), "link", "add", "br0", "type", "bridge", "stp_state", "0", "forward_delay", "0"]);
        ip(&["-n", &format!("{ns}-br"), "link", "set", "br0", "up"]);
        for (name, last) in [("srv", 2), ("cli", 10)] {
            let h = format!("{ns}-{name}");
            ip(&["netns", "add", &h]);
            ip(&["-n", &format!("{ns}-br"), "link", "add", &format!("v{name}"), "type", "veth", "peer", "name", "eth0", "netns", &h]);
            ip(&["-n", &format!("{ns}-br"), "link", "set", &format!("v{name}"), "master", "br0", "up"]);
            ip(&["-n", &h, "link", "set", "lo", "up"]);
            ip(&["-n", &h, "addr", "add", &format!("10.79.0.{last}/24"), "dev", "eth0"]);
            ip(&["-n", &h, "link", "set", "eth0", "up"]);
            ip(&["-n", &h, "route", "add", "255.255.255.255/32", "dev", "eth0"]);
        }
        Ok(s)
    }

    fn in_ns(&self, which: &str, program: &std::path::Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &format!("{}-{which}", self.ns)]).arg(program);
        c
    }

    fn port67_bound(&self) -> bool {
        let out = Command::new("ip").args(["netns", "exec", &format!("{}-srv", self.ns), "ss", "-Hlun"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).lines().any(|l| l.split_whitespace().nth(3).is_some_and(|a| a.ends_with(":67")))
    }

    /// Starts a server in srv and waits (10 s at most) for its port 67.
    fn serve(&mut self, mut cmd: Command) {
        let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(10) {
            if let Some(st) = child.try_wait().unwrap() {
                let mut err = String::new();
                std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
                panic!("the server exited ({st}) before answering: {err}");
            }
            if self.port67_bound() {
                self.children.push(child);
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("the server did not bind UDP 67 within 10 s");
    }

    /// Kills the servers and waits (10 s at most) until port 67 is free again: a killed
    /// io_uring process's sockets close only when the kernel has torn its rings down, a moment
    /// after the process is gone.
    fn stop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.children.clear();
        let t0 = Instant::now();
        while self.port67_bound() {
            assert!(t0.elapsed() < Duration::from_secs(10), "port 67 still bound 10 s after the server was killed");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs `bootstorm dhcp ARGS` in cli: (exit status, stdout, the JSON report).
    fn storm(&self, args: &[&str]) -> (Option<i32>, String, String) {
        let json = self.dir.join("out.json");
        let _ = std::fs::remove_file(&json);
        let out = self
            .in_ns("cli", std::path::Path::new(env!("CARGO_BIN_EXE_bootstorm")))
            .arg("dhcp")
            .args(args)
            .arg("--json")
            .arg(&json)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        (out.status.code(), text, std::fs::read_to_string(&json).unwrap_or_default())
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        self.stop();
        for n in ["srv", "cli", "br"] {
            let _ = Command::new("ip").args(["netns", "del", &format!("{}-{n}", self.ns)]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The number after `"key": ` in a flat JSON text.
fn field(json: &str, key: &str) -> f64 {
    let at = json.find(&format!("\"{key}\": ")).unwrap_or_else(|| panic!("no {key} in {json}")) + key.len() + 4;
    json[at..].split([',', '}']).next().unwrap().trim().parse().unwrap()
}

#[test]
fn a_pxe_storm_against_bootfarm_and_dnsmasq_proxy() {
    let mut seg = match Segment::new() {
        Ok(s) => s,
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    std::fs::write(seg.dir.join("boot/undionly.kpxe"), b"nbp").unwrap();
    std::fs::write(seg.dir.join("boot/ipxe.efi"), b"efi").unwrap();
    let cfg = seg.dir.join("bootfarm.toml");
    std::fs::write(
        &cfg,
        "[server]\nlisten = \"10.79.0.2\"\ntftp_port = 69\nhttp_port = 8080\nnbd_port = 10809\nworkers = 1\n[tftp]\nroot = \"boot\"\n[pxe]\nenabled = true\n",
    )
    .unwrap();
    let mut bf = seg.in_ns("srv", &bootfarm_bin());
    bf.args(["serve", "--iscsi-port", "0", "--config"]).arg(&cfg);
    seg.serve(bf);
    // Every kind, 200 clients within 200 ms: every one answered usably, once per request; the
    // UEFI quarter through 4011.
    let (code, text, json) = seg.storm(&["--clients", "200", "--arrival-ms", "200", "--kinds", "bios,uefi,http,ipxe"]);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(field(&json, "completed"), 200.0, "{text}");
    assert_eq!(field(&json, "extra_answers"), 0.0, "{text}");
    assert_eq!(field(&json, "via_4011"), 50.0, "{text}");
    assert!(field(&json, "p99") > 0.0, "{text}");
    seg.stop();
    // The peer: dnsmasq's proxy mode answers BIOS clients with a boot menu (then 4011) and UEFI
    // clients without 43 (then 4011): every client of the kinds it serves, in two exchanges.
    let mut dm = seg.in_ns("srv", std::path::Path::new("/usr/sbin/dnsmasq"));
    dm.args(["--keep-in-foreground", "--port=0", "--interface=eth0", "--bind-interfaces", "--user=root", "--group=root"])
        .args(["--dhcp-range=10.79.0.0,proxy", "--pxe-service=x86PC,boot,undionly", "--pxe-service=X86-64_EFI,boot,ipxe.efi"])
        .args(["--no-resolv", "--no-hosts", "--log-facility=/dev/null"])
        .arg(format!("--pid-file={}", seg.dir.join("dnsmasq.pid").display()));
    seg.serve(dm);
    let (code, text, json) = seg.storm(&["--clients", "200", "--arrival-ms", "200", "--kinds", "bios,uefi"]);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(field(&json, "completed"), 200.0, "{text}");
    assert_eq!(field(&json, "via_4011"), 200.0, "{text}");
    // HTTP Boot clients get nothing from dnsmasq: reported as failures after the bounded tries.
    let (code, text, json) = seg.storm(&["--clients", "10", "--kinds", "http", "--tries", "2", "--retry-ms", "200"]);
    assert_eq!(code, Some(1), "{text}");
    assert_eq!(field(&json, "completed"), 0.0, "{text}");
    assert!(text.contains("10 no usable answer"), "{text}");
}
