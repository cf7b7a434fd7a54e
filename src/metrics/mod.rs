//! Counters and gauges with a Prometheus text rendering. Workers own their counters (one
//! cache-line-padded block each, written with relaxed adds by that worker only) and the
//! renderer sums them; nothing on the data path takes a lock.

use crossbeam_utils::CachePadded;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Per-worker counters, one slot per [`Counter`].
pub struct WorkerCounters {
    values: CachePadded<[AtomicU64; Counter::COUNT]>,
}

impl Default for WorkerCounters {
    fn default() -> Self {
        WorkerCounters { values: CachePadded::new(std::array::from_fn(|_| AtomicU64::new(0))) }
    }
}

impl WorkerCounters {
    #[inline]
    pub fn add(&self, c: Counter, n: u64) {
        self.values[c as usize].fetch_add(n, Ordering::Relaxed);
    }
    #[inline]
    pub fn get(&self, c: Counter) -> u64 {
        self.values[c as usize].load(Ordering::Relaxed)
    }
}

macro_rules! counters {
    ($($name:ident => ($metric:literal, $labels:literal, $help:literal)),* $(,)?) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[repr(usize)]
        pub enum Counter { $($name),* }
        impl Counter {
            pub const ALL: &'static [Counter] = &[$(Counter::$name),*];
            pub const COUNT: usize = Self::ALL.len();
            /// (metric name, label set, help)
            pub fn describe(self) -> (&'static str, &'static str, &'static str) {
                match self { $(Counter::$name => ($metric, $labels, $help)),* }
            }
        }
    };
}

counters! {
    ConfigReloadsOk => ("bootfarm_config_reloads_total", "result=\"ok\"", "Configuration reloads, by result."),
    ConfigReloadsFailed => ("bootfarm_config_reloads_total", "result=\"refused\"", "Configuration reloads, by result."),
    ImageDamaged => ("bootfarm_image_files_damaged_total", "", "Served files (vdisk images, bootstrap files) found changed in place or truncated: refused until replaced."),
    ImageReplaced => ("bootfarm_image_files_replaced_total", "", "Vdisk image files found replaced by a new file at their path (re-opened by a reload)."),
    TftpFailedFileChanged => ("bootfarm_tftp_transfers_failed_total", "reason=\"file_changed\"", "TFTP transfers that ended without completing, by reason."),
    HttpDamaged => ("bootfarm_http_damaged_refusals_total", "", "HTTP responses refused (503) or cut off because their file or vdisk image changed in place on the server."),
    NbdDamaged => ("bootfarm_nbd_damaged_refusals_total", "", "NBD requests (EIO) and handshakes refused because the vdisk image changed in place on the server."),
    TftpStarted => ("bootfarm_tftp_transfers_started_total", "", "TFTP read transfers started."),
    TftpCompleted => ("bootfarm_tftp_transfers_completed_total", "", "TFTP transfers whose last block was acknowledged."),
    TftpFailedTimeout => ("bootfarm_tftp_transfers_failed_total", "reason=\"timeout\"", "TFTP transfers that ended without completing, by reason."),
    TftpFailedClient => ("bootfarm_tftp_transfers_failed_total", "reason=\"client_error\"", "TFTP transfers that ended without completing, by reason."),
    TftpFailedShutdown => ("bootfarm_tftp_transfers_failed_total", "reason=\"shutdown\"", "TFTP transfers that ended without completing, by reason."),
    TftpFailedLifetime => ("bootfarm_tftp_transfers_failed_total", "reason=\"lifetime\"", "TFTP transfers that ended without completing, by reason."),
    TftpFailedEvicted => ("bootfarm_tftp_transfers_failed_total", "reason=\"evicted_unconfirmed\"", "TFTP transfers that ended without completing, by reason."),
    TftpDroppedPlain => ("bootfarm_tftp_requests_dropped_total", "reason=\"plain_rrq_subnet\"", "TFTP requests dropped without an answer (nothing reflected), by reason."),
    TftpDroppedRate => ("bootfarm_tftp_requests_dropped_total", "reason=\"rate_limit\"", "TFTP requests dropped without an answer (nothing reflected), by reason."),
    TftpRefusedNotFound => ("bootfarm_tftp_requests_refused_total", "reason=\"not_found\"", "TFTP requests answered with an ERROR, by reason."),
    TftpRefusedAccess => ("bootfarm_tftp_requests_refused_total", "reason=\"access\"", "TFTP requests answered with an ERROR, by reason."),
    TftpRefusedOption => ("bootfarm_tftp_requests_refused_total", "reason=\"option\"", "TFTP requests answered with an ERROR, by reason."),
    TftpRefusedLimit => ("bootfarm_tftp_requests_refused_total", "reason=\"session_limit\"", "TFTP requests answered with an ERROR, by reason."),
    TftpRefusedWrite => ("bootfarm_tftp_requests_refused_total", "reason=\"write_request\"", "TFTP requests answered with an ERROR, by reason."),
    TftpMalformed => ("bootfarm_tftp_packets_malformed_total", "", "TFTP packets that could not be parsed (answered with ERROR 4 or dropped)."),
    TftpWrongTid => ("bootfarm_tftp_packets_wrong_tid_total", "", "Packets to a transfer port from another address (answered with ERROR 5)."),
    TftpRetransmits => ("bootfarm_tftp_retransmitted_blocks_total", "", "DATA blocks sent again after a loss or timeout."),
    TftpDataBytes => ("bootfarm_tftp_data_bytes_total", "", "File bytes sent in DATA packets, retransmissions included."),
    TftpDataPackets => ("bootfarm_tftp_data_packets_total", "", "DATA packets sent."),
    TftpSendErrors => ("bootfarm_tftp_send_errors_total", "", "sendmsg completions with an error."),
    HttpConnections => ("bootfarm_http_connections_accepted_total", "", "HTTP connections accepted."),
    HttpRefusedLimit => ("bootfarm_http_connections_refused_total", "", "HTTP connections answered 503 at a connection limit."),
    HttpIdleEvicted => ("bootfarm_http_idle_evicted_total", "", "Idle HTTP connections (keep-alive, or connected without a request) closed to admit a new one at http.connections_max."),
    HttpResponses2xx => ("bootfarm_http_responses_total", "class=\"2xx\"", "HTTP responses, by status class."),
    HttpResponses3xx => ("bootfarm_http_responses_total", "class=\"3xx\"", "HTTP responses, by status class."),
    HttpResponses4xx => ("bootfarm_http_responses_total", "class=\"4xx\"", "HTTP responses, by status class."),
    HttpResponses5xx => ("bootfarm_http_responses_total", "class=\"5xx\"", "HTTP responses, by status class."),
    HttpBadRequests => ("bootfarm_http_bad_requests_total", "", "Requests refused before routing (400/405/413/414/431/505)."),
    HttpTimeoutHeader => ("bootfarm_http_timeouts_total", "kind=\"header\"", "Connections closed by a timeout, by kind (header = slowloris)."),
    HttpTimeoutIdle => ("bootfarm_http_timeouts_total", "kind=\"idle\"", "Connections closed by a timeout, by kind (header = slowloris)."),
    HttpAcceptErrors => ("bootfarm_http_accept_errors_total", "", "Accepts that failed for lack of descriptors or memory (accepting pauses 100 ms)."),
    HttpTimeoutSend => ("bootfarm_http_timeouts_total", "kind=\"send\"", "Connections closed by a timeout, by kind (header = slowloris)."),
    HttpBodyBytes => ("bootfarm_http_sent_bytes_total", "", "Bytes written to HTTP connections (headers and bodies)."),
    NbdConnections => ("bootfarm_nbd_connections_accepted_total", "", "NBD connections accepted."),
    NbdRefusedLimit => ("bootfarm_nbd_connections_refused_total", "limit=\"total\"", "NBD connections closed at once at a connection limit, by limit (total: nbd.connections_max; per_ip: nbd.connections_per_ip_max)."),
    NbdRefusedPerIp => ("bootfarm_nbd_connections_refused_total", "limit=\"per_ip\"", "NBD connections closed at once at a connection limit, by limit (total: nbd.connections_max; per_ip: nbd.connections_per_ip_max)."),
    NbdAcceptErrors => ("bootfarm_nbd_accept_errors_total", "", "NBD accepts that failed for lack of descriptors or memory (accepting pauses 100 ms)."),
    NbdIdleEvicted => ("bootfarm_nbd_idle_evicted_total", "", "Idle NBD connections cut to make room for a connection refused at a limit (nbd.idle_evict_ms)."),
    NbdOperatorCut => ("bootfarm_nbd_operator_disconnects_total", "", "NBD connections cut by an operator's disconnect of their target (POST /api/targets/<id>/disconnect); the target's write cache is kept for its reconnect."),
    NbdReads => ("bootfarm_nbd_reads_total", "", "NBD READ requests answered with data."),
    NbdWrites => ("bootfarm_nbd_writes_total", "", "NBD WRITE, WRITE_ZEROES and TRIM requests applied to a write cache."),
    NbdWrittenBytes => ("bootfarm_nbd_written_bytes_total", "", "Bytes written into write caches (WRITE payloads)."),
    NbdTraceDropped => ("bootfarm_nbd_trace_lines_dropped_total", "", "NBD trace lines (nbd.trace_dir) not written: past nbd.trace_bytes_max, the writer's queue full (nbd.trace_queue_bytes_max), or a failed write."),
    NbdNoSpace => ("bootfarm_nbd_nospace_total", "", "Writes refused with ENOSPC at a write-cache limit."),
    NbdTimeoutSend => ("bootfarm_nbd_timeouts_total", "kind=\"send\"", "NBD connections cut off by a timeout, by kind (send: the client stopped reading; handshake: never finished it)."),
    NbdTimeoutHandshake => ("bootfarm_nbd_timeouts_total", "kind=\"handshake\"", "NBD connections cut off by a timeout, by kind (send: the client stopped reading; handshake: never finished it)."),
    NbdMisplaced => ("bootfarm_nbd_misplaced_total", "", "NBD targets served here while the farm placement puts another server first (bytes are the same; the boot script sends targets to the first)."),
    NbdRefusedTargets => ("bootfarm_nbd_targets_refused_total", "reason=\"targets_per_address\"", "NBD targets refused, by reason (foreign_target: the target was created from another address; token: not a boot token issued to this address, nbd.target_ids = token; targets_per_address: the client address already held nbd.targets_per_address_max write caches)."),
    NbdRefusedForeign => ("bootfarm_nbd_targets_refused_total", "reason=\"foreign_target\"", "NBD targets refused, by reason (foreign_target: the target was created from another address; token: not a boot token issued to this address, nbd.target_ids = token; targets_per_address: the client address already held nbd.targets_per_address_max write caches)."),
    NbdRefusedToken => ("bootfarm_nbd_targets_refused_total", "reason=\"token\"", "NBD targets refused, by reason (foreign_target: the target was created from another address; token: not a boot token issued to this address, nbd.target_ids = token; targets_per_address: the client address already held nbd.targets_per_address_max write caches)."),
    NbdDroppedNewBoot => ("bootfarm_nbd_caches_dropped_total", "reason=\"new_boot\"", "Write caches dropped, by reason (new_boot: the target started a new boot, its previous boot's cache goes at once; expired: not reconnected within nbd.cache_keep_after_disconnect_ms, or nbd.boot_cache_keep_max_ms for a target with a boot id; disconnected: its last connection ended with a keep time of 0; vdisk_changed: the vdisk changed since it was made)."),
    NbdDroppedExpired => ("bootfarm_nbd_caches_dropped_total", "reason=\"expired\"", "Write caches dropped, by reason (new_boot: the target started a new boot, its previous boot's cache goes at once; expired: not reconnected within nbd.cache_keep_after_disconnect_ms, or nbd.boot_cache_keep_max_ms for a target with a boot id; disconnected: its last connection ended with a keep time of 0; vdisk_changed: the vdisk changed since it was made)."),
    NbdDroppedDisconnected => ("bootfarm_nbd_caches_dropped_total", "reason=\"disconnected\"", "Write caches dropped, by reason (new_boot: the target started a new boot, its previous boot's cache goes at once; expired: not reconnected within nbd.cache_keep_after_disconnect_ms, or nbd.boot_cache_keep_max_ms for a target with a boot id; disconnected: its last connection ended with a keep time of 0; vdisk_changed: the vdisk changed since it was made)."),
    NbdDroppedVdiskChanged => ("bootfarm_nbd_caches_dropped_total", "reason=\"vdisk_changed\"", "Write caches dropped, by reason (new_boot: the target started a new boot, its previous boot's cache goes at once; expired: not reconnected within nbd.cache_keep_after_disconnect_ms, or nbd.boot_cache_keep_max_ms for a target with a boot id; disconnected: its last connection ended with a keep time of 0; vdisk_changed: the vdisk changed since it was made)."),
    NbdRefusedPrivate => ("bootfarm_nbd_private_refused_total", "", "Connections refused because a private-mode vdisk already had its writer."),
    NbdErrors => ("bootfarm_nbd_error_replies_total", "", "NBD requests answered with an error (EINVAL, EOVERFLOW, ENOSPC, EIO)."),
    NbdSentBytes => ("bootfarm_nbd_sent_bytes_total", "", "Bytes written to NBD connections."),
    IscsiConnections => ("bootfarm_iscsi_connections_accepted_total", "", "iSCSI connections accepted."),
    IscsiRefusedLimit => ("bootfarm_iscsi_connections_refused_total", "limit=\"total\"", "iSCSI connections closed at once at a connection limit, by limit (total: iscsi.connections_max; per_ip: iscsi.connections_per_ip_max)."),
    IscsiRefusedPerIp => ("bootfarm_iscsi_connections_refused_total", "limit=\"per_ip\"", "iSCSI connections closed at once at a connection limit, by limit (total: iscsi.connections_max; per_ip: iscsi.connections_per_ip_max)."),
    IscsiAcceptErrors => ("bootfarm_iscsi_accept_errors_total", "", "iSCSI accepts that failed for lack of descriptors or memory (accepting pauses 100 ms)."),
    IscsiIdleEvicted => ("bootfarm_iscsi_idle_evicted_total", "", "Idle iSCSI connections cut to make room for a connection refused at a limit (iscsi.idle_evict_ms)."),
    IscsiTimeoutSend => ("bootfarm_iscsi_timeouts_total", "kind=\"send\"", "iSCSI connections cut off by a timeout, by kind (send: the initiator stopped reading; login: never finished logging in; nop: did not answer a NOP-In ping)."),
    IscsiTimeoutLogin => ("bootfarm_iscsi_timeouts_total", "kind=\"login\"", "iSCSI connections cut off by a timeout, by kind (send: the initiator stopped reading; login: never finished logging in; nop: did not answer a NOP-In ping)."),
    IscsiTimeoutNop => ("bootfarm_iscsi_timeouts_total", "kind=\"nop\"", "iSCSI connections cut off by a timeout, by kind (send: the initiator stopped reading; login: never finished logging in; nop: did not answer a NOP-In ping)."),
    IscsiDamaged => ("bootfarm_iscsi_damaged_refusals_total", "", "iSCSI commands (MEDIUM ERROR) and logins refused because the vdisk image changed in place on the server."),
    IscsiSentBytes => ("bootfarm_iscsi_sent_bytes_total", "", "Bytes written to iSCSI connections."),
    IscsiLoginsNormal => ("bootfarm_iscsi_logins_total", "session=\"normal\"", "iSCSI logins that reached full feature phase, by session type."),
    IscsiLoginsDiscovery => ("bootfarm_iscsi_logins_total", "session=\"discovery\"", "iSCSI logins that reached full feature phase, by session type."),
    IscsiLoginFailedAuth => ("bootfarm_iscsi_logins_failed_total", "reason=\"auth\"", "iSCSI logins refused, by reason (auth: CHAP failed; not_found: no such target; authz: the target's write cache belongs to another address or the initiator name is no boot token under nbd.target_ids = token; busy: a private vdisk has its writer; resources: nbd.targets_per_address_max; protocol: a malformed login; timeout: iscsi.login_timeout_ms)."),
    IscsiLoginFailedNotFound => ("bootfarm_iscsi_logins_failed_total", "reason=\"not_found\"", "iSCSI logins refused, by reason (auth: CHAP failed; not_found: no such target; authz: the target's write cache belongs to another address or the initiator name is no boot token under nbd.target_ids = token; busy: a private vdisk has its writer; resources: nbd.targets_per_address_max; protocol: a malformed login; timeout: iscsi.login_timeout_ms)."),
    IscsiLoginFailedAuthz => ("bootfarm_iscsi_logins_failed_total", "reason=\"authz\"", "iSCSI logins refused, by reason (auth: CHAP failed; not_found: no such target; authz: the target's write cache belongs to another address or the initiator name is no boot token under nbd.target_ids = token; busy: a private vdisk has its writer; resources: nbd.targets_per_address_max; protocol: a malformed login; timeout: iscsi.login_timeout_ms)."),
    IscsiLoginFailedBusy => ("bootfarm_iscsi_logins_failed_total", "reason=\"busy\"", "iSCSI logins refused, by reason (auth: CHAP failed; not_found: no such target; authz: the target's write cache belongs to another address or the initiator name is no boot token under nbd.target_ids = token; busy: a private vdisk has its writer; resources: nbd.targets_per_address_max; protocol: a malformed login; timeout: iscsi.login_timeout_ms)."),
    IscsiLoginFailedResources => ("bootfarm_iscsi_logins_failed_total", "reason=\"resources\"", "iSCSI logins refused, by reason (auth: CHAP failed; not_found: no such target; authz: the target's write cache belongs to another address or the initiator name is no boot token under nbd.target_ids = token; busy: a private vdisk has its writer; resources: nbd.targets_per_address_max; protocol: a malformed login; timeout: iscsi.login_timeout_ms)."),
    IscsiLoginFailedProtocol => ("bootfarm_iscsi_logins_failed_total", "reason=\"protocol\"", "iSCSI logins refused, by reason (auth: CHAP failed; not_found: no such target; authz: the target's write cache belongs to another address or the initiator name is no boot token under nbd.target_ids = token; busy: a private vdisk has its writer; resources: nbd.targets_per_address_max; protocol: a malformed login; timeout: iscsi.login_timeout_ms)."),
    IscsiLoginFailedTimeout => ("bootfarm_iscsi_logins_failed_total", "reason=\"timeout\"", "iSCSI logins refused, by reason (auth: CHAP failed; not_found: no such target; authz: the target's write cache belongs to another address or the initiator name is no boot token under nbd.target_ids = token; busy: a private vdisk has its writer; resources: nbd.targets_per_address_max; protocol: a malformed login; timeout: iscsi.login_timeout_ms)."),
    IscsiCommandsRead => ("bootfarm_iscsi_commands_total", "kind=\"read\"", "iSCSI SCSI commands, by kind (read, write, other: everything else; check: answered CHECK CONDITION, any kind)."),
    IscsiCommandsWrite => ("bootfarm_iscsi_commands_total", "kind=\"write\"", "iSCSI SCSI commands, by kind (read, write, other: everything else; check: answered CHECK CONDITION, any kind)."),
    IscsiCommandsOther => ("bootfarm_iscsi_commands_total", "kind=\"other\"", "iSCSI SCSI commands, by kind (read, write, other: everything else; check: answered CHECK CONDITION, any kind)."),
    IscsiCommandsCheck => ("bootfarm_iscsi_commands_total", "kind=\"check\"", "iSCSI SCSI commands, by kind (read, write, other: everything else; check: answered CHECK CONDITION, any kind)."),
    IscsiReadBytes => ("bootfarm_iscsi_read_bytes_total", "", "Bytes sent as Data-In for READ commands."),
    IscsiWrittenBytes => ("bootfarm_iscsi_written_bytes_total", "", "Bytes of write data (immediate, unsolicited and solicited Data-Out) put into write caches."),
    IscsiR2ts => ("bootfarm_iscsi_r2ts_total", "", "R2Ts sent (solicited write data)."),
    IscsiRejects => ("bootfarm_iscsi_rejects_total", "", "Reject PDUs sent (unknown opcodes, SNACK, bad fields, protocol errors)."),
    IscsiProtocolErrors => ("bootfarm_iscsi_protocol_errors_total", "", "iSCSI connections closed for a protocol error (oversized segments, digest errors, Data-Out beyond a burst, bad sequence)."),
    IscsiWindowDrops => ("bootfarm_iscsi_cmdsn_window_drops_total", "", "Commands dropped because their CmdSN was outside the window (RFC 7143 4.2.2.1)."),
    IscsiTaskMgmt => ("bootfarm_iscsi_task_management_total", "", "Task management requests answered."),
    IscsiNoSpace => ("bootfarm_iscsi_nospace_total", "", "Writes refused (SPACE ALLOCATION FAILED) at a write-cache limit."),
    FarmTargetsEvicted => ("bootfarm_farm_load_targets_evicted_total", "", "Targets dropped from the farm load map at farm.targets_max (least recently read first)."),
    FarmTargetsPerAddress => ("bootfarm_farm_load_targets_as_address_total", "", "New ?mac= targets counted as their client address, which had farm.targets_per_address_max distinct targets already."),
    RecvBuffersExhausted => ("bootfarm_recv_buffers_exhausted_total", "", "Multishot receives stopped because every provided buffer was in use (re-armed)."),
    PxeAnswersBios => ("bootfarm_pxe_answers_total", "kind=\"bios\"", "ProxyDHCP answers sent (one per request at most), by client kind."),
    PxeAnswersUefi => ("bootfarm_pxe_answers_total", "kind=\"uefi\"", "ProxyDHCP answers sent (one per request at most), by client kind."),
    PxeAnswersUefiHttp => ("bootfarm_pxe_answers_total", "kind=\"uefi_http\"", "ProxyDHCP answers sent (one per request at most), by client kind."),
    PxeAnswersIpxe => ("bootfarm_pxe_answers_total", "kind=\"ipxe\"", "ProxyDHCP answers sent (one per request at most), by client kind."),
    PxeMalformed => ("bootfarm_pxe_packets_malformed_total", "", "DHCP datagrams dropped unparsed (truncated, oversized, bad option lengths, no magic cookie)."),
    PxeIgnoredNotPxe => ("bootfarm_pxe_requests_ignored_total", "reason=\"not_pxe\"", "DHCP datagrams the PXE service left unanswered, by reason (not_pxe: no option 60 PXEClient/HTTPClient, the site DHCP server's; not_for_proxy: a reply or a message type the port does not answer; arch: no boot file for the client architecture; relayed: pxe.relay = ignore; rate_limit: pxe.answers_per_mac_per_s; draining; no_server: placement named none)."),
    PxeIgnoredNotForProxy => ("bootfarm_pxe_requests_ignored_total", "reason=\"not_for_proxy\"", "DHCP datagrams the PXE service left unanswered, by reason (not_pxe: no option 60 PXEClient/HTTPClient, the site DHCP server's; not_for_proxy: a reply or a message type the port does not answer; arch: no boot file for the client architecture; relayed: pxe.relay = ignore; rate_limit: pxe.answers_per_mac_per_s; draining; no_server: placement named none)."),
    PxeIgnoredArch => ("bootfarm_pxe_requests_ignored_total", "reason=\"arch\"", "DHCP datagrams the PXE service left unanswered, by reason (not_pxe: no option 60 PXEClient/HTTPClient, the site DHCP server's; not_for_proxy: a reply or a message type the port does not answer; arch: no boot file for the client architecture; relayed: pxe.relay = ignore; rate_limit: pxe.answers_per_mac_per_s; draining; no_server: placement named none)."),
    PxeIgnoredRelayed => ("bootfarm_pxe_requests_ignored_total", "reason=\"relayed\"", "DHCP datagrams the PXE service left unanswered, by reason (not_pxe: no option 60 PXEClient/HTTPClient, the site DHCP server's; not_for_proxy: a reply or a message type the port does not answer; arch: no boot file for the client architecture; relayed: pxe.relay = ignore; rate_limit: pxe.answers_per_mac_per_s; draining; no_server: placement named none)."),
    PxeIgnoredRateLimit => ("bootfarm_pxe_requests_ignored_total", "reason=\"rate_limit\"", "DHCP datagrams the PXE service left unanswered, by reason (not_pxe: no option 60 PXEClient/HTTPClient, the site DHCP server's; not_for_proxy: a reply or a message type the port does not answer; arch: no boot file for the client architecture; relayed: pxe.relay = ignore; rate_limit: pxe.answers_per_mac_per_s; draining; no_server: placement named none)."),
    PxeIgnoredDraining => ("bootfarm_pxe_requests_ignored_total", "reason=\"draining\"", "DHCP datagrams the PXE service left unanswered, by reason (not_pxe: no option 60 PXEClient/HTTPClient, the site DHCP server's; not_for_proxy: a reply or a message type the port does not answer; arch: no boot file for the client architecture; relayed: pxe.relay = ignore; rate_limit: pxe.answers_per_mac_per_s; draining; no_server: placement named none)."),
    PxeIgnoredNoServer => ("bootfarm_pxe_requests_ignored_total", "reason=\"no_server\"", "DHCP datagrams the PXE service left unanswered, by reason (not_pxe: no option 60 PXEClient/HTTPClient, the site DHCP server's; not_for_proxy: a reply or a message type the port does not answer; arch: no boot file for the client architecture; relayed: pxe.relay = ignore; rate_limit: pxe.answers_per_mac_per_s; draining; no_server: placement named none)."),
    PxeSendErrors => ("bootfarm_pxe_send_errors_total", "", "ProxyDHCP answers whose sendmsg failed."),
}

/// Upper bounds (seconds) of the duration histogram buckets; the last bucket is +Inf.
pub const DURATION_BUCKETS: [f64; 11] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// A per-worker duration histogram (Prometheus cumulative buckets when rendered).
pub struct Histogram {
    buckets: [AtomicU64; DURATION_BUCKETS.len() + 1],
    sum_us: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram { buckets: std::array::from_fn(|_| AtomicU64::new(0)), sum_us: AtomicU64::new(0) }
    }
}

impl Histogram {
    pub fn observe(&self, d: std::time::Duration) {
        let s = d.as_secs_f64();
        let i = DURATION_BUCKETS.iter().position(|&b| s <= b).unwrap_or(DURATION_BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }
}

/// Renders histograms summed over workers.
pub fn render_histogram(out: &mut String, name: &str, help: &str, hs: &[&Histogram]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    let mut cumulative = 0u64;
    for (i, le) in DURATION_BUCKETS.iter().map(|b| b.to_string()).chain(std::iter::once("+Inf".to_string())).enumerate() {
        cumulative += hs.iter().map(|h| h.buckets[i].load(Ordering::Relaxed)).sum::<u64>();
        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
    }
    let sum: u64 = hs.iter().map(|h| h.sum_us.load(Ordering::Relaxed)).sum();
    let _ = writeln!(out, "{name}_sum {}\n{name}_count {cumulative}", sum as f64 / 1e6);
}

/// Renders counters summed over workers plus caller-supplied gauges, in Prometheus text format.
pub fn render(workers: &[&WorkerCounters], gauges: &[(&str, &str, &str, f64)]) -> String {
    let mut out = String::new();
    let mut described = Vec::new();
    for &c in Counter::ALL {
        let (name, labels, help) = c.describe();
        if !described.contains(&name) {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            described.push(name);
        }
        let v: u64 = workers.iter().map(|w| w.get(c)).sum();
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {v}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {v}");
        }
    }
    for (name, labels, help, v) in gauges {
        if !described.contains(name) {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            described.push(name);
        }
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {v}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {v}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_sums_and_gauges_once_described() {
        let (a, b) = (WorkerCounters::default(), WorkerCounters::default());
        a.add(Counter::ConfigReloadsOk, 2);
        b.add(Counter::ConfigReloadsOk, 3);
        let text = render(&[&a, &b], &[("bootfarm_config_generation", "", "Generation of the configuration in use.", 7.0)]);
        assert!(text.contains("bootfarm_config_reloads_total{result=\"ok\"} 5\n"), "{text}");
        assert!(text.contains("bootfarm_config_reloads_total{result=\"refused\"} 0\n"));
        assert_eq!(text.matches("# TYPE bootfarm_config_reloads_total counter").count(), 1);
        assert!(text.contains("bootfarm_config_generation 7\n"));
    }

    /// Every counter is its own series, and a metric has one help text and one kind of label
    /// set (all labelled or none): Prometheus keeps one of two equal series and drops the other.
    #[test]
    fn every_series_is_distinct_and_each_metric_consistent() {
        let mut seen = std::collections::HashMap::new();
        let mut helps = std::collections::HashMap::new();
        for &c in Counter::ALL {
            let (name, labels, help) = c.describe();
            assert!(seen.insert((name, labels), c).is_none(), "{c:?}: the series {name}{{{labels}}} is also {:?}", seen[&(name, labels)]);
            let (h, labelled) = *helps.entry(name).or_insert((help, !labels.is_empty()));
            assert_eq!(h, help, "{c:?}: {name} has two help texts");
            assert_eq!(labelled, !labels.is_empty(), "{c:?}: {name} is both labelled and not");
        }
    }

    #[test]
    fn histogram_is_cumulative() {
        let h = Histogram::default();
        h.observe(std::time::Duration::from_millis(3));
        h.observe(std::time::Duration::from_millis(700));
        h.observe(std::time::Duration::from_secs(60));
        let mut out = String::new();
        render_histogram(&mut out, "x_seconds", "X.", &[&h]);
        assert!(out.contains("x_seconds_bucket{le=\"0.005\"} 1\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"1\"} 2\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_seconds_count 3\n"), "{out}");
    }
}
