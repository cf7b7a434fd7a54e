//! The login phase of a session: Login Requests reassembled (C bit, `iscsi.text_bytes_max`),
//! negotiated by i1's `login::Login`, answered with Login Responses; at the end of a Normal
//! session's login the target's write cache is attached (initiator name -> target id, a boot
//! token in the name -> the boot), and full feature phase begins with the negotiated limits.

use super::{Env, LunInfo, Phase, Session};
use crate::config::{Mode, TargetIds};
use crate::iscsi::boot;
use crate::iscsi::chap::Chap;
use crate::iscsi::login::{self, status as st, Login, LoginConfig, LoginRequest, Offer, SessionType, Step};
use crate::iscsi::wire::{self, Bhs, Digests, Request, Sn};
use crate::metrics::Counter;
use crate::nbd::target::AttachError;
use crate::nbd::token;
use std::time::{Duration, Instant};

/// The login's state, and what full feature phase keeps of the configuration.
#[derive(Default)]
pub(super) struct LoginState {
    machine: Login,
    /// Text of a Login Request continued over PDUs (C bit).
    text: Vec<u8>,
    /// The CmdSN window, NOP-In interval and timeout, fixed at login.
    pub(super) window: u32,
    pub(super) nop_interval: Duration,
    pub(super) nop_timeout: Duration,
}

impl<E: Env> Session<E> {
    pub(super) fn login_pdu(&mut self, env: &E, bhs: &Bhs, data: &[u8], now: Instant) {
        let Ok(Request::Login(l)) = Request::parse(bhs) else {
            // RFC 7143 6.3: only Login Requests until the login ends.
            env.count(Counter::IscsiLoginFailedProtocol, 1);
            self.protocol_error(env, None, "a PDU other than a Login Request during login");
            return;
        };
        if self.initiator.is_empty() && self.login.text.is_empty() && self.tsih == 0 {
            self.isid = l.isid;
            self.cid = l.cid;
        }
        // Login Requests are immediate: their CmdSN is the session's first one.
        self.exp_cmdsn = l.cmdsn;
        self.max_cmdsn = l.cmdsn;
        let snap = env.snapshot();
        let cfg = &snap.config.iscsi;
        if self.login.text.len() + data.len() > cfg.text_bytes_max {
            env.count(Counter::IscsiLoginFailedProtocol, 1);
            self.login_fail(&l, st::INITIATOR_ERROR, "the login text exceeds iscsi.text_bytes_max");
            return;
        }
        self.login.text.extend_from_slice(data);
        if l.cont {
            // More text follows: an empty answer with the same stages asks for it.
            let sn = self.sn_take();
            self.login_respond(&l, false, l.csg, l.nsg, sn, (0, 0), &[]);
            return;
        }
        let text = std::mem::take(&mut self.login.text);
        let chap = match (&cfg.chap_user, &snap.iscsi_chap_secret) {
            (Some(u), Some(s)) => Chap::new(u, s, None).ok(),
            _ => None,
        };
        let target_exists = |name: &str| cfg.vdisk_of(name).and_then(|v| snap.vdisk(v)).is_some();
        let session_exists = |_tsih: u16| false;
        let lc = LoginConfig {
            target_exists: &target_exists,
            session_exists: &session_exists,
            chap: chap.as_ref(),
            offer: Offer {
                max_recv_data_segment_length: cfg.max_recv_data_segment_length,
                max_burst_length: cfg.max_burst_length,
                first_burst_length: cfg.first_burst_length,
                max_outstanding_r2t: cfg.max_outstanding_r2t,
                immediate_data: cfg.immediate_data,
                initial_r2t: cfg.initial_r2t,
                header_digest: true,
                data_digest: true,
            },
            portal_group_tag: cfg.portal_group_tag,
        };
        let req = LoginRequest {
            transit: l.transit,
            cont: false,
            csg: l.csg,
            nsg: l.nsg,
            version_max: l.version_max,
            version_min: l.version_min,
            isid: l.isid,
            tsih: l.tsih,
            itt: l.itt,
            cid: l.cid,
            cmdsn: l.cmdsn,
            exp_statsn: l.exp_statsn,
        };
        let challenge = env.random();
        let mut out = Vec::new();
        match self.login.machine.on_request(&lc, &req, &text, &challenge, &mut out) {
            Step::Answer { transit, csg, nsg } => {
                let sn = self.sn_take();
                self.login_respond(&l, transit, csg, nsg, sn, (0, 0), &out);
            }
            Step::Fail { class, detail, why } => {
                let c = match (class, detail) {
                    (2, 1) => Counter::IscsiLoginFailedAuth,
                    (2, 2) => Counter::IscsiLoginFailedAuthz,
                    (2, 3) | (2, 4) => Counter::IscsiLoginFailedNotFound,
                    _ => Counter::IscsiLoginFailedProtocol,
                };
                env.count(c, 1);
                tracing::warn!(client = %self.peer, class, detail, "iscsi login refused: {why}");
                self.login_fail(&l, (class, detail), "login refused (logged above)");
            }
            Step::Done { negotiated, transit, csg, nsg } => {
                self.initiator = negotiated.initiator_name.clone();
                self.nexus = super::command::nexus_of(&self.initiator, self.isid);
                if negotiated.session_type == SessionType::Normal {
                    let name = negotiated.target_name.clone().unwrap_or_default();
                    if let Err((code, c)) = self.attach(env, &name, now) {
                        env.count(c, 1);
                        self.login_fail(&l, code, "the target's write cache was refused (logged above)");
                        return;
                    }
                }
                env.count(
                    if negotiated.session_type == SessionType::Normal { Counter::IscsiLoginsNormal } else { Counter::IscsiLoginsDiscovery },
                    1,
                );
                self.login.window = cfg.commands_in_flight_max;
                self.login.nop_interval = Duration::from_millis(cfg.nop_in_interval_ms);
                self.login.nop_timeout = Duration::from_millis(cfg.nop_in_timeout_ms);
                self.max_send = negotiated.max_send_data_segment_length;
                let digests = Digests { header: negotiated.header_digest, data: negotiated.data_digest };
                let r = env.random();
                self.tsih = u16::from_be_bytes([r[0], r[1]]).max(1);
                tracing::info!(
                    initiator = %negotiated.initiator_name,
                    client = %self.peer,
                    target = negotiated.target_name.as_deref().unwrap_or("(discovery)"),
                    cache = self.target.as_ref().map(|t| t.id.as_str()).unwrap_or(""),
                    max_send = self.max_send,
                    burst = negotiated.max_burst_length,
                    immediate = negotiated.immediate_data,
                    initial_r2t = negotiated.initial_r2t,
                    digests = negotiated.header_digest || negotiated.data_digest,
                    "iscsi login"
                );
                self.neg = Some(negotiated);
                self.phase = Phase::Full;
                let sn = self.sn_take();
                self.login_respond(&l, transit, csg, nsg, sn, (0, 0), &out);
                // Digests start with the first PDU after the login (RFC 7143 13.1).
                self.digests = digests;
            }
        }
    }

    /// A Login Response.
    #[allow(clippy::too_many_arguments)]
    fn login_respond(&mut self, l: &wire::LoginReq, transit: bool, csg: u8, nsg: u8, sn: Sn, status: (u8, u8), text: &[u8]) {
        let r = wire::LoginResponse {
            transit,
            cont: false,
            csg,
            nsg,
            version_max: login::VERSION,
            version_active: login::VERSION,
            isid: l.isid,
            tsih: if self.phase == Phase::Full { self.tsih } else { 0 },
            itt: l.itt,
            sn,
            status_class: status.0,
            status_detail: status.1,
            data_len: text.len() as u32,
        };
        self.put_pdu(|o| r.emit(o), text);
    }

    /// Refuses the login with `code` and ends the connection once the answer is out.
    fn login_fail(&mut self, l: &wire::LoginReq, code: (u8, u8), why: &'static str) {
        let sn = self.sn_take();
        self.login_respond(l, false, l.csg, l.nsg, sn, code, &[]);
        self.end(why);
    }

    /// Gives the session its target's write cache (NBD's registry, `[nbd]` rules): the target is
    /// the initiator name (lowercased: IQNs compare case-insensitively); a boot token carried in
    /// the name (the `/ipxe` script's initiator-iqn) makes it the MAC's target and the token's
    /// boot. Errors are the login status and the counter.
    fn attach(&mut self, env: &E, target_name: &str, now: Instant) -> Result<(), ((u8, u8), Counter)> {
        let snap = env.snapshot();
        let cfg = &snap.config;
        let vd = cfg
            .iscsi
            .vdisk_of(target_name)
            .and_then(|v| snap.vdisk(v))
            .cloned()
            .ok_or((st::NOT_FOUND, Counter::IscsiLoginFailedNotFound))?;
        if vd.damaged() {
            env.count(Counter::IscsiDamaged, 1);
            tracing::warn!(client = %self.peer, vdisk = %vd.name, "iscsi login refused: {}", crate::nbd::session::DAMAGED);
            return Err((st::TARGET_ERROR, Counter::IscsiLoginFailedProtocol));
        }
        let name = self.initiator.to_ascii_lowercase();
        let (id, boot_id) = match boot::token_of(&cfg.iscsi.iqn_prefix, &name) {
            Some(tok) => match token::check(&env.token_key(), &tok, self.ip, &vd.name, env.now_unix()) {
                Ok((mac, expired)) => {
                    let m = token::mac_id(mac);
                    let ok = !expired || cfg.nbd.target_ids == TargetIds::Bound || env.registry().holds(&vd.name, &m, self.ip, Some(&tok));
                    if !ok {
                        tracing::warn!(client = %self.peer, initiator = %self.initiator, "iscsi login refused: {}", token::EXPIRED);
                        return Err((st::AUTHORIZATION_FAILURE, Counter::IscsiLoginFailedAuthz));
                    }
                    (Some(m), Some(tok))
                }
                Err(why) => {
                    tracing::warn!(client = %self.peer, initiator = %self.initiator, "iscsi login refused: the initiator name carries a boot token that is not valid here: {why}");
                    return Err((st::AUTHORIZATION_FAILURE, Counter::IscsiLoginFailedAuthz));
                }
            },
            // Without a token under target_ids = "token", the target is the client address, as
            // an NBD connection that names no id.
            None if cfg.nbd.target_ids == TargetIds::Token => (None, None),
            None => (Some(name), None),
        };
        match env.registry().attach(&vd, id.as_deref(), boot_id.as_deref(), self.peer, &cfg.nbd, now) {
            Ok((t, resumed)) => {
                tracing::info!(client = %self.peer, vdisk = %vd.name, cache = %t.id, boot = t.boot.as_deref().unwrap_or(""), resumed, "iscsi target attached");
                let chain = &t.vdisk.chain;
                let block_len = chain.top().logical_sector.max(512);
                let me = snap.farm.iter().position(|f| f.name == cfg.server.name).unwrap_or(0);
                self.lun = Some(LunInfo {
                    blocks: chain.virtual_size() / block_len as u64,
                    block_len,
                    designator: crate::iscsi::scsi::designator(&t.vdisk.name, chain),
                    relative_port: (me + 1).min(u16::MAX as usize) as u16,
                });
                // Resets made before this session logged in are not its business.
                self.resets_seen = t.resets.load(std::sync::atomic::Ordering::Relaxed);
                self.target = Some(t);
                Ok(())
            }
            Err(e) => {
                let (code, c) = match &e {
                    AttachError::Busy(_) => (st::SERVICE_UNAVAILABLE, Counter::IscsiLoginFailedBusy),
                    AttachError::Foreign { .. } => (st::AUTHORIZATION_FAILURE, Counter::IscsiLoginFailedAuthz),
                    AttachError::TargetsPerAddress(_) => (st::OUT_OF_RESOURCES, Counter::IscsiLoginFailedResources),
                    AttachError::Failed(_) => (st::TARGET_ERROR, Counter::IscsiLoginFailedResources),
                };
                let mode = if vd.mode == Mode::Private { "private" } else { "standard" };
                tracing::warn!(client = %self.peer, initiator = %self.initiator, vdisk = %vd.name, mode, "iscsi login refused: {e}");
                Err((code, c))
            }
        }
    }
}
