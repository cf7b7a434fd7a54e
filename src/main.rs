//! The `bootfarm` command line: serve, config, vdisk. Everything it does lives in the library.

use bootfarm::config::{self, reload, Overrides};
use bootfarm::image::{self, bytes, write, Chain, ChainLimits, Layer};
use clap::{Args, CommandFactory, Parser, Subcommand};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Parser)]
#[command(name = "bootfarm", version, about = "Network-boot appliance: TFTP/HTTP bootstraps and vDisk streaming from VHD/VHDX images")]
struct Cli {
    /// Log filter (tracing EnvFilter syntax, e.g. "info", "bootfarm=debug"); RUST_LOG also works.
    #[arg(long, global = true)]
    log: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the appliance.
    Serve(ServeArgs),
    /// Check or print configuration files.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Inspect, verify, export and version vDisk images.
    #[command(subcommand)]
    Vdisk(VdiskCmd),
    /// Look at the farm the configuration describes.
    #[command(subcommand)]
    Farm(FarmCmd),
    /// Check this machine, the configuration and the farm for what would stop serving.
    ///
    /// io_uring (and why not), locked memory, open-file limits against the configured limits,
    /// ports free or held by whom, the capability for ports below 1024, interface MTU against
    /// tftp.blksize_max, the configuration, every vdisk chain, every farm server (up, same
    /// generation, identical replicas, clock). One line per finding with what to do; exit 0 when
    /// all is fine, 1 with warnings, 2 with errors.
    Doctor {
        /// The configuration to check.
        #[arg(long, default_value = "/etc/bootfarm/bootfarm.toml")]
        config: PathBuf,
    },
    /// Write the manual pages (DIR/man) and bash/zsh completions (DIR/completions); the
    /// package build runs it.
    #[command(hide = true)]
    GenerateDocs { dir: PathBuf },
}

#[derive(Subcommand)]
enum FarmCmd {
    /// Probe every [[farm.server]] of FILE and show health, configuration generation, load per
    /// vdisk and replica agreement. Exits 2 when a server is down, a replica differs or is still
    /// being hashed.
    Status {
        #[arg(long)]
        config: PathBuf,
        /// Probe timeout in milliseconds (default: farm.health_timeout_ms x 4).
        #[arg(long)]
        timeout_ms: Option<u64>,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// Configuration file (TOML). See `bootfarm config example`.
    #[arg(long, required_unless_present = "demo", conflicts_with = "demo")]
    config: Option<PathBuf>,
    /// Serve a generated demo store on 127.0.0.1 (unprivileged ports, no config needed).
    #[arg(long)]
    demo: bool,
    #[arg(long)]
    listen: Option<IpAddr>,
    #[arg(long)]
    tftp_port: Option<u16>,
    #[arg(long)]
    http_port: Option<u16>,
    #[arg(long)]
    nbd_port: Option<u16>,
    /// The iSCSI port (0 = no iSCSI).
    #[arg(long)]
    iscsi_port: Option<u16>,
    /// Worker threads (0 = one per core).
    #[arg(long)]
    workers: Option<usize>,
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Validate FILE and print the effective configuration, or the first error.
    Check { file: PathBuf },
    /// Print a complete, commented example configuration.
    Example,
}

#[derive(Subcommand)]
enum VdiskCmd {
    /// Format, sizes, chain members and problems of an image and its parents.
    Inspect {
        file: PathBuf,
        #[arg(long, default_value_t = 16)]
        chain_depth_max: usize,
    },
    /// Full structural check of every chain member; non-zero exit on the first defect.
    Verify {
        file: PathBuf,
        #[arg(long, default_value_t = 16)]
        chain_depth_max: usize,
    },
    /// Write the virtual disk as raw bytes to OUT ("-" for standard output).
    Export {
        file: PathBuf,
        #[arg(short, long)]
        output: PathBuf,
        #[arg(long, default_value_t = 16)]
        chain_depth_max: usize,
    },
    /// Create an empty differencing version CHILD of PARENT (VHDX for VHDX, VHD for VHD).
    NewVersion {
        parent: PathBuf,
        #[arg(short, long)]
        output: PathBuf,
        #[arg(long, default_value_t = 16)]
        chain_depth_max: usize,
    },
    /// Flatten a chain into one standalone image (.vhdx, .vhd, otherwise raw).
    Merge {
        file: PathBuf,
        #[arg(short, long)]
        output: PathBuf,
        #[arg(long, default_value_t = 16)]
        chain_depth_max: usize,
    },
    /// Create an empty dynamic image (.vhdx or .vhd).
    Create {
        output: PathBuf,
        /// Virtual size, with an optional K/M/G/T suffix (powers of 1024).
        #[arg(long, value_parser = parse_size)]
        size: u64,
        /// Block size (VHDX: 1M-256M, default 32M; VHD: default 2M).
        #[arg(long, value_parser = parse_size)]
        block_size: Option<u64>,
        /// VHDX logical sector size: 512 or 4096.
        #[arg(long, default_value_t = 512)]
        sector_size: u32,
    },
    /// Write the bytes of FROM into an image at a sector-aligned offset. Only for a version
    /// nobody is serving: served images are never modified in place.
    Write {
        file: PathBuf,
        #[arg(long, value_parser = parse_size)]
        offset: u64,
        #[arg(long)]
        from: PathBuf,
    },
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, shift) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (
            &s[..i],
            match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(format!("unknown size suffix {c:?} (use K, M, G or T)")),
            },
        ),
        _ => (s, 0),
    };
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a size"))?;
    n.checked_mul(1 << shift).ok_or_else(|| format!("{s:?} is too large"))
}

fn init_logging(filter: Option<&str>) {
    use tracing_subscriber::EnvFilter;
    let f = match filter {
        Some(f) => EnvFilter::new(f),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(f).with_writer(std::io::stderr).with_ansi(ansi).with_target(false).init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log.as_deref());
    if !matches!(cli.command, Command::Serve(_)) {
        // Pipelines like `vdisk export F -o - | head` end quietly, as Unix tools do.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let result = match cli.command {
        Command::Serve(a) => serve(a),
        Command::Config(ConfigCmd::Example) => {
            print!("{}", config::EXAMPLE);
            Ok(())
        }
        Command::Config(ConfigCmd::Check { file }) => config_check(&file),
        Command::Vdisk(v) => vdisk(v),
        Command::Doctor { config } => return ExitCode::from(bootfarm::doctor::run(&config)),
        Command::GenerateDocs { dir } => bootfarm::manual::write(Cli::command(), &dir).map(|files| {
            for f in files {
                println!("{}", f.display());
            }
        }),
        Command::Farm(FarmCmd::Status { config, timeout_ms }) => match farm_status(&config, timeout_ms) {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::from(2),
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bootfarm: {e}");
            ExitCode::FAILURE
        }
    }
}

fn farm_status(file: &Path, timeout_ms: Option<u64>) -> Result<bool, String> {
    let s = config::load(file, &Overrides::default(), 1, None).map_err(|e| e.to_string())?;
    let t = std::time::Duration::from_millis(timeout_ms.unwrap_or(s.config.farm.health_timeout_ms * 4));
    let (table, good) = bootfarm::farm::status_table(&s, t);
    print!("{table}");
    Ok(good)
}

fn config_check(file: &Path) -> Result<(), String> {
    let s = config::load(file, &Overrides::default(), 1, None).map_err(|e| e.to_string())?;
    let text = toml::to_string_pretty(&s.config).map_err(|e| e.to_string())?;
    println!("# {}: valid. Effective configuration (defaults filled in, paths resolved):", file.display());
    print!("{text}");
    for v in &s.vdisks {
        let chain: Vec<String> = v.chain.layers.iter().map(|l| l.path.display().to_string()).collect();
        println!("# vdisk {}: {} bytes, chain {}", v.name, v.chain.virtual_size(), chain.join(" -> "));
    }
    Ok(())
}

fn serve(a: ServeArgs) -> Result<(), String> {
    reload::block_signals();
    let overrides = Overrides {
        listen: a.listen,
        tftp_port: a.tftp_port,
        http_port: a.http_port,
        nbd_port: a.nbd_port,
        iscsi_port: a.iscsi_port,
        workers: a.workers,
    };
    let (snapshot, file, demo_dir) = if a.demo {
        let dir = bootfarm::demo::temp_dir()?;
        let mut c = bootfarm::demo::write_store(&dir, a.http_port.unwrap_or(8080))?;
        overrides.apply(&mut c);
        (bootfarm::demo::snapshot(&dir, c)?, None, Some(dir))
    } else {
        let file = a.config.expect("clap requires --config without --demo");
        (config::load(&file, &overrides, 1, None).map_err(|e| e.to_string())?, Some(file), None)
    };
    let store = Arc::new(config::Store::new(snapshot));
    let result = bootfarm::serve::run(store, file, overrides, demo_dir.as_deref());
    if let Some(d) = demo_dir {
        let _ = std::fs::remove_dir_all(d);
    }
    result
}

fn limits(depth: usize) -> ChainLimits {
    ChainLimits { depth_max: depth }
}

/// After a pass over a chain: an image changed while it was read gave wrong bytes (image::guard).
fn unchanged(chain: &Chain) -> Result<(), String> {
    match chain.layers.iter().find(|l| l.changed_in_place()) {
        Some(l) => Err(format!(
            "{}: the file changed while it was being read (written in place or truncated): the result is not usable; run again once nothing writes it",
            l.path.display()
        )),
        None => Ok(()),
    }
}

fn vdisk(cmd: VdiskCmd) -> Result<(), String> {
    let e = |e: image::ImageError| e.to_string();
    match cmd {
        VdiskCmd::Inspect { file, chain_depth_max } => {
            let chain = Chain::open(&file, limits(chain_depth_max)).map_err(e)?;
            print!("{}", describe_chain(&chain));
            Ok(())
        }
        VdiskCmd::Verify { file, chain_depth_max } => {
            // The same check `bootfarm doctor` runs on every configured vdisk.
            println!("{}", bootfarm::doctor::verify_chain(&file, chain_depth_max)?);
            Ok(())
        }
        VdiskCmd::Export { file, output, chain_depth_max } => {
            let chain = Chain::open(&file, limits(chain_depth_max)).map_err(e)?;
            if output.as_os_str() == "-" {
                use std::os::fd::FromRawFd;
                // Safety: fd 1 is open for the life of the process; ManuallyDrop keeps it open.
                let mut out = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(1) });
                write::export(&chain, &mut out, false, Path::new("<stdout>")).map_err(e)?;
            } else {
                let mut out = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&output)
                    .map_err(|x| format!("{}: cannot create: {x}", output.display()))?;
                let seekable = out.metadata().map(|m| m.is_file()).unwrap_or(false);
                write::export(&chain, &mut out, seekable, &output).map_err(e)?;
            }
            unchanged(&chain)
        }
        VdiskCmd::NewVersion { parent, output, chain_depth_max } => {
            write::new_version(&parent, &output, limits(chain_depth_max)).map_err(e)?;
            println!("{}: new version of {}", output.display(), parent.display());
            Ok(())
        }
        VdiskCmd::Merge { file, output, chain_depth_max } => {
            let chain = Chain::open(&file, limits(chain_depth_max)).map_err(e)?;
            write::merge(&chain, &output).map_err(e)?;
            unchanged(&chain)?;
            println!("{}: {} merged ({} image(s))", output.display(), file.display(), chain.layers.len());
            Ok(())
        }
        VdiskCmd::Create { output, size, block_size, sector_size } => {
            let ext = output.extension().and_then(|x| x.to_str()).unwrap_or("").to_ascii_lowercase();
            match ext.as_str() {
                "vhdx" => write::create_vhdx(&output, size, block_size.unwrap_or(32 << 20), sector_size, None).map_err(e)?,
                "vhd" => write::create_vhd(&output, size, block_size.unwrap_or(2 << 20), None).map_err(e)?,
                _ => return Err(format!("{}: name it .vhdx or .vhd to choose the format", output.display())),
            }
            println!("{}: created, {size} bytes", output.display());
            Ok(())
        }
        VdiskCmd::Write { file, offset, from } => {
            let data = std::fs::read(&from).map_err(|x| format!("{}: cannot read: {x}", from.display()))?;
            let mut w = write::Writer::open(&file).map_err(e)?;
            w.write(offset, &data).map_err(e)?;
            w.finish().map_err(e)?;
            println!("{}: wrote {} bytes at {offset}", file.display(), data.len());
            Ok(())
        }
    }
}

fn describe_layer(l: &Layer) -> String {
    let id = if l.format.is_vhd() { bytes::uuid_to_string(&l.id) } else { bytes::guid_to_string(&l.id) };
    let mut s = format!(
        "  {}\n    format:         {}\n    virtual size:   {} bytes\n    block size:     {}\n    sector size:    {} logical, {} physical\n    allocated:      {} bytes\n    file size:      {} bytes\n    identity:       {id}\n",
        l.path.display(),
        l.format.name(),
        l.virtual_size,
        if l.block_size == 0 { "- (every byte present)".to_string() } else { format!("{} bytes", l.block_size) },
        l.logical_sector,
        l.physical_sector,
        l.allocated_bytes(),
        l.file_len(),
    );
    if let Some(p) = &l.parent {
        let pid = if l.format.is_vhd() { bytes::uuid_to_string(&p.id) } else { bytes::guid_to_string(&p.id) };
        s += &format!("    parent:         {pid} via {}\n", p.locators.join(", "));
    }
    for p in &l.problems {
        s += &format!("    problem:        {p}\n");
    }
    s
}

fn describe_chain(c: &Chain) -> String {
    let mut s = format!("virtual size: {} bytes\nchain: {} image(s), newest first\n", c.virtual_size(), c.layers.len());
    for l in &c.layers {
        s += &describe_layer(l);
    }
    let problems: usize = c.layers.iter().map(|l| l.problems.len()).sum();
    s += &format!("problems: {}\n", if problems == 0 { "none".to_string() } else { problems.to_string() });
    s
}
