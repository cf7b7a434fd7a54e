//! `bootfarm serve`: publishes the snapshot, runs the control thread (reload on SIGHUP and on
//! file change, drain on SIGTERM/SIGINT) and reports what is being served.

use crate::config::{reload, Overrides, Store};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// Number of workers for `server.workers` (0 = one per online core).
pub fn worker_count(configured: usize) -> usize {
    if configured > 0 {
        configured
    } else {
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    }
}

/// Raises the soft open-file limit to the hard one: every TFTP transfer and HTTP connection is
/// a descriptor, and the usual soft limit (1024) would refuse a boot storm. Returns the limit.
pub fn raise_nofile_limit() -> u64 {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // Safety: plain getrlimit/setrlimit on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return 0;
        }
        if r.rlim_cur < r.rlim_max {
            let want = libc::rlimit { rlim_cur: r.rlim_max, rlim_max: r.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                r.rlim_cur = r.rlim_max;
            }
        }
    }
    r.rlim_cur
}

/// Descriptors the configured limits can hold at once: two per TFTP transfer (its connected
/// socket and the catcher on its port), one per HTTP connection, per NBD connection and per
/// target overflow file (at most one target per connection is counted: kept caches beyond that
/// are rare), a ring and three listeners per worker, and some for the process itself.
pub fn descriptors_needed(c: &crate::config::Config, workers: usize) -> u64 {
    let iscsi = if c.server.iscsi_port != 0 { 2 * c.iscsi.connections_max } else { 0 };
    (2 * c.tftp.sessions_max + c.http.connections_max + 2 * c.nbd.connections_max + iscsi + 4 * workers + 64) as u64
}

pub fn run(store: Arc<Store>, file: Option<PathBuf>, overrides: Overrides, demo_dir: Option<&Path>) -> Result<(), String> {
    let snap = store.load();
    let s = &snap.config.server;
    let nofile = raise_nofile_limit();
    let needed = descriptors_needed(&snap.config, worker_count(s.workers));
    if nofile < needed {
        tracing::warn!(
            open_files = nofile,
            needed,
            "the open-file limit is below what the limits can use ({needed}: 2 x tftp.sessions_max (socket and catcher per transfer) + http.connections_max + 2 x nbd.connections_max and 2 x iscsi.connections_max (a connection and its target's overflow file) + 4 per worker (ring, listeners) + 64): raise it (LimitNOFILE= in a systemd unit, ulimit -Hn) or lower those limits"
        );
    } else {
        tracing::info!(open_files = nofile, "open-file limit");
    }
    tracing::info!(
        generation = snap.generation,
        node = %s.name,
        workers = worker_count(s.workers),
        vdisks = snap.vdisks.len(),
        tftp_root = %snap.tftp_root.display(),
        "configuration loaded"
    );
    for v in &snap.vdisks {
        tracing::info!(vdisk = %v.name, bytes = v.chain.virtual_size(), images = v.chain.layers.len(), path = %v.path.display(), "vdisk ready");
    }
    let control = reload::Control::new(store.clone(), file, overrides);
    let engine = crate::engine::start(store.clone())?;
    if let Some(dir) = demo_dir {
        println!("{}", demo_banner(dir, &snap));
    }
    // Every listener is bound and every image open: the service manager may start what waits.
    control.notify.ready(store.load().generation);
    let stop = AtomicBool::new(false);
    let exit = control.run(&stop);
    control.notify.stopping();
    tracing::info!(?exit, grace_ms = s.shutdown_grace_ms, "shutting down: no new transfers, running ones may finish");
    engine.shutdown();
    tracing::info!("stopped");
    Ok(())
}

fn demo_banner(dir: &Path, snap: &crate::config::Snapshot) -> String {
    let v = snap.default_vdisk().map(|v| v.path.display().to_string()).unwrap_or_default();
    let name = snap.default_vdisk().map(|v| v.name.clone()).unwrap_or_default();
    let (ip, tftp, http, nbd) =
        (snap.config.server.listen, snap.config.server.tftp_port, snap.config.server.http_port, snap.config.server.nbd_port);
    let (root, boot, nbp) = (snap.tftp_root.display(), crate::demo::BOOTSTRAP_NAME, crate::demo::NBP_NAME);
    let qemu = "qemu-system-x86_64 -accel tcg -m 128 -display none -vga none -nodefaults -serial stdio \\\n    \
                -fw_cfg name=etc/sercon-port,file=sercon -device isa-debug-exit,iobase=0xf4,iosize=0x04 \\\n    \
                -device e1000,netdev=n0 -boot n";
    format!(
        "bootfarm demo store in {dir}\n\n  bootstrap: {root}/{boot}\n  vdisk:     {v} (a 2-version VHDX chain)\n\n\
         TFTP:\n  curl -so boot.bin tftp://{ip}:{tftp}/{boot} && cmp boot.bin {root}/{boot} && echo same\n  \
         curl -so boot.bin --tftp-blksize 1432 tftp://{ip}:{tftp}/{boot}\n  \
         tftp {ip} {tftp} -m binary -c get {boot}\n\n\
         HTTP:\n  curl -s http://{ip}:{http}/ipxe\n  \
         curl -s -r 0-511 http://{ip}:{http}/vdisk/{name} | xxd | tail -2\n  \
         curl -s http://{ip}:{http}/metrics | grep bootfarm_tftp\n\n\
         NBD (libnbd-bin):\n  nbdinfo --list nbd://{ip}:{nbd}\n  \
         nbdcopy nbd://{ip}:{nbd}/{name} demo-nbd.raw\n  \
         # writes go to this client's own write cache, never into the image:\n  \
         qemu-io -f raw -c 'write -P 7 0 64k' -c 'read -P 7 0 64k' nbd://{ip}:{nbd}/{name}\n  \
         nbdinfo --map nbd://{ip}:{nbd}/{name}\n\n\
         A boot storm (cargo build --release first): 50 simulated targets, TFTP then NBD:\n  \
         target/release/bootstorm boot --tftp {ip}:{tftp} --file {boot} --expect {root}/{boot} --nbd {ip}:{nbd} \\\n    \
         --vdisk {name} --image {v} --targets 50 --scale 0.002\n  \
         # or all over HTTP, as iPXE sanboot does: /boot, the /ipxe list, then vDisk ranges:\n  \
         target/release/bootstorm boot --bootstrap http --http {ip}:{http} --ipxe --disk http --file {boot} \\\n    \
         --expect {root}/{boot} --vdisk {name} --image {v} --targets 50 --scale 0.002\n\n\
         Network-boot a VM (qemu-system-x86 + ipxe-qemu), after: printf '\\xf8\\x03' > sercon\n  \
         # iPXE sanboots the vdisk over HTTP; its boot sector prints a marker, then QEMU exits:\n  \
         {qemu} -netdev user,id=n0,bootfile=http://10.0.2.2:{http}/ipxe\n  \
         # or runs a PXE program fetched over TFTP:\n  \
         {qemu} -netdev user,id=n0,bootfile=tftp://10.0.2.2:{tftp}/{nbp}\n\n\
         Images:\n  bootfarm vdisk inspect {v}\n  \
         bootfarm vdisk export {v} -o demo.raw\n\n\
         Press Ctrl-C to stop (the demo folder is removed).",
        dir = dir.display(),
    )
}
