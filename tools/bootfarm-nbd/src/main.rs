//! bootfarm-nbd: the NBD client of bootfarm's initramfs. `connect` negotiates the export with
//! the first server of the list that serves it, hands the socket to the kernel over netlink
//! with a dead-connection timeout (I/O waits for a reconnect instead of failing), and leaves a
//! watcher that, when the kernel reports the connection dead, reconnects the same device to
//! the servers in list order starting with the one it lost (its write cache is there; a dead
//! node refuses at once and the next one takes over) with NBD_CMD_RECONFIGURE. Debian's
//! nbd-client 3.24 cannot: its `-persist` works only on the ioctl interface, where a 6.1
//! kernel refuses a second NBD_DO_IT on a mounted device. Limits: at most `SERVERS_MAX`
//! servers, 3 s per TCP connect, 10 s per handshake, reconnects for `--dead-conn-timeout`.

mod handshake;
mod netlink;

use netlink::*;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

const USAGE: &str = "usage: bootfarm-nbd connect --servers A,B,.. --export NAME [--port 10809] [--readonly]
                    [--timeout S] [--dead-conn-timeout S] [--rounds N] [--block-size B] [--no-watch] /dev/nbdN
Connects /dev/nbdN to the first server of the list that serves NAME (printed on standard
output), then watches it: a lost connection is reconnected to the servers in order, starting
with the one lost, while I/O waits (up to --dead-conn-timeout, default 120 s).";

const SERVERS_MAX: usize = 16;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// NBD_FLAG_READ_ONLY in the transmission flags.
const FLAG_READ_ONLY: u64 = 2;

#[derive(Debug, Clone)]
struct Opts {
    servers: Vec<String>,
    port: u16,
    export: String,
    readonly: bool,
    timeout_s: u64,
    dead_conn_timeout_s: u64,
    rounds: u32,
    block_size: u64,
    watch: bool,
    index: u32,
}

fn parse(args: &[String]) -> Result<Opts, String> {
    let mut o = Opts {
        servers: vec![],
        port: 10809,
        export: String::new(),
        readonly: false,
        timeout_s: 30,
        dead_conn_timeout_s: 120,
        rounds: 3,
        block_size: 512,
        watch: true,
        index: u32::MAX,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = |what: &str| it.next().cloned().ok_or(format!("{what} needs a value"));
        let num = |v: String, what: &str| v.parse::<u64>().map_err(|_| format!("{what}: {v:?} is not a number"));
        match a.as_str() {
            "--servers" => o.servers = val(a)?.split(',').filter(|s| !s.is_empty()).map(str::to_string).collect(),
            "--port" => o.port = num(val(a)?, a)?.try_into().map_err(|_| "--port: at most 65535".to_string())?,
            "--export" => o.export = val(a)?,
            "--readonly" => o.readonly = true,
            "--timeout" => o.timeout_s = num(val(a)?, a)?,
            "--dead-conn-timeout" => o.dead_conn_timeout_s = num(val(a)?, a)?,
            "--rounds" => o.rounds = num(val(a)?, a)?.clamp(1, 100) as u32,
            "--block-size" => o.block_size = num(val(a)?, a)?,
            "--no-watch" => o.watch = false,
            d if d.starts_with("/dev/nbd") => {
                o.index = d["/dev/nbd".len()..].parse().map_err(|_| format!("{d}: not /dev/nbdN"))?;
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if o.servers.is_empty() || o.servers.len() > SERVERS_MAX {
        return Err(format!("--servers: 1 to {SERVERS_MAX} servers"));
    }
    if o.export.is_empty() || o.index == u32::MAX {
        return Err("--export and the device are required".into());
    }
    if !o.block_size.is_power_of_two() || !(512..=4096).contains(&o.block_size) {
        return Err("--block-size: 512, 1024, 2048 or 4096".into());
    }
    Ok(o)
}

fn log(msg: &str) {
    eprintln!("bootfarm-nbd: {msg}");
}

/// A socket in the transmission phase of `export` on `server`, and the export.
fn open(server: &str, o: &Opts) -> Result<(TcpStream, handshake::Export), String> {
    let addr: SocketAddr =
        (server, o.port).to_socket_addrs().map_err(|e| format!("{server}: {e}"))?.next().ok_or(format!("{server}: no address"))?;
    let mut s = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).map_err(|e| format!("{addr}: {e}"))?;
    s.set_read_timeout(Some(HANDSHAKE_TIMEOUT)).map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(HANDSHAKE_TIMEOUT)).map_err(|e| e.to_string())?;
    let _ = s.set_nodelay(true);
    let e = handshake::go(&mut s, &o.export).map_err(|e| format!("{addr}: {e}"))?;
    // The kernel does its own blocking I/O on the socket: no timeouts left on it.
    s.set_read_timeout(None).map_err(|e| e.to_string())?;
    s.set_write_timeout(None).map_err(|e| e.to_string())?;
    Ok((s, e))
}

fn connect(o: &Opts) -> Result<(), String> {
    let mut ctl = Genl::open(false)?;
    let (family, group) = ctl.resolve_nbd()?;
    // The events socket is joined before the device exists, so no link-dead event is missed,
    // and inherited by the watcher.
    let events = Genl::open(true)?;
    events.join(group)?;
    let mut found = None;
    'rounds: for round in 1..=o.rounds {
        for (i, s) in o.servers.iter().enumerate() {
            match open(s, o) {
                Ok(c) => {
                    found = Some((i, c));
                    break 'rounds;
                }
                Err(e) => log(&format!("{s}:{} did not serve {}: {e}", o.port, o.export)),
            }
        }
        std::thread::sleep(Duration::from_secs(round as u64));
    }
    let Some((at, (sock, export))) = found else {
        return Err(format!("no server of {} served {} on port {}", o.servers.join(","), o.export, o.port));
    };
    let bs = if export.size % o.block_size == 0 { o.block_size } else { 512 };
    let flags = export.flags as u64 | if o.readonly { FLAG_READ_ONLY } else { 0 };
    let mut a = Attrs::default();
    a.u32(NBD_ATTR_INDEX, o.index)
        .u64(NBD_ATTR_SIZE_BYTES, export.size)
        .u64(NBD_ATTR_BLOCK_SIZE_BYTES, bs)
        .u64(NBD_ATTR_SERVER_FLAGS, flags)
        .u64(NBD_ATTR_TIMEOUT, o.timeout_s)
        .u64(NBD_ATTR_DEAD_CONN_TIMEOUT, o.dead_conn_timeout_s)
        .socket(sock.as_raw_fd());
    ctl.request(family, NBD_CMD_CONNECT, &a).map_err(|e| format!("NBD_CMD_CONNECT /dev/nbd{}: {e}", o.index))?;
    drop(sock); // the kernel holds its own reference
    log(&format!(
        "/dev/nbd{} connected to {}:{} export {} ({} bytes{})",
        o.index,
        o.servers[at],
        o.port,
        o.export,
        export.size,
        if o.readonly { ", read-only" } else { "" }
    ));
    println!("{}", o.servers[at]);
    if o.watch {
        spawn_watcher(o, at, events.raw_fd(), export.size)?;
    }
    Ok(())
}

/// Re-executes this binary as the watcher, named `@bootfarm-nbd` (systemd leaves processes
/// whose name starts with '@' alive at the switch from the initramfs: the root's storage).
fn spawn_watcher(o: &Opts, at: usize, events_fd: i32, size: u64) -> Result<(), String> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find my own binary: {e}"))?;
    let mut c = std::process::Command::new(exe);
    c.arg0("@bootfarm-nbd").arg("watch");
    c.args(["--events-fd", &events_fd.to_string(), "--at", &at.to_string(), "--size", &size.to_string()]);
    c.args(["--servers", &o.servers.join(","), "--port", &o.port.to_string(), "--export", &o.export]);
    c.args(["--dead-conn-timeout", &o.dead_conn_timeout_s.to_string(), &format!("/dev/nbd{}", o.index)]);
    c.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null());
    // Safety: setsid is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        c.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    c.spawn().map_err(|e| format!("cannot start the watcher: {e}"))?;
    Ok(())
}

/// The watcher: waits for the kernel's link-dead events of its device and reconnects it.
fn watch(args: &[String]) -> Result<(), String> {
    let (mut events_fd, mut at, mut size) = (None, 0usize, 0u64);
    let mut rest = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--events-fd" => events_fd = it.next().and_then(|v| v.parse().ok()),
            "--at" => at = it.next().and_then(|v| v.parse().ok()).unwrap_or(0),
            "--size" => size = it.next().and_then(|v| v.parse().ok()).unwrap_or(0),
            _ => rest.push(a.clone()),
        }
    }
    let o = parse(&rest)?;
    let mut events = Genl::from_fd(events_fd.ok_or("--events-fd is required")?);
    let family = Genl::open(false)?.resolve_nbd()?.0;
    loop {
        let dead = events.recv()?.into_iter().any(|m| match m {
            Msg::Genl { ty, cmd: NBD_CMD_LINK_DEAD, attrs, .. } if ty == family => parse_attrs(&attrs)
                .iter()
                .any(|(t, v)| *t == NBD_ATTR_INDEX && v.len() >= 4 && u32::from_ne_bytes(v[..4].try_into().unwrap()) == o.index),
            _ => false,
        });
        if dead {
            at = reconnect(&o, family, at, size);
        }
    }
}

/// Reconnects the device: the servers in order from `at` (the one lost first: a cache of
/// this boot may be there), for up to the dead-connection timeout. Returns where it is now.
fn reconnect(o: &Opts, family: u16, at: usize, size: u64) -> usize {
    let t0 = Instant::now();
    log(&format!("/dev/nbd{}: the connection to {} was lost; reconnecting", o.index, o.servers[at]));
    let n = o.servers.len();
    let mut round = 0u64;
    while t0.elapsed() < Duration::from_secs(o.dead_conn_timeout_s.max(1)) {
        for k in 0..n {
            let i = (at + k) % n;
            let s = &o.servers[i];
            let attempt = open(s, o).and_then(|(sock, e)| {
                if e.size != size {
                    return Err(format!("{s}: export {} is {} bytes, the device {size}: not the same vdisk", o.export, e.size));
                }
                let mut a = Attrs::default();
                a.u32(NBD_ATTR_INDEX, o.index).socket(sock.as_raw_fd());
                Genl::open(false)?.request(family, NBD_CMD_RECONFIGURE, &a).map_err(|e| format!("NBD_CMD_RECONFIGURE: {e}"))
            });
            match attempt {
                Ok(_) => {
                    log(&format!(
                        "/dev/nbd{}: reconnected to {}:{} export {} after {} ms",
                        o.index,
                        s,
                        o.port,
                        o.export,
                        t0.elapsed().as_millis()
                    ));
                    return i;
                }
                // ENOSPC: the kernel has no dead connection to replace (a late event of an
                // outage already mended): nothing to do.
                Err(e) if e.contains("(os error 28)") => {
                    log(&format!("/dev/nbd{}: the connection is alive again; nothing to reconnect", o.index));
                    return at;
                }
                Err(e) => log(&format!("/dev/nbd{}: {e}", o.index)),
            }
        }
        round += 1;
        std::thread::sleep(Duration::from_millis((250 * round).min(2000)));
    }
    log(&format!("/dev/nbd{}: no server took the connection back within {} s", o.index, o.dead_conn_timeout_s));
    at
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = match args.first().map(String::as_str) {
        Some("connect") => parse(&args[1..]).and_then(|o| connect(&o)),
        Some("watch") => watch(&args[1..]),
        _ => Err(USAGE.to_string()),
    };
    if let Err(e) = r {
        log(&e);
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn options_are_parsed_and_bounded() {
        let o = parse(&args("--servers 10.0.2.2,b --export lab@T --readonly /dev/nbd3")).unwrap();
        assert_eq!((o.servers.len(), o.index, o.readonly, o.port, o.dead_conn_timeout_s), (2, 3, true, 10809, 120));
        assert!(parse(&args("--export x /dev/nbd0")).unwrap_err().contains("--servers"));
        assert!(parse(&args("--servers a --export x")).unwrap_err().contains("required"));
        assert!(parse(&args("--servers a --export x --block-size 3000 /dev/nbd0")).is_err());
        assert!(parse(&args("--servers a --export x --port 70000 /dev/nbd0")).is_err());
        let many = (0..17).map(|i| format!("s{i}")).collect::<Vec<_>>().join(",");
        assert!(parse(&args(&format!("--servers {many} --export x /dev/nbd0"))).is_err());
    }
}
