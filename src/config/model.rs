//! The configuration file's model: every key, its default and its meaning. `bootfarm config
//! example` prints EXAMPLE, which is kept in step with these defaults by a test.

use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::path::PathBuf;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: Server,
    pub tftp: Tftp,
    pub http: Http,
    pub nbd: Nbd,
    pub iscsi: super::iscsi::Iscsi,
    pub image: Image,
    pub vdisk: Vec<VdiskEntry>,
    pub farm: Farm,
    pub pxe: super::pxe::Pxe,
    pub console: super::console::Console,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Server {
    pub name: String,
    pub listen: IpAddr,
    pub tftp_port: u16,
    pub http_port: u16,
    pub nbd_port: u16,
    /// The iSCSI target's port; 0 = no iSCSI.
    pub iscsi_port: u16,
    /// 0 = one worker per online core.
    pub workers: usize,
    /// Which worker takes a new flow (a TFTP request, a TCP connection).
    pub steer: Steer,
    /// On SIGTERM/SIGINT, transfers in flight get this long to finish.
    pub shutdown_grace_ms: u64,
    /// How often the config file is checked for changes, and how long it must stay unchanged
    /// before it is reloaded (editors write files in several steps).
    pub reload_poll_ms: u64,
    pub reload_debounce_ms: u64,
    /// A reload may leave no vdisk at all (otherwise refused as a probably half-written file).
    pub reload_allow_no_vdisks: bool,
}

impl Default for Server {
    fn default() -> Self {
        Server {
            name: "node1".into(),
            listen: IpAddr::from([127, 0, 0, 1]),
            tftp_port: 69,
            http_port: 8080,
            nbd_port: 10809,
            iscsi_port: 3260,
            workers: 0,
            steer: Steer::Hash,
            shutdown_grace_ms: 10_000,
            reload_poll_ms: 500,
            reload_debounce_ms: 300,
            reload_allow_no_vdisks: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Tftp {
    /// Bootstrap files, served read-only over TFTP and over HTTP at /boot/<file>.
    pub root: PathBuf,
    /// Largest blksize granted (RFC 2348 allows 8..65464). 1468 fits a 1500-byte MTU.
    pub blksize_max: u16,
    /// Largest windowsize granted (RFC 7440 allows 1..65535).
    pub windowsize_max: u16,
    /// Retransmission timeout until the round trip is measured (RFC 2349 timeout overrides it).
    pub timeout_ms: u64,
    /// Floor of the adaptive retransmission timeout (RFC 6298 estimator from measured round
    /// trips), so one lost packet costs milliseconds on a LAN instead of a whole second.
    pub timeout_min_ms: u64,
    /// Retransmissions of one window before the transfer is abandoned.
    pub retries_max: u32,
    pub sessions_max: usize,
    pub sessions_per_ip_max: usize,
    /// A client's RFC 2349 timeout option above this is declined (left out of the OACK, the
    /// adaptive timer runs): RFC 2349 allows 255 s, which with backoff held a session hours.
    pub timeout_option_max_s: u64,
    /// Retransmissions before the client's first ACK (the OACK, or DATA 1 of an option-less
    /// request): a spoofed request never ACKs, so it is reaped after 1 + 2 + 4 timeouts and
    /// reflects at most this many copies plus one.
    pub handshake_retries_max: u32,
    /// Longest a block may stay unacknowledged, retransmissions included, before the transfer
    /// is abandoned.
    pub stall_max_ms: u64,
    /// Longest a transfer may run in total. 30 min: a 500 MB WinPE boot.wim in lockstep at
    /// 1468-byte blocks over a 1 ms round trip takes ~8 min, 180 MB on GbE 257 s.
    pub transfer_lifetime_max_ms: u64,
    /// Sources whose option-less RRQs (RFC 1350, answered with DATA 1 at once, no handshake,
    /// so reflectable) are answered; others are dropped without an answer. Requests with
    /// options (OACK, then nothing before ACK 0) are served from anywhere. Default: any, for
    /// old PXE ROMs that send no options.
    pub plain_rrq_subnets: Vec<String>,
    /// New transfers one source address may start per second, and in a burst (a token
    /// bucket per address, shared by the workers). Above it requests are dropped unanswered.
    pub requests_per_ip_per_s: u32,
    pub requests_per_ip_burst: u32,
}

impl Default for Tftp {
    fn default() -> Self {
        Tftp {
            root: PathBuf::from("/srv/bootfarm/boot"),
            blksize_max: 1468,
            windowsize_max: 64,
            timeout_ms: 1000,
            timeout_min_ms: 50,
            retries_max: 6,
            sessions_max: 8192,
            sessions_per_ip_max: 8,
            timeout_option_max_s: 5,
            handshake_retries_max: 2,
            stall_max_ms: 30_000,
            transfer_lifetime_max_ms: 1_800_000,
            plain_rrq_subnets: vec!["0.0.0.0/0".into(), "::/0".into()],
            requests_per_ip_per_s: 200,
            requests_per_ip_burst: 1000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Http {
    pub request_line_bytes_max: usize,
    pub header_bytes_max: usize,
    pub headers_max: usize,
    pub connections_max: usize,
    pub connections_per_ip_max: usize,
    pub keepalive_idle_ms: u64,
    /// A request's headers must be complete within this time (slowloris).
    pub header_timeout_ms: u64,
    /// A response send must make progress within this time (a client that stops reading).
    pub send_timeout_ms: u64,
    /// Sends with at least this many body bytes use SEND_ZC (0 = never). Zero-copy pays off
    /// on real NICs; over loopback the kernel copies anyway and adds a notification.
    pub send_zc_min_bytes: u64,
}

impl Default for Http {
    fn default() -> Self {
        Http {
            request_line_bytes_max: 4096,
            header_bytes_max: 16 * 1024,
            headers_max: 64,
            connections_max: 8192,
            connections_per_ip_max: 64,
            keepalive_idle_ms: 60_000,
            header_timeout_ms: 10_000,
            send_timeout_ms: 30_000,
            send_zc_min_bytes: 0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Nbd {
    pub connections_max: usize,
    /// Connections from one client address (every worker together), as http.connections_per_ip_max.
    pub connections_per_ip_max: usize,
    /// When a new connection finds its address (or the server) at its connection limit, one
    /// connection of that scope idle (nothing asked, nothing in flight) for at least this long is
    /// cut to make room. Idle connections are never cut while nobody needs their place: a booted
    /// Linux target's kernel connection may sit idle for hours.
    pub idle_evict_ms: u64,
    /// Private-mode version files (`<vdisk>.private-*`) beside a vdisk's image beyond which a new
    /// private session is refused: each session that writes makes one.
    pub private_versions_max: usize,
    /// Which target ids (`vdisk@id`) a connection may name.
    pub target_ids: TargetIds,
    /// How long a boot token from the `/ipxe` script may create a target (a target it made
    /// reconnects later all the same).
    pub token_ttl_ms: u64,
    /// Requests in flight on one connection.
    pub queue_depth_max: usize,
    /// Largest READ/WRITE payload accepted (also advertised as the maximum block size).
    pub request_bytes_max: u32,
    /// Where write caches overflow to sparse files.
    pub cache_dir: PathBuf,
    pub cache_ram_bytes_per_target: u64,
    /// RAM pages of all targets' caches together; beyond it new blocks go to the overflow files.
    pub cache_ram_bytes_total_max: u64,
    /// RAM of the caches' tier mapped and faulted in at start and kept for the server's life
    /// (0 = none: pages are faulted in as targets first write them). Read at start only.
    pub cache_ram_prefault_bytes: u64,
    pub cache_bytes_per_target_max: u64,
    pub cache_bytes_total_max: u64,
    /// New targets one client address may hold (connected or kept for a reconnect).
    pub targets_per_address_max: usize,
    /// Zeroed (TRIM/WRITE_ZEROES) ranges one target's cache keeps, each counted as 64 bytes.
    pub cache_zero_ranges_per_target_max: usize,
    /// A target reconnecting within this time keeps its write cache (failover, network blip);
    /// a later connection is a new boot and starts clean. Kept short so that a quick reboot is
    /// not mistaken for a blip; a client that names itself per boot (`vdisk@id`) can go longer.
    pub cache_keep_after_disconnect_ms: u64,
    /// A target whose connections name a boot id (`vdisk@id#boot`, or a boot token) keeps its
    /// write cache this long after its last connection ended, for a reconnect of the same boot
    /// (a long outage, a failover back); a new boot id drops it at once.
    pub boot_cache_keep_max_ms: u64,
    /// Bytes of overflow-file blocks one connection copies into its reply batch; a READ past
    /// it goes out over several batches.
    pub reply_scratch_bytes_max: u64,
    /// Replies send overflow-file blocks from read-only mappings of the file (one copy, in
    /// the kernel's send) instead of a pread into the reply scratch first (two copies).
    pub cache_overflow_mapped: bool,
    /// Reply batches of at least this many bytes use SEND_ZC (0 = never), as http.send_zc_min_bytes.
    pub send_zc_min_bytes: u64,
    /// A reply send must make progress within this time (a client that stops reading).
    pub send_timeout_ms: u64,
    /// The handshake (greeting to GO/EXPORT_NAME) must end within this time.
    pub handshake_timeout_ms: u64,
    /// A GO for a private vdisk whose writer is still connected waits this long for that
    /// connection to end before it is refused (0 = refuse at once): a machine that reboots
    /// reconnects before the server has seen its old connection close.
    pub private_writer_wait_ms: u64,
    /// A folder for per-connection I/O traces (one CSV file per connection that reached an
    /// export: time, op, offset, length of every request); none = off.
    pub trace_dir: Option<PathBuf>,
    /// Bytes of one trace file; later lines of that connection are dropped and counted.
    pub trace_bytes_max: u64,
    /// Trace bytes waiting for the writer thread, all connections together; a chunk that would
    /// pass it is dropped and its lines counted (the workers never wait for the disk).
    pub trace_queue_bytes_max: u64,
}

impl Default for Nbd {
    fn default() -> Self {
        Nbd {
            connections_max: 2048,
            connections_per_ip_max: 64,
            idle_evict_ms: 60_000,
            private_versions_max: 64,
            target_ids: TargetIds::Bound,
            token_ttl_ms: 3_600_000,
            queue_depth_max: 128,
            request_bytes_max: 32 << 20,
            cache_dir: PathBuf::from("/var/cache/bootfarm"),
            cache_ram_bytes_per_target: 64 << 20,
            cache_ram_bytes_total_max: 8 << 30,
            cache_ram_prefault_bytes: 0,
            targets_per_address_max: 128,
            cache_bytes_per_target_max: 8 << 30,
            cache_bytes_total_max: 256 << 30,
            cache_zero_ranges_per_target_max: 65536,
            cache_keep_after_disconnect_ms: 15_000,
            boot_cache_keep_max_ms: 86_400_000,
            reply_scratch_bytes_max: 4 << 20,
            cache_overflow_mapped: true,
            send_zc_min_bytes: 0,
            send_timeout_ms: 30_000,
            handshake_timeout_ms: 10_000,
            private_writer_wait_ms: 2_000,
            trace_dir: None,
            trace_bytes_max: 64 << 20,
            trace_queue_bytes_max: 32 << 20,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Image {
    /// Most images in one chain (a version and all its parents).
    pub chain_depth_max: usize,
    /// Most files mapped at once (vdisk layers, and bootstrap files once per worker): the size
    /// of the SIGBUS guard's registry, fixed at start (image::guard).
    pub mappings_max: usize,
}

impl Default for Image {
    fn default() -> Self {
        Image { chain_depth_max: 16, mappings_max: crate::image::guard::MAPPINGS_MAX_DEFAULT }
    }
}

/// The policy for target ids named in NBD export names.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum TargetIds {
    /// Any id; its target is bound to the address that created it.
    #[default]
    Bound,
    /// Only boot tokens the `/ipxe` script handed out, from the address they were issued to
    /// (still bound to it). Connections without an id (the client address) are accepted.
    Token,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Shared read-only image; each target writes to its own cache, discarded at reboot.
    Standard,
    /// One writer at a time; writes go into a new differencing version.
    Private,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VdiskEntry {
    pub name: String,
    /// The newest version; parents are found through the image's own locators.
    pub path: PathBuf,
    #[serde(default = "default_mode")]
    pub mode: Mode,
    /// A Linux boot of this vdisk (`[vdisk.linux]`): `/ipxe` then loads this kernel and
    /// initramfs instead of `sanboot`, and the initramfs mounts the vdisk over NBD as root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linux: Option<super::linux::LinuxBoot>,
    /// How `/ipxe` boots it: over HTTP (`sanboot http://`) or iSCSI (`sanboot iscsi:`).
    #[serde(default)]
    pub sanboot: super::iscsi::Sanboot,
}

fn default_mode() -> Mode {
    Mode::Standard
}

/// How SO_REUSEPORT picks the worker of a new flow.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Steer {
    /// The kernel's hash of the flow's addresses and ports: even spread whatever the NIC.
    #[default]
    Hash,
    /// The worker pinned on the CPU that processes the flow's first packet, so that the flow
    /// stays on one core. For NICs whose receive queues are spread over the cores (RSS/RPS)
    /// and for clients on the same host; with one receive queue, every flow would land on
    /// the worker of the core that takes its interrupts.
    Cpu,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Affinity {
    #[default]
    None,
    BestEffort,
    Fixed,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Farm {
    /// Bounded load: no server above (1 + epsilon) x its fair share of active targets.
    pub load_epsilon: f64,
    pub affinity: Affinity,
    pub health_interval_ms: u64,
    pub health_timeout_ms: u64,
    pub health_failures_max: u32,
    pub health_successes_min: u32,
    /// A target counts as active on a server while it read a vdisk within this time (HTTP) or
    /// has an NBD connection.
    pub active_window_ms: u64,
    /// A target counts as booting (for max_booting) this long after its first read.
    pub boot_window_ms: u64,
    /// Most targets the HTTP load map holds (the least recently read go first).
    pub targets_max: usize,
    /// Most distinct `?mac=` targets one client address may add to the load figures; beyond,
    /// its reads count as the address itself (one target).
    pub targets_per_address_max: usize,
    /// Key of the boot tokens (first 16 bytes; the same file on every node, so a target may
    /// fail over). Unset: a random key per process.
    pub token_key_file: Option<PathBuf>,
    pub server: Vec<FarmServer>,
}

impl Default for Farm {
    fn default() -> Self {
        Farm {
            load_epsilon: 0.25,
            affinity: Affinity::None,
            health_interval_ms: 1000,
            health_timeout_ms: 500,
            health_failures_max: 3,
            health_successes_min: 2,
            active_window_ms: 60_000,
            boot_window_ms: 120_000,
            targets_max: 65_536,
            targets_per_address_max: 16,
            token_key_file: None,
            server: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FarmServer {
    pub name: String,
    pub address: IpAddr,
    #[serde(default = "default_power")]
    pub power: f64,
    /// Subnets this server prefers (CIDR), for subnet affinity.
    #[serde(default)]
    pub subnets: Vec<String>,
    /// vdisks this server holds; empty = all of them.
    #[serde(default)]
    pub vdisks: Vec<String>,
    /// PVS "maximum devices booting"; 0 = no limit.
    #[serde(default)]
    pub max_booting: u32,
    /// HTTP port of this server (defaults to this node's http_port).
    #[serde(default)]
    pub http_port: Option<u16>,
}

fn default_power() -> f64 {
    1.0
}

pub const EXAMPLE: &str = r#"# bootfarm configuration. Every key is optional; the values shown are the defaults unless
# marked "example". Relative paths are resolved against this file's folder.
# Check a file with:  bootfarm config check FILE

[server]
name = "node1"              # this node's name in [[farm.server]]
listen = "127.0.0.1"        # every service binds here (0.0.0.0 / :: for all interfaces)
tftp_port = 69              # UDP
http_port = 8080            # TCP: /boot, /vdisk, /ipxe, /metrics, /healthz, /api/status
nbd_port = 10809            # TCP
iscsi_port = 3260           # TCP, the iSCSI target; 0 = off
workers = 0                 # 0 = one pinned worker per core
steer = "hash"              # which worker takes a new flow: hash (the kernel's SO_REUSEPORT hash,
                            # even spread) | cpu (the worker on the core that received its first
                            # packet: the flow stays on one core; for multi-queue NICs (RSS) and
                            # local clients, never for a NIC with a single receive queue)
shutdown_grace_ms = 10000   # SIGTERM/SIGINT: transfers in flight get this long to finish
reload_poll_ms = 500        # the file is also reloaded on SIGHUP
reload_debounce_ms = 300    # a file is read only once unchanged (size, mtime) this long, SIGHUP too
reload_allow_no_vdisks = false  # a reload leaving no [[vdisk]] is refused (half-written file?)
                                # unless this is true; a restart always takes the file as it is

[tftp]
root = "/srv/bootfarm/boot" # bootstrap files (TFTP and HTTP /boot/<file>), read-only
blksize_max = 1468          # RFC 2348 cap; 1468 fits a 1500-byte MTU
windowsize_max = 64         # RFC 7440 cap
timeout_ms = 1000           # retransmission timeout until the round trip is measured
timeout_min_ms = 50         # floor of the adaptive timeout (a client's RFC 2349 timeout is used as is)
retries_max = 6
sessions_max = 8192         # concurrent transfers, all clients
sessions_per_ip_max = 8
timeout_option_max_s = 5    # a client's RFC 2349 timeout above this is declined (adaptive timer instead)
handshake_retries_max = 2   # OACK / option-less DATA 1 resends before the client's first ACK
                            # (spoofed requests never ACK: reaped after 1+2+4 x timeout_ms)
stall_max_ms = 30000        # a block unacknowledged this long, resends included, ends the transfer
transfer_lifetime_max_ms = 1800000   # 30 min: ~3x a 500 MB boot.wim in lockstep over a 1 ms round trip
plain_rrq_subnets = ["0.0.0.0/0", "::/0"]   # who gets answers to option-less (RFC 1350) RRQs, which
                            # are answered with DATA 1 without a handshake and can be reflected;
                            # e.g. ["10.0.0.0/8"]. Requests with options are served from anywhere
requests_per_ip_per_s = 200    # new transfers per source address per second (token bucket),
requests_per_ip_burst = 1000   # and at once (a storm behind one NAT); above it requests are dropped unanswered

[http]
request_line_bytes_max = 4096
header_bytes_max = 16384
headers_max = 64
connections_max = 8192
connections_per_ip_max = 64
keepalive_idle_ms = 60000
header_timeout_ms = 10000   # slowloris guard
send_timeout_ms = 30000     # a response must make progress this often (clients that stop reading)
send_zc_min_bytes = 0       # bodies of at least this size use SEND_ZC (0 = off; try 65536 on real NICs)

[nbd]
connections_max = 2048
connections_per_ip_max = 64         # one address cannot take every connection
idle_evict_ms = 60000               # at a connection limit, a connection idle this long (in the full
                                    # scope: that address, or all) is cut for the newcomer; never otherwise
private_versions_max = 64           # private mode: sessions are refused once a vdisk has this many
                                    # <vdisk>.private-* version files (one per session that wrote)
target_ids = "bound"                # vdisk@id: "bound" = any id, bound to the address that made the
                                    # target; "token" = only boot tokens from /ipxe, from their address
token_ttl_ms = 3600000              # a boot token may create a target this long after it was issued
queue_depth_max = 128               # requests in flight per connection
request_bytes_max = 33554432        # 32 MiB
cache_dir = "/var/cache/bootfarm"   # write caches overflow here
cache_ram_bytes_per_target = 67108864       # 64 MiB in RAM, then the sparse file
cache_ram_bytes_total_max = 8589934592      # 8 GiB of RAM for all targets, then their sparse files
                                            # (a fixed figure, the same on every node: raise it with the RAM)
cache_ram_prefault_bytes = 0                # RAM of that tier committed (faulted in) at start, so first
                                            # boots write into ready pages; 0 = as targets write (at
                                            # most cache_ram_bytes_total_max; read at start only)
targets_per_address_max = 128               # write caches one client address may hold (NAT'd labs:
                                            # raise it; bootstorm from one host needs one per target)
cache_bytes_per_target_max = 8589934592     # 8 GiB: beyond it writes fail with ENOSPC
cache_bytes_total_max = 274877906944        # 256 GiB
cache_zero_ranges_per_target_max = 65536    # TRIM/WRITE_ZEROES ranges kept (coalesced; 64 bytes each,
                                            # counted in the cache bytes); beyond it ENOSPC
cache_keep_after_disconnect_ms = 15000      # a reconnect within this keeps the cache (blip, failover);
                                            # later = a new boot, the cache is discarded
boot_cache_keep_max_ms = 86400000           # 24 h: a target naming a boot id (vdisk@id#boot, a boot
                                            # token) finds its writes on a reconnect of that boot
                                            # this long after its last connection; a new boot id
                                            # drops the cache at once
reply_scratch_bytes_max = 4194304   # 4 MiB per connection of overflow-file blocks copied for replies;
                                    # larger READs go out over several batches
cache_overflow_mapped = true        # replies send overflow-file blocks from read-only mappings of the
                                    # file (one copy); false: pread into the scratch above first
send_zc_min_bytes = 0               # reply batches of at least this size use SEND_ZC (0 = off)
send_timeout_ms = 30000             # a client that stops reading is cut off
handshake_timeout_ms = 10000        # a client that never finishes the handshake is cut off
private_writer_wait_ms = 2000       # a private vdisk's next writer waits this long for the last one to go
# trace_dir = "traces"              # example: one CSV file per connection, a line per request
                                    # (us since connect, op, offset, length); off unless set
trace_bytes_max = 67108864          # 64 MiB per trace file; later lines are dropped and counted
trace_queue_bytes_max = 33554432    # 32 MiB of lines waiting for the disk, all connections

[iscsi]                     # every vdisk is target <iqn_prefix>:<name>, LUN 0 (README: "iSCSI")
iqn_prefix = "iqn.2026-12.org.bootfarm"
# chap_user = "bootfarm"    # example: CHAP (MD5) required with this user name; unset = no authentication
# chap_secret_file = "chap.secret"   # example: the secret, 12-255 bytes (trailing newline dropped)
connections_max = 2048
connections_per_ip_max = 64
idle_evict_ms = 60000       # at a connection limit, a connection idle this long is cut for the newcomer
login_timeout_ms = 15000    # the login phase must end within this
text_bytes_max = 65536      # key=value text of one login/text exchange, across PDUs
max_recv_data_segment_length = 262144   # largest data segment an initiator may send us
max_burst_length = 1048576  # offered: data per R2T and per Data-In sequence
first_burst_length = 65536  # offered: unsolicited data per write (immediate + Data-Out)
immediate_data = true       # offered (AND of both sides)
initial_r2t = false         # offered (OR of both sides; true = no unsolicited Data-Out)
commands_in_flight_max = 128    # the CmdSN window
registrants_max = 64         # persistent-reservation registrants kept per vdisk
max_outstanding_r2t = 8     # offered: R2Ts in flight per command
nop_in_interval_ms = 30000  # a connection idle this long gets a NOP-In ping (0 = never)
nop_in_timeout_ms = 30000   # ... and is closed if the ping is not answered in this time
send_timeout_ms = 30000     # an initiator that stops reading is cut off
send_zc_min_bytes = 0       # batches of at least this size use SEND_ZC (0 = off)
portal_group_tag = 1        # TargetPortalGroupTag of this node's portal
# Write caches: the same as NBD's ([nbd] cache_* keys, keep rules, private mode's one writer).

[image]
chain_depth_max = 16
mappings_max = 65536        # files mapped at once (vdisk layers; bootstrap files per worker);
                            # takes effect at the next restart

# One table per served vDisk (example).
[[vdisk]]
name = "win10"                             # URL and NBD export name: letters, digits, . _ -
path = "/srv/bootfarm/vdisks/win10.vhdx"   # newest version; parents resolved from the image
mode = "standard"                          # standard | private
sanboot = "http"                           # /ipxe boots it over http | iscsi (iBFT: Windows, Linux)

# A Linux vdisk (example): /ipxe loads a kernel and an initramfs (contrib/initramfs/) that
# mounts the vdisk over NBD as its root file system (README: "Linux targets").
# [[vdisk]]
# name = "lab"
# path = "/srv/bootfarm/vdisks/lab.vhdx"
# [vdisk.linux]
# kernel = "linux/vmlinuz"                 # files under tftp.root (served at /boot/<file>)
# initrd = "linux/initrd.img"
# cmdline = "{ip} {nbd}"                   # {ip}: the address iPXE got (ip=...); {nbd}: the
#                                          # bootfarm.* keys (servers, port, export, cache)
# cache = "server"                         # server: writes in the server's write cache (read-write
#                                          # root); device: read-only root + overlay in the target's RAM

[farm]
load_epsilon = 0.25         # bounded load: at most (1+e) x fair share per server
affinity = "none"           # none | best-effort | fixed
health_interval_ms = 1000
health_timeout_ms = 500
health_failures_max = 3     # failed probes before a server leaves the table
health_successes_min = 2    # good probes before it comes back
active_window_ms = 60000    # a target read within this counts as active (load figures)
boot_window_ms = 120000     # ...and as booting this long after its first read (max_booting)
targets_max = 65536         # targets the load map holds (least recently read go first)
targets_per_address_max = 16  # distinct ?mac= targets one client address adds; beyond, it counts as one
# token_key_file = "token.key"  # example: 16+ random bytes, the same on every node (head -c 32 /dev/urandom);
                              # unset = a random key per process (tokens only valid on the issuing node)

[pxe]                       # ProxyDHCP beside the site's DHCP server (README: "PXE")
enabled = false             # off unless configured: it answers every PXE client on the segment
listen = "0.0.0.0"          # broadcasts reach only 0.0.0.0; choose the segment with `interface`
interface = ""              # SO_BINDTODEVICE (e.g. "eth1"); empty = all interfaces
proxy_port = 67             # needs CAP_NET_BIND_SERVICE (setcap cap_net_bind_service=+ep, or root)
pxe_port = 4011             # PXE boot-server requests (UEFI firmware); 0 = not served
client_port = 68            # broadcast answers go here; only tests change it
# server_address = "10.0.0.1"  # example: option 54; unset = the address the request arrived on
bios_boot_file = "undionly.kpxe"  # BIOS PXE (arch 0), over TFTP from tftp.root
uefi_boot_file = "ipxe.efi"       # UEFI PXE x64 (arch 7, 9), over TFTP
http_boot_file = "ipxe.efi"       # UEFI HTTP Boot x64 (arch 16): http://<server>:<http_port>/boot/<file>
uefi_via_pxe_port = true    # UEFI PXE gets its file in the ACK on pxe_port (as EDK2 expects);
                            # false = in the offer, with option 43 {6: 8} as for BIOS
relay = "answer"            # requests through a DHCP relay (giaddr): answer | ignore
answers_per_mac_per_s = 4   # answers per client MAC per second (token bucket),
answers_per_mac_burst = 16  # and at once; above, requests are dropped and counted
# iPXE clients (user class iPXE or option 175) always get http://<server>:<http_port>/ipxe?mac=${mac}

[console]                   # the operator's web console at http://<server>:<http_port>/ (README: "Console")
# token = "…"               # example: allows POST /api/drain and /api/resume (Authorization: Bearer …);
                            # unset = read-only. 16+ printable characters: head -c 24 /dev/urandom | base64
events_max = 16             # /api/events streams open at once on this node (one per browser tab); beyond: 503
event_interval_ms = 1000    # how often a stream gets the status (or a keep-alive comment)

# One table per server of the farm (example); empty = a farm of this node alone.
[[farm.server]]
name = "node1"
address = "127.0.0.1"
power = 1.0                 # PVS power rating: relative weight
subnets = []                # e.g. ["10.1.0.0/16"] for subnet affinity
vdisks = []                 # empty = holds every vdisk
max_booting = 0             # PVS "maximum devices booting"; 0 = no limit
"#;
