//! The handshake of an NBD session: the options (EXPORT_NAME, ABORT, LIST, STRUCTURED_REPLY,
//! LIST/SET_META_CONTEXT, INFO, GO) and the export attach (target id, boot token, farm
//! placement, the target registry).

use super::{Env, Phase, Session, DAMAGED};
use crate::config::{Mode, Snapshot, TargetIds, Vdisk};
use crate::metrics::Counter;
use crate::nbd::cache;
use crate::nbd::target::{self, AttachError};
use crate::nbd::token;
use crate::nbd::wire;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often a GO waiting for a private vdisk's writer to go looks again.
const PRIVATE_RETRY: Duration = Duration::from_millis(20);
/// The transmission flags of an export.
fn export_flags(vd: &Vdisk, structured: bool) -> u16 {
    let mut f =
        wire::TFLAG_HAS_FLAGS | wire::TFLAG_SEND_FLUSH | wire::TFLAG_SEND_FUA | wire::TFLAG_SEND_TRIM | wire::TFLAG_SEND_WRITE_ZEROES;
    if structured {
        f |= wire::TFLAG_SEND_DF;
    }
    // Every connection of a target shares one cache, so what one connection wrote (and
    // flushed) is what any other reads: multi-conn holds. A private vdisk takes one writer.
    if vd.mode == Mode::Standard {
        f |= wire::TFLAG_CAN_MULTI_CONN;
    }
    f
}

/// What an export name names: the vdisk, the target id, the boot id.
type Named = (Arc<Vdisk>, Option<String>, Option<String>);

/// The vdisk an export name (`[vdisk][@target][#boot]`) names, with its target and boot ids.
fn find(snap: &Snapshot, name: &[u8]) -> Result<Named, &'static str> {
    let name = std::str::from_utf8(name).map_err(|_| "export name is not UTF-8")?;
    let e = target::split_export(name);
    if e.target.is_some_and(|i| !target::valid_target_id(i)) {
        return Err("bad target id after @ (1-64 printable characters, no slashes, no #)");
    }
    if e.boot.is_some_and(|b| !target::valid_boot_id(b)) {
        return Err("bad boot id after # (1-64 letters, digits, - or _)");
    }
    let v = if e.vdisk.is_empty() { snap.default_vdisk() } else { snap.vdisk(e.vdisk) };
    let v = v.ok_or("no such export")?;
    if v.damaged() {
        return Err(DAMAGED);
    }
    Ok((v.clone(), e.target.map(str::to_string), e.boot.map(str::to_string)))
}

impl<E: Env> Session<E> {
    /// Handshake options; returns why the connection must end after the reply, if it must.
    pub(super) fn option(&mut self, env: &E, opt: u32, payload: &[u8], now: Instant) -> Option<&'static str> {
        let snap = env.snapshot();
        if !self.fixed && opt != wire::OPT_EXPORT_NAME {
            // Plain newstyle has no option replies: the only answer to anything else is a close.
            return Some(
                "a client without fixed newstyle (client flags without NBD_FLAG_C_FIXED_NEWSTYLE) may only send NBD_OPT_EXPORT_NAME",
            );
        }
        match opt {
            wire::OPT_EXPORT_NAME => {
                // A close is the protocol's only answer to a refused EXPORT_NAME.
                let (vd, id, boot) = match find(snap, payload) {
                    Ok(v) => v,
                    Err(why) => {
                        if why == DAMAGED {
                            env.count(Counter::NbdDamaged, 1);
                        }
                        return Some(match why {
                            "no such export" => "NBD_OPT_EXPORT_NAME named no export served here (closed, as the protocol answers it)",
                            DAMAGED => "NBD_OPT_EXPORT_NAME named a vdisk whose image changed on the server (closed)",
                            _ => "NBD_OPT_EXPORT_NAME with a malformed export name (not UTF-8, or a bad target or boot id; closed)",
                        });
                    }
                };
                match self.attach(env, &vd, id, boot, now) {
                    Ok(()) => {}
                    Err(None) => return None, // waits for the private vdisk's writer to go
                    Err(Some(_)) => return Some("NBD_OPT_EXPORT_NAME was refused (logged above; closed, as the protocol answers it)"),
                }
                // The target's own image: a reconnect after a reload keeps the one it booted with.
                let vd = self.target.as_ref().expect("attached").vdisk.clone();
                let flags = export_flags(&vd, self.structured);
                let no_zeroes = self.no_zeroes;
                self.batch.put(|o| {
                    o.extend_from_slice(&vd.chain.virtual_size().to_be_bytes());
                    o.extend_from_slice(&flags.to_be_bytes());
                    if !no_zeroes {
                        o.extend_from_slice(&[0u8; 124]);
                    }
                });
                self.phase = Phase::Transmission;
            }
            wire::OPT_ABORT => {
                self.batch.put(|o| wire::option_reply(o, opt, wire::REP_ACK, &[]));
                return Some("the client sent NBD_OPT_ABORT");
            }
            wire::OPT_LIST => {
                self.batch.put(|o| {
                    if !payload.is_empty() {
                        wire::option_reply(o, opt, wire::REP_ERR_INVALID, &[]);
                    } else {
                        for v in &snap.vdisks {
                            let mut d = (v.name.len() as u32).to_be_bytes().to_vec();
                            d.extend_from_slice(v.name.as_bytes());
                            wire::option_reply(o, opt, wire::REP_SERVER, &d);
                        }
                        wire::option_reply(o, opt, wire::REP_ACK, &[]);
                    }
                });
            }
            wire::OPT_STRUCTURED_REPLY => {
                self.structured = payload.is_empty();
                let kind = if payload.is_empty() { wire::REP_ACK } else { wire::REP_ERR_INVALID };
                self.batch.put(|o| wire::option_reply(o, opt, kind, &[]));
            }
            wire::OPT_LIST_META_CONTEXT | wire::OPT_SET_META_CONTEXT => {
                let set = opt == wire::OPT_SET_META_CONTEXT;
                let Some((name, queries)) = wire::meta_request(payload) else {
                    self.batch.put(|o| wire::option_reply(o, opt, wire::REP_ERR_INVALID, b"malformed meta context request"));
                    return None;
                };
                if set && !self.structured {
                    self.batch.put(|o| wire::option_reply(o, opt, wire::REP_ERR_INVALID, b"structured replies first"));
                    return None;
                }
                if find(snap, name).is_err() {
                    self.batch.put(|o| wire::option_reply(o, opt, wire::REP_ERR_UNKNOWN, b"no such export"));
                    return None;
                }
                let chosen = if queries.is_empty() { !set } else { queries.iter().any(|q| wire::selects_base_allocation(q)) };
                if set {
                    self.meta_base = chosen;
                }
                self.batch.put(|o| {
                    if chosen {
                        let mut d = wire::BASE_ALLOCATION_ID.to_be_bytes().to_vec();
                        d.extend_from_slice(wire::BASE_ALLOCATION.as_bytes());
                        wire::option_reply(o, opt, wire::REP_META_CONTEXT, &d);
                    }
                    wire::option_reply(o, opt, wire::REP_ACK, &[]);
                });
            }
            wire::OPT_INFO | wire::OPT_GO => {
                let Some((name, reqs)) = wire::info_request(payload) else {
                    self.batch.put(|o| wire::option_reply(o, opt, wire::REP_ERR_INVALID, &[]));
                    return None;
                };
                let (vd, id, boot) = match find(snap, name) {
                    Ok(v) => v,
                    Err(why) => {
                        if why == DAMAGED {
                            env.count(Counter::NbdDamaged, 1);
                        }
                        // NBD_REP_ERR_UNKNOWN: "the requested export is not available".
                        self.batch.put(|o| wire::option_reply(o, opt, wire::REP_ERR_UNKNOWN, why.as_bytes()));
                        return None;
                    }
                };
                let vd = if opt == wire::OPT_GO {
                    match self.attach(env, &vd, id, boot, now) {
                        Ok(()) => {}
                        Err(None) => return None, // waits for the private vdisk's writer to go
                        Err(Some(why)) => {
                            self.batch.put(|o| wire::option_reply(o, opt, wire::REP_ERR_POLICY, why.as_bytes()));
                            return None;
                        }
                    }
                    // Size and flags of the image the target is served from (the one it booted
                    // with, when it was already connected before a reload changed the vdisk).
                    self.target.as_ref().expect("attached").vdisk.clone()
                } else {
                    vd
                };
                let flags = export_flags(&vd, self.structured);
                let max = snap.config.nbd.request_bytes_max;
                self.batch.put(|o| {
                    let mut d = wire::INFO_EXPORT.to_be_bytes().to_vec();
                    d.extend_from_slice(&vd.chain.virtual_size().to_be_bytes());
                    d.extend_from_slice(&flags.to_be_bytes());
                    wire::option_reply(o, opt, wire::REP_INFO, &d);
                    if reqs.contains(&wire::INFO_BLOCK_SIZE) {
                        let mut d = wire::INFO_BLOCK_SIZE.to_be_bytes().to_vec();
                        d.extend_from_slice(&1u32.to_be_bytes());
                        d.extend_from_slice(&(cache::BLOCK as u32).to_be_bytes());
                        d.extend_from_slice(&max.to_be_bytes());
                        wire::option_reply(o, opt, wire::REP_INFO, &d);
                    }
                    wire::option_reply(o, opt, wire::REP_ACK, &[]);
                });
                if opt == wire::OPT_GO {
                    self.phase = Phase::Transmission;
                }
            }
            _ => self.batch.put(|o| wire::option_reply(o, opt, wire::REP_ERR_UNSUP, &[])),
        }
        None
    }

    /// Gives the connection its target's write cache (or refuses: a private vdisk's second
    /// writer, a target created from another address, a target id that is no boot token).
    /// `Err(None)`: a private vdisk's writer is still connected and `nbd.private_writer_wait_ms`
    /// has not passed since the first try; `attach_retry` says when to try again (the option
    /// stays unread meanwhile).
    fn attach(
        &mut self,
        env: &E,
        vd: &Arc<Vdisk>,
        mut id: Option<String>,
        mut boot: Option<String>,
        now: Instant,
    ) -> Result<(), Option<String>> {
        let snap = env.snapshot();
        let wait = Duration::from_millis(snap.config.nbd.private_writer_wait_ms);
        let mut key = id.clone().unwrap_or_else(|| self.ip.to_string());
        if let Some(i) = id.clone() {
            let checked = token::check(&env.token_key(), &i, self.ip, &vd.name, env.now_unix());
            let (mac, expired) = match checked {
                Ok((m, expired)) => (Some(token::mac_id(m)), expired),
                Err(why) => (None, why == token::EXPIRED),
            };
            // A boot token is a boot of the machine whose MAC it carries: the target is that
            // MAC (the farm places it by it, as the boot script did), the boot is the token
            // unless the export names one.
            let boot_of_token = boot.clone().unwrap_or_else(|| i.clone());
            let verdict = match (&mac, expired) {
                (Some(_), false) => Ok(()),
                _ if snap.config.nbd.target_ids == TargetIds::Bound && mac.is_none() => Ok(()),
                // An expired token still reaches the boot it made (a reconnect, hours later).
                (Some(m), true) if env.registry().holds(&vd.name, m, self.ip, Some(&boot_of_token)) => Ok(()),
                (Some(_), true) if snap.config.nbd.target_ids == TargetIds::Bound => Ok(()),
                (Some(_), true) => Err(token::EXPIRED),
                (None, _) => Err(checked.err().unwrap_or("not a boot token")),
            };
            if let (Ok(()), Some(m)) = (verdict, mac) {
                key = m.clone();
                id = Some(m);
                boot = Some(boot_of_token);
            }
            match verdict {
                Ok(()) => {}
                Err(why) => {
                    env.count(Counter::NbdRefusedToken, 1);
                    tracing::warn!(
                        client = %self.peer,
                        export = %vd.name,
                        "nbd connection refused: {why} (nbd.target_ids = \"token\": a target id must be the boot token of the /ipxe script, used from the address that fetched it)"
                    );
                    return Err(Some(format!(
                        "{why}; nbd.target_ids = token: use the export name the boot script gives (bootfarm-nbd-export)"
                    )));
                }
            }
        }
        if snap.farm.len() > 1 {
            let order = env.farm_place(&vd.name, &key, self.ip, now);
            if let Some(&first) = order.first().filter(|&&i| snap.farm[i].name != snap.config.server.name) {
                env.count(Counter::NbdMisplaced, 1);
                tracing::debug!(client = %self.peer, export = %vd.name, first = %snap.farm[first].name, "nbd target is placed on another server; serving it here");
            }
        }
        match env.registry().attach(vd, id.as_deref(), boot.as_deref(), self.peer, &snap.config.nbd, now) {
            Ok((t, resumed)) => {
                tracing::info!(client = %self.peer, export = %vd.name, target = %t.id, boot = t.boot.as_deref().unwrap_or(""), resumed, fixed_newstyle = self.fixed, "nbd target attached");
                self.cut_seen = t.cut.load(std::sync::atomic::Ordering::Acquire);
                if let Some(dir) = &snap.config.nbd.trace_dir {
                    let (connection, unix_ms) = env.trace_start();
                    let h = crate::nbd::trace::Header {
                        connection,
                        client: self.peer,
                        export: &vd.name,
                        target: &t.id,
                        boot: t.boot.as_deref(),
                        disk_bytes: vd.chain.virtual_size(),
                        connected_unix_ms: unix_ms.saturating_sub(now.saturating_duration_since(self.opened).as_millis() as u64),
                    };
                    self.trace = Some(crate::nbd::trace::Recorder::new(dir, &h, self.opened, now, snap.config.nbd.trace_bytes_max));
                }
                self.target = Some(t);
                self.attach_give_up = None;
                Ok(())
            }
            Err(AttachError::Busy(_)) if now < *self.attach_give_up.get_or_insert(now + wait) => {
                // The writer's connection may be one the server has not seen close yet (a
                // machine that rebooted): look again shortly, until the wait is over.
                self.attach_retry = Some((now + PRIVATE_RETRY).min(self.attach_give_up.unwrap()));
                Err(None)
            }
            Err(e @ AttachError::Foreign { owner }) => {
                env.count(Counter::NbdRefusedForeign, 1);
                tracing::warn!(
                    client = %self.peer,
                    owner = %owner,
                    export = %vd.name,
                    target = %key,
                    "nbd connection refused: the target belongs to the address that created it; a target id reaches only its own machine's cache (a machine whose address changed gets a new cache once the old one expires, nbd.cache_keep_after_disconnect_ms)"
                );
                Err(Some(e.to_string()))
            }
            Err(e) => {
                let counter = match e {
                    AttachError::Busy(_) | AttachError::Failed(_) => Counter::NbdRefusedPrivate,
                    AttachError::TargetsPerAddress(_) => Counter::NbdRefusedTargets,
                    AttachError::Foreign { .. } => Counter::NbdRefusedForeign,
                };
                env.count(counter, 1);
                tracing::warn!(client = %self.peer, export = %vd.name, "nbd connection refused: {e}");
                self.attach_give_up = None;
                Err(Some(e.to_string()))
            }
        }
    }
}
