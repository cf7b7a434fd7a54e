//! `bootstorm iscsi-bench`: a fixed-queue-depth load on one iSCSI session (what fio does for
//! NBD; Debian's fio has no libiscsi engine): random or sequential reads, or a read/write mix,
//! of one block size, for a bounded time, with per-command latency percentiles. One thread,
//! one non-blocking socket, poll(2); every command must end GOOD with all its data, else the
//! run fails. Writes carry a fixed pattern (the target's write cache or a scratch copy).

use crate::iscsi::{Event, Initiator, Params};
use hdrhistogram::Histogram;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct Args {
    /// The target's portal.
    #[arg(long, default_value = "127.0.0.1:3260")]
    portal: SocketAddr,
    /// Target IQN.
    #[arg(long)]
    target: String,
    #[arg(long, default_value_t = 0)]
    lun: u64,
    #[arg(long, default_value = "iqn.2026-12.org.bootstorm:bench")]
    initiator: String,
    /// randread | read (sequential) | randrw (see --read-pct)
    #[arg(long, default_value = "randread")]
    rw: String,
    /// Share of reads in randrw, in percent.
    #[arg(long, default_value_t = 80)]
    read_pct: u32,
    /// Bytes per command (a multiple of the block length).
    #[arg(long, default_value_t = 4096)]
    bs: u32,
    /// Commands in flight (at most 256).
    #[arg(long, default_value_t = 1)]
    qd: usize,
    /// Run time (at most 600 s).
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// The run's figures, one line: `iops MB/s p50_us p99_us client_cpu_us_per_io`.
pub fn run(a: Args) -> Result<bool, String> {
    if a.qd == 0 || a.qd > crate::iscsi::SLOTS {
        return Err(format!("--qd {} out of 1..={}", a.qd, crate::iscsi::SLOTS));
    }
    let secs = a.seconds.clamp(0.1, 600.0);
    let mut sock = TcpStream::connect_timeout(&a.portal, Duration::from_secs(5)).map_err(|e| format!("{}: {e}", a.portal))?;
    sock.set_nodelay(true).map_err(|e| e.to_string())?;
    sock.set_nonblocking(true).map_err(|e| e.to_string())?;
    let mut s = Initiator::new(Params { initiator: a.initiator.clone(), target: a.target.clone(), lun: a.lun, isid: a.seed as u32 });
    let mut rng = bootfarm::rng::XorShift::new(a.seed);
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
    let mut started: Vec<Option<Instant>> = vec![None; a.qd];
    let mut free_tags: Vec<u64> = (0..a.qd as u64).collect();
    let mut pool: Vec<Vec<u8>> = Vec::new();
    let mut wbuf: Vec<u8> = Vec::new();
    let (mut blocks_total, mut per) = (0u64, 0u32);
    let mut seq_lba = 0u64;
    let (mut done, mut bytes) = (0u64, 0u64);
    let cpu0 = crate::report::own_cpu_ms();
    let login_by = Instant::now() + Duration::from_secs(30);
    let (mut t0, mut last) = (Instant::now(), Instant::now());
    // The run's end, once the unit is ready; then the logout, waited for up to 5 s.
    let mut end: Option<Instant> = None;
    let mut logout_by: Option<Instant> = None;
    let mut logged_out = false;
    loop {
        let now = Instant::now();
        if end.is_none() && now > login_by {
            return Err("no login within 30 s".into());
        }
        if let Some(by) = logout_by {
            if logged_out || now > by {
                break;
            }
        } else if end.is_some_and(|e| now >= e) && s.in_flight() == 0 {
            s.logout();
            logout_by = Some(now + Duration::from_secs(5));
        }
        // Issue up to the queue depth.
        while end.is_some_and(|e| now < e) && s.can_issue() && !free_tags.is_empty() {
            let tag = free_tags.pop().unwrap();
            let write = a.rw == "randrw" && rng.next() % 100 >= a.read_pct as u64;
            let lba = if a.rw == "read" {
                let l = seq_lba;
                seq_lba = if seq_lba + 2 * per as u64 > blocks_total { 0 } else { seq_lba + per as u64 };
                l
            } else {
                (rng.next() % (blocks_total / per as u64)) * per as u64
            };
            started[tag as usize] = Some(Instant::now());
            let buf = pool.pop().unwrap_or_default();
            if write {
                let mut b = buf;
                b.clear();
                b.extend_from_slice(&wbuf);
                s.write(tag, lba, b);
            } else {
                s.read(tag, lba, per, buf);
            }
        }
        // Send what is queued.
        while !s.pending().is_empty() {
            match sock.write(s.pending()) {
                Ok(n) => s.sent(n),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => return Err(format!("send: {e}")),
            }
        }
        // Receive.
        let mut progress = false;
        loop {
            match sock.read(s.recv_space()) {
                // After the logout request the target may close at once after its answer.
                Ok(0) if logout_by.is_some() => {
                    logged_out = true;
                    break;
                }
                Ok(0) => return Err("the target closed the connection".into()),
                Ok(n) => {
                    s.received(n)?;
                    progress = true;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => return Err(format!("receive: {e}")),
            }
        }
        while let Some(ev) = s.next_event() {
            match ev {
                Event::Ready { blocks, block_len } => {
                    if a.bs == 0 || !a.bs.is_multiple_of(block_len) {
                        return Err(format!("--bs {} is not a multiple of the block length {block_len}", a.bs));
                    }
                    (blocks_total, per) = (blocks, a.bs / block_len);
                    if blocks_total < per as u64 * 2 {
                        return Err("the LUN is smaller than two commands".into());
                    }
                    wbuf = (0..a.bs).map(|i| (i * 7 + 3) as u8).collect();
                    t0 = Instant::now();
                    end = Some(t0 + Duration::from_secs_f64(secs));
                }
                Event::Done { tag, ok, why, buf } => {
                    if !ok {
                        return Err(format!("a command failed: {why}"));
                    }
                    let at = started[tag as usize].take().expect("a command in flight");
                    let _ = hist.record(at.elapsed().as_nanos().max(1) as u64);
                    free_tags.push(tag);
                    pool.push(buf);
                    done += 1;
                    last = Instant::now();
                    bytes += a.bs as u64;
                }
                Event::LoggedOut => logged_out = true,
            }
        }
        if !progress {
            let mut pfd = libc::pollfd {
                fd: sock.as_raw_fd(),
                events: libc::POLLIN | if s.pending().is_empty() { 0 } else { libc::POLLOUT },
                revents: 0,
            };
            unsafe { libc::poll(&mut pfd, 1, 100) };
        }
    }
    let wall = last.duration_since(t0).as_secs_f64().max(1e-6);
    let cpu_us = (crate::report::own_cpu_ms() - cpu0) * 1000.0;
    let q = |x: f64| hist.value_at_quantile(x) as f64 / 1000.0;
    println!("{:.0} {:.1} {:.0} {:.0} {:.2}", done as f64 / wall, bytes as f64 / wall / 1e6, q(0.5), q(0.99), cpu_us / done.max(1) as f64);
    Ok(done > 0)
}
