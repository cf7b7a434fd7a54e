//! The operator's console against the running binary: the page and its assets, /api/status,
//! the event stream through the engine's TCP driver (curl reads events for a while; the
//! stream limit answers 503 beyond it), the token-guarded drain seen by /healthz; and
//! contrib/: every series the Grafana dashboard and the Prometheus alerts name is one a
//! node exports, and the alert rules pass `promtool check rules` and their own
//! `promtool test rules` cases.

mod common;
use common::*;
use std::process::Command;
use std::time::{Duration, Instant};

const TOKEN: &str = "console-test-token-0123";

fn start(dir: &TempDir, extra: &str) -> (Server, u16) {
    std::fs::create_dir_all(dir.join("boot")).unwrap();
    std::fs::write(dir.join("boot/boot.bin"), pattern(1, 0, 4096)).unwrap();
    let disk = dir.join("disk.vhdx");
    assert!(bootfarm(&["vdisk", "create", disk.to_str().unwrap(), "--size", "8M"]).status.success());
    let port = free_port();
    let cfg = format!(
        "[server]\nname = \"node1\"\ntftp_port = {}\nhttp_port = {port}\nnbd_port = {}\nworkers = 2\n[tftp]\nroot = \"boot\"\n{extra}\n[[vdisk]]\nname = \"win10\"\npath = \"disk.vhdx\"\n",
        free_port(),
        free_port()
    );
    std::fs::write(dir.join("bootfarm.toml"), cfg).unwrap();
    (Server::start(&["--config", dir.join("bootfarm.toml").to_str().unwrap()]), port)
}

fn curl(args: &[&str]) -> (String, String) {
    let o = Command::new("curl").args(["-sS"]).args(args).output().expect("curl (Debian package curl)");
    (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

#[test]
fn the_console_streams_the_status_and_drains_only_with_its_token() {
    let dir = TempDir::new("console");
    let (server, port) = start(&dir, &format!("[console]\ntoken = \"{TOKEN}\"\nevents_max = 2\nevent_interval_ms = 200\n"));
    let base = format!("http://127.0.0.1:{port}");
    let (page, _) = curl(&["-i", &format!("{base}/")]);
    assert!(page.starts_with("HTTP/1.1 200") && page.contains("text/html") && page.contains("/console.js"), "{page}");
    for (asset, kind) in [("console.js", "text/javascript"), ("console.css", "text/css")] {
        let (a, _) = curl(&["-i", &format!("{base}/{asset}")]);
        assert!(a.starts_with("HTTP/1.1 200") && a.contains(kind), "{asset}: {}", &a[..a.len().min(300)]);
    }
    let (status, _) = curl(&[&format!("{base}/api/status")]);
    for want in ["\"node\": \"node1\"", "\"name\": \"win10\"", "\"servers\": [", "\"targets\": [", "\"recent\": [", "\"totals\": {"] {
        assert!(status.contains(want), "{want} in {status}");
    }
    // Each vdisk says plainly what a failover to another node does to its targets' writes.
    assert!(
        status.contains("\"mode\": \"standard\"")
            && status.contains("\"failover\": \"lost: the writes are in the serving node's write cache; another node has no copy"),
        "{status}"
    );
    // Two streams read for 3 s each (the limit is 2): events every 200 ms, each one line
    // of JSON; a third stream meanwhile is refused with 503.
    let streams: Vec<std::process::Child> = (0..2)
        .map(|_| {
            Command::new("curl")
                .args(["-sSN", "--max-time", "3", &format!("{base}/api/events")])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    wait_until("two event streams open", 10, || curl(&[&format!("{base}/api/status")]).0.contains("\"events_open\": 2"));
    let (third, _) = curl(&["-i", "--max-time", "2", &format!("{base}/api/events")]);
    assert!(third.starts_with("HTTP/1.1 503"), "{third}");
    for s in streams {
        let out = String::from_utf8_lossy(&s.wait_with_output().unwrap().stdout).into_owned();
        assert!(out.starts_with("retry: 2000\n\n"), "{out}");
        let events = out.lines().filter(|l| l.starts_with("data: {\"node\": \"node1\"")).count();
        let keepalives = out.lines().filter(|l| *l == ": keep-alive").count();
        // The first event at once, then one per 200 ms: a full document when it changed
        // (events_open moved), a keep-alive comment when not.
        assert!(events >= 1 && events + keepalives >= 6, "{events} events, {keepalives} keep-alives:\n{out}");
    }
    // curl left: both slots come back.
    wait_until("event streams closed", 10, || curl(&[&format!("{base}/api/status")]).0.contains("\"events_open\": 0"));
    // The drain: refused without the token, then done with it; the farm sees it in /healthz.
    let (refused, _) = curl(&["-i", "-X", "POST", &format!("{base}/api/drain")]);
    assert!(refused.starts_with("HTTP/1.1 403"), "{refused}");
    let (wrong, _) = curl(&["-i", "-X", "POST", "-H", "Authorization: Bearer nope-nope-nope-nope", &format!("{base}/api/drain")]);
    assert!(wrong.starts_with("HTTP/1.1 403"), "{wrong}");
    assert!(curl(&[&format!("{base}/healthz")]).0.starts_with("ok\n"));
    let auth = format!("Authorization: Bearer {TOKEN}");
    let (ok, _) = curl(&["-i", "-X", "POST", "-H", &auth, &format!("{base}/api/drain")]);
    assert!(ok.starts_with("HTTP/1.1 200") && ok.contains("\"drained\": true"), "{ok}");
    assert!(curl(&[&format!("{base}/healthz")]).0.starts_with("draining\n"), "peers see the node draining");
    assert!(curl(&[&format!("{base}/metrics")]).0.contains("bootfarm_console_drained 1\n"));
    let (_, _) = curl(&["-X", "POST", "-H", &auth, &format!("{base}/api/resume")]);
    assert!(curl(&[&format!("{base}/healthz")]).0.starts_with("ok\n"));
    assert!(server.log().contains("console action: /api/drain"));
}

/// Metric names (`bootfarm_...`) in a text, histogram suffixes folded into their family.
fn names(text: &str) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let b = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("bootfarm_") {
        let s = i + at;
        let mut e = s;
        while e < b.len() && (b[e].is_ascii_lowercase() || b[e].is_ascii_digit() || b[e] == b'_') {
            e += 1;
        }
        let n = &text[s..e];
        out.insert(n.strip_suffix("_bucket").unwrap_or(n).to_string());
        i = e;
    }
    out
}

#[test]
fn every_series_of_the_dashboard_and_the_alerts_is_exported() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dashboard = std::fs::read_to_string(root.join("contrib/grafana/bootfarm.json")).unwrap();
    let rules = std::fs::read_to_string(root.join("contrib/prometheus/bootfarm-alerts.yml")).unwrap();
    // The dashboard is JSON Grafana can import (Python's parser is as strict).
    let o = Command::new("python3")
        .args(["-c", "import json,sys; d=json.load(open(sys.argv[1])); assert d['panels'] and all(p['targets'] for p in d['panels'])"])
        .arg(root.join("contrib/grafana/bootfarm.json"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let dir = TempDir::new("console-metrics");
    let (_server, port) = start(&dir, "");
    let url = format!("http://127.0.0.1:{port}/metrics");
    // The replica gauge appears once this node has hashed its copy.
    let t0 = Instant::now();
    let mut metrics = String::new();
    while t0.elapsed() < Duration::from_secs(20) {
        metrics = curl(&[&url]).0;
        if metrics.contains("bootfarm_farm_replica_match{") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let exported: std::collections::BTreeSet<String> = metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(|n| n.strip_suffix("_bucket").unwrap_or(n).to_string())
        .collect();
    assert!(metrics.contains("bootfarm_farm_server_up{server=\"node1\"} 1\n"), "{metrics}");
    assert!(metrics.contains("bootfarm_farm_replica_match{server=\"node1\",vdisk=\"win10\"} 1\n"), "{metrics}");
    for (what, text) in [("contrib/grafana/bootfarm.json", &dashboard), ("contrib/prometheus/bootfarm-alerts.yml", &rules)] {
        let used = names(text);
        assert!(used.len() > 5, "{what}: {used:?}");
        let missing: Vec<&String> = used.iter().filter(|n| !exported.contains(*n)).collect();
        assert!(missing.is_empty(), "{what} names series no node exports: {missing:?}");
    }
}

#[test]
fn the_alert_rules_pass_promtool() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/prometheus");
    for args in [&["check", "rules", "bootfarm-alerts.yml"][..], &["test", "rules", "bootfarm-alerts.test.yml"]] {
        let o = Command::new("promtool")
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("promtool (Debian package prometheus; .ci/run installs it)");
        assert!(o.status.success(), "promtool {args:?}:\n{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    }
}
