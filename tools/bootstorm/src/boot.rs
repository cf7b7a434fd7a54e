//! `bootstorm boot`: whole simulated boots. Each target runs a boot profile through real
//! protocols:
//!   1. bootstrap: a file over TFTP (the sans-IO client of the bootfarm crate, with client-side
//!      loss/duplication/reordering) or HTTP (`/boot/<file>`);
//!   2. optionally the generated iPXE script (`/ipxe?mac=…`), whose server list becomes the
//!      target's failover order;
//!   3. the vDisk phase: a boot trace (the built-in Windows-like profile scaled by `--scale`, or a
//!      CSV trace `offset,length,op`) replayed over NBD (export `vdisk@mac`, so each target has
//!      its own write cache) or HTTP ranges (reads only: iPXE's HTTP SAN is read-only).
//!
//! Every byte read is checked: against the local image (`--image`, read with the bootfarm
//! image code) or against what the target itself wrote there. A target that saw one wrong
//! byte is "corrupted", never booted. When a server stops answering, the target moves to the
//! next one of its list and the time lost is recorded; the writes it had made stayed in the
//! old server's write cache, so such a boot ends "writes lost" (and a read of them that
//! differs, "corrupted"): never a success.
//!
//! Targets run on a pool of `--concurrency` threads, started by the arrival pattern, which keeps
//! each boot's phases in order as on a real machine. The TFTP bootstrap and the NBD vDisk phase
//! and the HTTP phases (bootstrap, iPXE script, ranges on one keep-alive connection, as iPXE)
//! are handed to io_uring engines (one thread per core each: `uring_tftp.rs`, `uring.rs`,
//! `uring_http.rs`) while the target's thread sleeps.

use crate::phases::{load_trace, own_areas, trace_span, windows_profile, DiskRun, Fail, Io};
use crate::report::{self, Phase};
use crate::uring;
use crate::uring_disk;
use crate::uring_http;
use crate::uring_iscsi;
use bootfarm::image::{Chain, ChainLimits};
use bootfarm::rng::XorShift;
use bootfarm::tftp::client::{Client, Outcome, Request};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(clap::Args, Clone)]
pub struct Args {
    /// HTTP address of a bootfarm (for `--bootstrap http`, `--ipxe` and `--disk http`).
    #[arg(long, default_value = "127.0.0.1:8080")]
    http: SocketAddr,
    /// TFTP address (for `--bootstrap tftp`).
    #[arg(long, default_value = "127.0.0.1:69")]
    tftp: SocketAddr,
    /// NBD address (for `--disk nbd`), or several, comma-separated, as a failover list.
    #[arg(long, default_value = "127.0.0.1:10809", value_delimiter = ',')]
    nbd: Vec<SocketAddr>,
    /// iSCSI portal (for `--disk iscsi`), or several, comma-separated, as a failover list.
    #[arg(long, default_value = "127.0.0.1:3260", value_delimiter = ',')]
    iscsi: Vec<SocketAddr>,
    /// iSCSI target IQN prefix: the target is PREFIX:VDISK (bootfarm's `iscsi.iqn_prefix`).
    #[arg(long, default_value = "iqn.2026-12.org.bootfarm")]
    iqn_prefix: String,
    /// iSCSI LUN of the vdisk (bootfarm: 0; tgt: 1, its LUN 0 is the controller).
    #[arg(long, default_value_t = 0)]
    lun: u64,
    /// tftp | http | none
    #[arg(long, default_value = "tftp")]
    bootstrap: String,
    /// Bootstrap file name (TFTP) or path under /boot/ (HTTP).
    #[arg(long, default_value = "")]
    file: String,
    /// Local copy of the bootstrap file: every received byte is checked against it.
    #[arg(long)]
    expect: Option<PathBuf>,
    #[arg(long)]
    blksize: Option<u16>,
    #[arg(long)]
    windowsize: Option<u16>,
    /// Fetch /ipxe?mac=… and follow its server list (HTTP disk and failover).
    #[arg(long)]
    ipxe: bool,
    /// nbd | iscsi | http | none (iSCSI: initiator name iqn.2026-12.org.bootstorm:<mac as hex>,
    /// so each target has its own write cache, or the script's `set initiator-iqn` with --ipxe)
    #[arg(long, default_value = "nbd")]
    disk: String,
    /// vdisk name (NBD export, /vdisk/<name>).
    #[arg(long, default_value = "")]
    vdisk: String,
    /// The vdisk's image (newest version): expected bytes for every read.
    #[arg(long)]
    image: Option<PathBuf>,
    /// Built-in profile: a Windows-like boot (~560 MB read, ~70,000 I/Os, 65% reads) times this.
    #[arg(long, default_value_t = 0.01)]
    scale: f64,
    /// A boot trace to replay instead: CSV lines `offset,length,op` (op r or w, 4 KiB aligned).
    #[arg(long)]
    trace: Option<PathBuf>,
    /// NBD export name: per-target (`vdisk@mac`, bootfarm's write cache per target) or shared
    /// (`vdisk` as is, for peers without per-target caches; writes then go to per-target areas).
    #[arg(long, default_value = "per-target")]
    export: String,
    /// With --trace: each target's writes (and its reads of blocks it wrote) go to its own area
    /// past the trace's span (target i at (1 + i) x span), for servers that share one write
    /// overlay between all targets (qemu-nbd --snapshot); the image must hold (targets + 1) x
    /// span. Give it to every server of a comparison: they then serve the same requests.
    #[arg(long)]
    own_areas: bool,
    /// Boots to run in all (each a new target); `--boots` is the same bound.
    #[arg(long, alias = "boots", default_value_t = 100)]
    targets: u64,
    /// Targets booting at once (threads); default all (a storm), at most 4096.
    #[arg(long)]
    concurrency: Option<u64>,
    /// storm (all at once) | ramp:SECONDS (starts spread evenly) | rate:PER_SECOND
    #[arg(long, default_value = "storm")]
    arrival: String,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// TFTP phase: client-side packet faults.
    #[command(flatten)]
    faults: crate::tftp::Faults,
    /// Per-request timeout (TFTP retransmission, TCP reads) in ms.
    #[arg(long, default_value_t = 2000)]
    timeout_ms: u64,
    /// Stop waiting after this long (`--duration` is the same bound); targets not done count
    /// as timed out.
    #[arg(long, alias = "duration", default_value_t = 300)]
    duration_max_s: u64,
    /// Print progress every second on stderr (default: when stderr is a terminal).
    #[arg(long)]
    progress: bool,
    /// Leave the engine threads unpinned. By default engine thread k runs on the k-th CPU this
    /// process may use, and each target's phases all run on one thread: against a server that
    /// steers flows by CPU (bootfarm's `server.steer = "cpu"`) a target's packets then stay on
    /// one core.
    #[arg(long)]
    no_pin: bool,
    #[arg(long)]
    json: Option<PathBuf>,
    #[arg(long)]
    html: Option<PathBuf>,
}

#[derive(Default)]
struct Live {
    started: AtomicU64,
    booted: AtomicU64,
    failed: AtomicU64,
}

struct Results {
    bootstrap: Phase,
    ipxe: Phase,
    disk: Phase,
    boot: Phase,
    failovers: u64,
    failover_lost: Duration,
    /// Written blocks left behind on a server the target failed over from.
    writes_lost: u64,
}

/// Maps the image's pages in before the storm, when the files fit in half of the memory
/// available: the storm's reads are checked against most of the image, and a page fault per
/// first touch cost the client CPU while the server was measured (NBD storm, 3 alternating
/// pairs: 257-270 boots/s with this, 210-244 without). A larger image faults in as it is read.
fn prefault(c: &Chain) {
    let avail = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().find(|l| l.starts_with("MemAvailable:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok()))
        .map_or(0, |kib| kib * 1024);
    if c.file_bytes() <= avail / 2 {
        c.populate();
    }
}

pub fn run(a: Args) -> Result<bool, String> {
    let chain = match &a.image {
        Some(p) => Some(Chain::open(p, ChainLimits::default()).map_err(|e| e.to_string())?),
        None => None,
    };
    if let Some(c) = &chain {
        prefault(c);
    }
    let expect_boot: Option<Vec<u8>> = match &a.expect {
        Some(p) => Some(std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?),
        None => None,
    };
    if a.disk != "none" && a.vdisk.is_empty() {
        return Err("--vdisk NAME is needed for the vDisk phase (or --disk none)".into());
    }
    if a.bootstrap != "none" && a.file.is_empty() {
        return Err("--file NAME is needed for the bootstrap phase (or --bootstrap none)".into());
    }
    let disk_size = match (&chain, a.disk.as_str()) {
        (Some(c), _) => c.virtual_size(),
        (None, "none") => 0,
        (None, _) => return Err("--image PATH is needed to know the disk and check its bytes".into()),
    };
    let trace = match &a.trace {
        Some(p) => Some(load_trace(p, disk_size)?),
        None => None,
    };
    if let Some(t) = &trace {
        let need = (a.targets + 1) * trace_span(t);
        if a.own_areas && need > disk_size {
            return Err(format!(
                "--own-areas with {} targets needs an image of at least {need} bytes (this one has {disk_size})",
                a.targets
            ));
        }
        if a.export == "shared" && !a.own_areas {
            return Err("--export shared with --trace needs --own-areas: the targets would read each other's writes".into());
        }
    }
    let conc = a.concurrency.unwrap_or(a.targets).clamp(1, 4096);
    // A target holds its bootstrap socket or its vDisk connection, and briefly both.
    report::open_files_for(conc, 2);
    let start_at = arrival(&a.arrival, a.targets)?;
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(a.duration_max_s);
    let next = AtomicU64::new(0);
    let live = Live::default();
    let results = Mutex::new(Results {
        bootstrap: Phase::new("bootstrap"),
        ipxe: Phase::new("ipxe"),
        disk: Phase::new("vdisk"),
        boot: Phase::new("boot"),
        failovers: 0,
        failover_lost: Duration::ZERO,
        writes_lost: 0,
    });
    let show = a.progress || unsafe { libc::isatty(2) } == 1;
    // One engine thread per CPU, pinned: target i's phases all run on thread i mod CPUs, so
    // its packets are sent, received and (on loopback) delivered on one core.
    let cpus: Vec<Option<usize>> = bootfarm::engine::allowed_cpus().into_iter().map(|c| (!a.no_pin).then_some(c)).collect();
    let timeout = Duration::from_millis(a.timeout_ms);
    std::thread::scope(|outer| {
        let engine = (a.disk == "nbd").then(|| uring_disk::start::<uring::Nbd>(outer, &cpus, chain.as_ref(), timeout, deadline));
        let iscsi_engine =
            (a.disk == "iscsi").then(|| uring_disk::start::<uring_iscsi::Iscsi>(outer, &cpus, chain.as_ref(), timeout, deadline));
        let tftp_engine = (a.bootstrap == "tftp")
            .then(|| crate::uring_tftp::start(outer, &cpus, expect_boot.as_deref(), a.blksize.unwrap_or(512), deadline));
        let http_engine = (a.bootstrap == "http" || a.ipxe || a.disk == "http")
            .then(|| uring_http::start(outer, &cpus, chain.as_ref(), expect_boot.as_deref(), timeout, deadline));
        std::thread::scope(|sc| {
            for _ in 0..conc {
                sc.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= a.targets {
                        return;
                    }
                    let at = t0 + start_at(i);
                    let now = Instant::now();
                    if at > now {
                        std::thread::sleep(at - now);
                    }
                    live.started.fetch_add(1, Ordering::Relaxed);
                    let r = boot_one(
                        &a,
                        i,
                        expect_boot.as_deref(),
                        trace.as_deref(),
                        disk_size,
                        t0,
                        &results,
                        Engines {
                            nbd: engine.as_ref(),
                            iscsi: iscsi_engine.as_ref(),
                            tftp: tftp_engine.as_ref(),
                            http: http_engine.as_ref(),
                        },
                    );
                    match r {
                        Ok(()) => live.booted.fetch_add(1, Ordering::Relaxed),
                        Err(_) => live.failed.fetch_add(1, Ordering::Relaxed),
                    };
                });
            }
            if show {
                sc.spawn(|| {
                    let mut last = 0;
                    while live.booted.load(Ordering::Relaxed) + live.failed.load(Ordering::Relaxed) < a.targets && Instant::now() < deadline
                    {
                        std::thread::sleep(Duration::from_secs(1));
                        let (s, b, f) = (
                            live.started.load(Ordering::Relaxed),
                            live.booted.load(Ordering::Relaxed),
                            live.failed.load(Ordering::Relaxed),
                        );
                        eprintln!(
                            "bootstorm: {:>6.1} s  booting {:>5}  booted {:>6}  failed {:>4}  boots/s {:>7.1}",
                            t0.elapsed().as_secs_f64(),
                            s - b - f,
                            b,
                            f,
                            (b - last) as f64
                        );
                        last = b;
                    }
                });
            }
        });
        drop(engine);
        drop(iscsi_engine);
        drop(tftp_engine);
        drop(http_engine);
    });
    let wall = t0.elapsed();
    let client_cpu_ms = report::own_cpu_ms();
    let r = results.into_inner().unwrap();
    let phases: Vec<&Phase> = [&r.bootstrap, &r.ipxe, &r.disk, &r.boot].into_iter().filter(|p| p.completed + p.failed() > 0).collect();
    for p in &phases {
        print!("{}", p.text(wall));
    }
    println!(
        "boots: {} of {} in {:.3} s = {:.1} boots/s; failovers {} ({} ms lost in all, {} written blocks left behind); bootstorm CPU {:.0} ms",
        r.boot.completed,
        a.targets,
        wall.as_secs_f64(),
        r.boot.completed as f64 / wall.as_secs_f64(),
        r.failovers,
        r.failover_lost.as_millis(),
        r.writes_lost,
        client_cpu_ms
    );
    let context = format!(
        "{} targets ({} at once, arrival {}), bootstrap {} {}, iPXE script {}, vDisk {} over {} ({}), seed {}",
        a.targets,
        conc,
        a.arrival,
        a.bootstrap,
        a.file,
        a.ipxe,
        a.vdisk,
        a.disk,
        match &a.trace {
            Some(t) => format!("trace {}{}", t.display(), if a.own_areas { " (own areas)" } else { "" }),
            None => format!("Windows-like profile x {}", a.scale),
        },
        a.seed
    );
    if let Some(j) = &a.json {
        let body = format!(
            "{{\"tool\": \"bootstorm\", \"command\": \"boot\", \"context\": \"{}\", \"targets\": {}, \"concurrency\": {conc}, \"seconds\": {:.6}, \"boots_per_second\": {:.3}, \"failovers\": {}, \"failover_lost_ms\": {}, \"writes_lost_blocks\": {}, \"client_cpu_ms\": {client_cpu_ms:.0}, \"phases\": [{}]}}\n",
            context.replace('"', "'"),
            a.targets,
            wall.as_secs_f64(),
            r.boot.completed as f64 / wall.as_secs_f64(),
            r.failovers,
            r.failover_lost.as_millis(),
            r.writes_lost,
            phases.iter().map(|p| p.json(wall)).collect::<Vec<_>>().join(", ")
        );
        std::fs::write(j, body).map_err(|e| format!("{}: {e}", j.display()))?;
    }
    if let Some(h) = &a.html {
        std::fs::write(h, report::page(&phases, wall, &context)).map_err(|e| format!("{}: {e}", h.display()))?;
    }
    Ok(r.boot.completed == a.targets)
}

/// Start offset of target `i` after the storm starts.
fn arrival(spec: &str, n: u64) -> Result<Box<dyn Fn(u64) -> Duration + Sync>, String> {
    let bad = || format!("--arrival {spec:?}: want storm, ramp:SECONDS or rate:PER_SECOND");
    Ok(match spec.split_once(':') {
        None if spec == "storm" => Box::new(|_| Duration::ZERO),
        Some(("ramp", s)) => {
            let s: f64 = s.parse().map_err(|_| bad())?;
            Box::new(move |i| Duration::from_secs_f64(s * i as f64 / n.max(1) as f64))
        }
        Some(("rate", r)) => {
            let r: f64 = r.parse().ok().filter(|r: &f64| *r > 0.0).ok_or_else(bad)?;
            Box::new(move |i| Duration::from_secs_f64(i as f64 / r))
        }
        _ => return Err(bad()),
    })
}

fn mac(seed: u64, i: u64) -> String {
    let x = (seed.wrapping_mul(0x1000193) ^ i) & 0xff_ffff;
    format!("52:54:{:02x}:{:02x}:{:02x}:{:02x}", (seed >> 8) as u8, (x >> 16) as u8, (x >> 8) as u8, x as u8)
}

#[allow(clippy::too_many_arguments)]
fn boot_one(
    a: &Args,
    i: u64,
    expect_boot: Option<&[u8]>,
    trace: Option<&[Io]>,
    disk_size: u64,
    t0: Instant,
    results: &Mutex<Results>,
    engines: Engines,
) -> Result<(), Fail> {
    let start = Instant::now();
    let m = mac(a.seed, i);
    let timeout = Duration::from_millis(a.timeout_ms);
    let record = |phase: fn(&mut Results) -> &mut Phase, began: Instant, bytes: u64, resends: u64, r: &Result<(), Fail>| {
        let mut g = results.lock().unwrap();
        let p = phase(&mut g);
        match r {
            Ok(()) => {
                p.completed += 1;
                p.bytes += bytes;
                p.resends += resends;
                let _ = p.micros.record(began.elapsed().as_micros().max(1) as u64);
                p.done_at_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
            }
            Err((_, why)) => p.fail(why),
        }
    };
    let fail_boot = |f: Fail| {
        results.lock().unwrap().boot.fail(f.1);
        Err(f)
    };
    // 1. Bootstrap.
    let b0 = Instant::now();
    let (r, bytes, resends) = match a.bootstrap.as_str() {
        "tftp" => tftp_fetch(a, i, expect_boot, timeout, engines.tftp.expect("started for --bootstrap tftp")),
        "http" => {
            let d = http_job(engines.http, i, uring_http::Kind::Bootstrap, vec![a.http], format!("/boot/{}?mac={m}", a.file));
            (d.result, d.run.bytes, 0)
        }
        _ => (Ok(()), 0, 0),
    };
    if a.bootstrap != "none" {
        record(|r| &mut r.bootstrap, b0, bytes, resends, &r);
        if let Err(f) = r {
            return fail_boot(f);
        }
    }
    // 2. The iPXE script and its server list.
    let mut http_servers = vec![a.http];
    // The initiator name the script sets (a boot token in it), else the target's own.
    let mut initiator = format!("iqn.2026-12.org.bootstorm:{}", m.replace(':', ""));
    if a.ipxe {
        let b0 = Instant::now();
        let d = http_job(engines.http, i, uring_http::Kind::Script, vec![a.http], format!("/ipxe?mac={m}&vdisk={}", a.vdisk));
        let r = d.result.map_err(|f| f.1).and_then(|()| ipxe_servers(&d.body));
        let rr = r.as_ref().map(|_| ()).map_err(|e| ("ipxe", *e));
        record(|r| &mut r.ipxe, b0, 0, 0, &rr);
        match r {
            Ok(s) => {
                http_servers = s;
                if let Some(n) = String::from_utf8_lossy(&d.body).lines().find_map(|l| l.strip_prefix("set initiator-iqn ")) {
                    initiator = n.trim().to_string();
                }
            }
            Err(e) => return fail_boot(("ipxe", e)),
        }
    }
    // 3. The vDisk phase.
    if a.disk != "none" {
        let b0 = Instant::now();
        let own;
        let ios: &[Io] = match trace {
            Some(t) if a.own_areas => {
                own = own_areas(t, i, trace_span(t));
                &own
            }
            Some(t) => t,
            None => {
                own = windows_profile(a.scale, disk_size, i, a.targets, a.seed);
                &own
            }
        };
        let servers: Vec<SocketAddr> = match a.disk.as_str() {
            "nbd" if a.ipxe => http_servers.iter().map(|s| SocketAddr::new(s.ip(), a.nbd[0].port())).collect(),
            "nbd" => a.nbd.clone(),
            // The script's sanboot iscsi: URIs name the portals themselves.
            "iscsi" if a.ipxe => http_servers.clone(),
            "iscsi" => a.iscsi.clone(),
            _ => http_servers.clone(),
        };
        let (r, st) = match (engines.nbd, engines.iscsi) {
            // iSCSI: the same, one session per target under its own initiator name.
            (_, Some(engine)) => {
                let (tx, rx) = std::sync::mpsc::sync_channel(1);
                engine.submit(
                    i,
                    uring_iscsi::Job {
                        target: i,
                        ios: ios.to_vec(),
                        servers,
                        proto: uring_iscsi::Names {
                            initiator: initiator.clone(),
                            iqn: format!("{}:{}", a.iqn_prefix, a.vdisk),
                            lun: a.lun,
                        },
                        done: tx,
                    },
                );
                rx.recv().unwrap_or((Err(("vdisk", "engine stopped")), DiskRun::default()))
            }
            // NBD: the io_uring engine replays the trace; this thread sleeps until it is done.
            (Some(engine), None) => {
                let export = if a.export == "shared" { a.vdisk.clone() } else { format!("{}@{m}", a.vdisk) };
                let (tx, rx) = std::sync::mpsc::sync_channel(1);
                engine.submit(i, uring::Job { target: i, ios: ios.to_vec(), servers, proto: export, done: tx });
                rx.recv().unwrap_or((Err(("vdisk", "engine stopped")), DiskRun::default()))
            }
            // HTTP ranges on the HTTP engine, one keep-alive connection per target.
            (None, None) => {
                let d = http_job(engines.http, i, uring_http::Kind::Disk(ios.to_vec()), servers, format!("/vdisk/{}?mac={m}", a.vdisk));
                (d.result, d.run)
            }
        };
        {
            let mut g = results.lock().unwrap();
            g.failovers += st.failovers;
            g.failover_lost += st.lost;
            g.writes_lost += st.writes_lost;
        }
        record(|r| &mut r.disk, b0, st.bytes, st.failovers, &r);
        if let Err(f) = r {
            return fail_boot(f);
        }
    }
    record(|r| &mut r.boot, start, 0, 0, &Ok(()));
    Ok(())
}

fn tftp_request(a: &Args, timeout: Duration) -> Request {
    Request {
        file: a.file.clone(),
        blksize: a.blksize,
        windowsize: a.windowsize,
        tsize: true,
        timeout: timeout.min(Duration::from_secs(1)),
        retries_max: 6,
    }
}

/// The bootstrap over TFTP on the io_uring engine; this thread waits for the result.
fn tftp_fetch(a: &Args, i: u64, expect: Option<&[u8]>, timeout: Duration, e: &crate::uring_tftp::Engine) -> (Result<(), Fail>, u64, u64) {
    let Ok(sock) = crate::uring_tftp::client_socket(a.tftp) else { return (Err(("bootstrap", "no local socket")), 0, 0) };
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let now = Instant::now();
    e.submit(
        i,
        crate::uring_tftp::Job {
            sock,
            server: a.tftp,
            client: Client::new(tftp_request(a, timeout), now),
            rng: XorShift::new(a.seed.wrapping_mul(31).wrapping_add(i)),
            faults: a.faults,
            started: now,
            done: tx,
        },
    );
    let Ok(d) = rx.recv() else { return (Err(("bootstrap", "engine stopped")), 0, 0) };
    let (bytes, resends) = (d.bytes, d.resends);
    let r = match d.outcome {
        Outcome::Done if expect.is_none_or(|x| x.len() as u64 == bytes) => Ok(()),
        Outcome::Done | Outcome::Corrupted => Err(("bootstrap", "corrupted")),
        Outcome::ServerError(_) => Err(("bootstrap", "tftp error")),
        Outcome::TimedOut | Outcome::Running => Err(("bootstrap", "tftp timed out")),
    };
    (r, bytes, resends)
}

/// The phase engines a target hands its work to.
#[derive(Clone, Copy)]
struct Engines<'a> {
    nbd: Option<&'a uring::Engine>,
    iscsi: Option<&'a uring_iscsi::Engine>,
    tftp: Option<&'a crate::uring_tftp::Engine>,
    http: Option<&'a uring_http::Engine>,
}

/// An HTTP phase on the HTTP engine; this thread waits for it.
fn http_job(e: Option<&uring_http::Engine>, i: u64, kind: uring_http::Kind, servers: Vec<SocketAddr>, path: String) -> uring_http::Done {
    let ph = kind.phase();
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    e.expect("started for the HTTP phases").submit(i, uring_http::Job { kind, servers, path, done: tx });
    rx.recv().unwrap_or_else(|_| uring_http::Done { result: Err((ph, "engine stopped")), run: DiskRun::default(), body: Vec::new() })
}

/// The servers an /ipxe script lists (from its sanboot URIs), in order.
fn ipxe_servers(body: &[u8]) -> Result<Vec<SocketAddr>, &'static str> {
    let text = String::from_utf8_lossy(body);
    let line = text.lines().find(|l| l.starts_with("sanboot ")).ok_or("script without sanboot")?;
    // http://HOST:PORT/... or iscsi:HOST:PROTOCOL:PORT:LUN:IQN (RFC 4173; no port: 3260).
    let iscsi = |u: &str| {
        let f: Vec<&str> = u.strip_prefix("iscsi:")?.splitn(4, ':').collect();
        let port = match f.get(2)? {
            &"" => 3260,
            p => p.parse().ok()?,
        };
        Some(SocketAddr::new(f[0].parse().ok()?, port))
    };
    let servers: Vec<SocketAddr> =
        line.split_whitespace().filter_map(|u| iscsi(u).or_else(|| u.strip_prefix("http://")?.split('/').next()?.parse().ok())).collect();
    if servers.is_empty() {
        return Err("script lists no server");
    }
    Ok(servers)
}
