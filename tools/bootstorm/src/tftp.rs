//! The TFTP bootstrap storm: `--targets` simulated targets, `--concurrency` at once, each with
//! its own UDP socket, run by the one TFTP client loop (`uring_tftp.rs`: an io_uring engine
//! thread per core) that `bootstorm boot` uses for its bootstrap phase. Every DATA payload is
//! compared with the expected file; a target that receives one wrong byte (or the wrong size)
//! is counted as corrupted, never as booted. Faults (--loss, --dup, --reorder) are injected on
//! the client side in both directions.

use crate::report::Phase;
use crate::uring_tftp::{self, Done, Job};
use bootfarm::rng::XorShift;
use bootfarm::tftp::client::{Client, Outcome, Request};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[derive(clap::Args, Clone)]
pub struct Args {
    /// TFTP server (address:port).
    #[arg(long, default_value = "127.0.0.1:69")]
    server: SocketAddr,
    /// File name to request.
    #[arg(long)]
    file: String,
    /// Local copy of the file: every received byte is checked against it.
    #[arg(long)]
    expect: PathBuf,
    /// Targets to boot in all (`--boots` is the same bound).
    #[arg(long, alias = "boots", default_value_t = 100)]
    targets: u64,
    /// Targets booting at once (default: all of them, a storm).
    #[arg(long)]
    concurrency: Option<u64>,
    /// blksize option (iPXE asks 1432); none = RFC 1350 512-byte blocks.
    #[arg(long)]
    blksize: Option<u16>,
    /// windowsize option (RFC 7440); none = lockstep.
    #[arg(long)]
    windowsize: Option<u16>,
    /// Do not ask for tsize.
    #[arg(long)]
    no_tsize: bool,
    #[arg(long, default_value_t = 1000)]
    timeout_ms: u64,
    #[arg(long, default_value_t = 5)]
    retries: u32,
    #[command(flatten)]
    faults: Faults,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Client threads (0 = one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Leave the client threads unpinned (by default thread k runs on the k-th CPU this
    /// process may use, so that each transfer's packets stay on one core against a server
    /// that steers flows by CPU).
    #[arg(long)]
    no_pin: bool,
    /// Stop after this long whatever remains (remaining targets count as timed out;
    /// `--duration` is the same bound).
    #[arg(long, alias = "duration", default_value_t = 120)]
    duration_max_s: u64,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write a one-page HTML report (plots included, no network needed) here.
    #[arg(long)]
    html: Option<PathBuf>,
}

/// Client-side faults on the UDP (TFTP) path, shared by `tftp` and `boot`.
#[derive(clap::Args, Clone, Copy, Debug)]
pub struct Faults {
    /// Probability of dropping each packet, in either direction.
    #[arg(long, default_value_t = 0.0)]
    pub loss: f64,
    /// Probability of delivering a received packet twice.
    #[arg(long, default_value_t = 0.0)]
    pub dup: f64,
    /// Probability of holding a received packet back behind the next one.
    #[arg(long, default_value_t = 0.0)]
    pub reorder: f64,
}

pub fn run(a: Args) -> Result<bool, String> {
    let file = std::fs::File::open(&a.expect).map_err(|e| format!("{}: {e}", a.expect.display()))?;
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    let expect: Vec<u8> = if len == 0 { Vec::new() } else { unsafe { memmap2::Mmap::map(&file) }.map_err(|e| e.to_string())?.to_vec() };
    let threads = if a.threads == 0 { std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) } else { a.threads };
    let concurrency = a.concurrency.unwrap_or(a.targets).max(1);
    crate::report::open_files_for(concurrency, 1);
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(a.duration_max_s);
    let all = bootfarm::engine::allowed_cpus();
    let cpus: Vec<Option<usize>> = (0..threads).map(|t| (!a.no_pin).then(|| all[t % all.len()])).collect();
    let req = Request {
        file: a.file.clone(),
        blksize: a.blksize,
        windowsize: a.windowsize,
        tsize: !a.no_tsize,
        timeout: Duration::from_millis(a.timeout_ms),
        retries_max: a.retries,
    };
    let total = std::thread::scope(|scope| -> Result<Phase, String> {
        let engine = uring_tftp::start(scope, &cpus, Some(&expect), a.blksize.unwrap_or(512), deadline);
        let (tx, rx) = mpsc::sync_channel::<Done>(concurrency as usize);
        let mut phase = Phase::new("tftp");
        let (mut launched, mut running) = (0u64, 0u64);
        loop {
            // Targets past the time limit are not started (the run then counts fewer than
            // --targets completed, and fails).
            while launched < a.targets && running < concurrency && Instant::now() < deadline {
                let sock = uring_tftp::client_socket(a.server).map_err(|e| format!("cannot bind a client socket: {e}"))?;
                let now = Instant::now();
                let rng = XorShift::new(a.seed.wrapping_add(launched.wrapping_mul(7919)) | 1);
                let job = Job {
                    sock,
                    server: a.server,
                    client: Client::new(req.clone(), now),
                    rng,
                    faults: a.faults,
                    started: now,
                    done: tx.clone(),
                };
                engine.submit(launched, job);
                launched += 1;
                running += 1;
            }
            if running == 0 {
                break;
            }
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(d) => {
                    running -= 1;
                    record(&mut phase, &d, expect.len() as u64, deadline, t0);
                }
                // The engine ends every target by the time limit; one that does not answer
                // well after it (a dead engine thread) must not hang the run.
                Err(_) if Instant::now() > deadline + Duration::from_secs(5) => {
                    (0..running).for_each(|_| phase.fail("time limit reached"));
                    break;
                }
                Err(_) => {}
            }
        }
        Ok(phase)
    })?;
    let wall = t0.elapsed();
    print!("{}", total.text(wall));
    if let Some(j) = &a.json {
        let body = format!(
            "{{\"tool\": \"bootstorm\", \"targets\": {}, \"concurrency\": {}, \"server\": \"{}\", \"file\": \"{}\", \"blksize\": {}, \"windowsize\": {}, \"loss\": {}, \"client_cpu_ms\": {:.0}, \"phases\": [{}]}}\n",
            a.targets,
            concurrency,
            a.server,
            a.file,
            a.blksize.unwrap_or(512),
            a.windowsize.unwrap_or(1),
            a.faults.loss,
            crate::report::own_cpu_ms(),
            total.json(wall)
        );
        std::fs::write(j, body).map_err(|e| format!("{}: {e}", j.display()))?;
    }
    if let Some(h) = &a.html {
        let context = format!(
            "{} targets ({} at once) fetching {} from {} over TFTP, blksize {}, windowsize {}, loss {}",
            a.targets,
            concurrency,
            a.file,
            a.server,
            a.blksize.unwrap_or(512),
            a.windowsize.unwrap_or(1),
            a.faults.loss
        );
        std::fs::write(h, total.html(wall, &context)).map_err(|e| format!("{}: {e}", h.display()))?;
    }
    Ok(total.failed() == 0 && total.completed == a.targets)
}

/// One target's end, into the phase.
fn record(phase: &mut Phase, d: &Done, expect_len: u64, deadline: Instant, t0: Instant) {
    match d.outcome {
        Outcome::Done if d.bytes == expect_len => {
            phase.completed += 1;
            phase.micros.record(d.took.as_micros().max(1) as u64).ok();
            phase.done_at_ms.push((d.ended - t0).as_secs_f64() * 1000.0);
        }
        Outcome::Done | Outcome::Corrupted => phase.fail("corrupted: wrong bytes or size"),
        Outcome::TimedOut | Outcome::Running if d.ended >= deadline => phase.fail("time limit reached"),
        Outcome::TimedOut | Outcome::Running => phase.fail("timed out"),
        Outcome::ServerError(_) => phase.fail("server sent ERROR"),
    }
    phase.bytes += d.bytes;
    phase.resends += d.resends;
}
