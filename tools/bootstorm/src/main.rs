//! bootstorm: simulates network-booting targets against a bootfarm (or any server speaking the
//! same protocols) and measures boots per second and time-to-boot percentiles, checking every
//! byte received. `tftp` is a bootstrap-only storm on io_uring; `boot` runs whole boots
//! (bootstrap, iPXE script, vDisk over NBD, iSCSI or HTTP) with failover; `trace convert` makes
//! boot traces from bootfarm's NBD traces.

mod boot;
mod dhcp;
mod engine;
mod iscsi;
mod iscsi_bench;
mod phases;
mod report;
mod tftp;
mod trace;
mod uring;
mod uring_disk;
mod uring_http;
mod uring_iscsi;
mod uring_tftp;

use clap::{CommandFactory, Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "bootstorm", version, about = "Boot-storm load generator: simulated targets, real protocols, verified bytes")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per run: its size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Bootstrap storm over TFTP: N targets each fetch one file, all at once.
    Tftp(tftp::Args),
    /// Whole boots: bootstrap (TFTP/HTTP), iPXE script, a vDisk boot trace over NBD or HTTP.
    Boot(boot::Args),
    /// PXE DHCP storm: N clients broadcast DISCOVER (UEFI ones then ask the proxy on 4011);
    /// time to a usable answer.
    Dhcp(dhcp::Args),
    /// iSCSI load on one session: random or sequential reads or a read/write mix at a fixed
    /// queue depth, for a bounded time; prints IOPS, MB/s, p50/p99 latency and CPU per I/O.
    IscsiBench(crate::iscsi_bench::Args),
    /// Boot traces: `trace convert` turns bootfarm's NBD traces (nbd.trace_dir) into a
    /// `boot --trace` CSV.
    Trace(trace::Args),
    /// Write the manual pages (DIR/man) and bash/zsh completions (DIR/completions); the
    /// package build runs it.
    #[command(hide = true)]
    GenerateDocs { dir: std::path::PathBuf },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.command {
        Command::Tftp(a) => tftp::run(a),
        Command::Boot(a) => boot::run(a),
        Command::Dhcp(a) => dhcp::run(a),
        Command::IscsiBench(a) => iscsi_bench::run(a),
        Command::Trace(a) => trace::run(a),
        Command::GenerateDocs { dir } => bootfarm::manual::write(Cli::command(), &dir).map(|files| {
            files.iter().for_each(|f| println!("{}", f.display()));
            true
        }),
    };
    match r {
        Ok(ok) if ok => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(1),
        Err(e) => {
            eprintln!("bootstorm: {e}");
            ExitCode::from(2)
        }
    }
}
