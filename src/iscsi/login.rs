//! The iSCSI login phase (RFC 7143 §6, §13) as a pure state machine: fed one whole Login
//! Request at a time (header fields + reassembled text), it answers the response's flags and text
//! and ends in a `Negotiated` or a failure status (§11.13.5). Security stage: AuthMethod None or
//! CHAP as configured (`chap`); operational stage: every key of §13 answered. No I/O, no clock;
//! the CHAP challenge bytes come in as an argument. At most `REQUESTS_MAX` requests per login.

pub mod discovery;
pub mod names;
mod ops;

pub use discovery::{target_address, text_request, TextOutcome};

use super::chap::{self, Chap, Exchange};
use super::text;
use ops::Ops;

/// Login stages (CSG/NSG values).
pub const STAGE_SECURITY: u8 = 0;
pub const STAGE_OPERATIONAL: u8 = 1;
pub const STAGE_FULL_FEATURE: u8 = 3;

/// The one protocol version (RFC 7143 §11.12.4: 0x00).
pub const VERSION: u8 = 0x00;

/// Requests one login may take before it is failed (a CHAP login with mutual authentication
/// needs 4; an initiator that never lets the login end must not hold a connection forever even
/// inside the login timeout).
pub const REQUESTS_MAX: u32 = 16;

/// Login Response status class and detail (RFC 7143 §11.13.5).
pub mod status {
    pub const INITIATOR_ERROR: (u8, u8) = (0x02, 0x00);
    pub const AUTHENTICATION_FAILURE: (u8, u8) = (0x02, 0x01);
    pub const AUTHORIZATION_FAILURE: (u8, u8) = (0x02, 0x02);
    pub const NOT_FOUND: (u8, u8) = (0x02, 0x03);
    pub const TARGET_REMOVED: (u8, u8) = (0x02, 0x04);
    pub const UNSUPPORTED_VERSION: (u8, u8) = (0x02, 0x05);
    pub const TOO_MANY_CONNECTIONS: (u8, u8) = (0x02, 0x06);
    pub const MISSING_PARAMETER: (u8, u8) = (0x02, 0x07);
    pub const CANT_INCLUDE_IN_SESSION: (u8, u8) = (0x02, 0x08);
    pub const SESSION_TYPE_NOT_SUPPORTED: (u8, u8) = (0x02, 0x09);
    pub const SESSION_DOES_NOT_EXIST: (u8, u8) = (0x02, 0x0a);
    pub const INVALID_DURING_LOGIN: (u8, u8) = (0x02, 0x0b);
    pub const TARGET_ERROR: (u8, u8) = (0x03, 0x00);
    pub const SERVICE_UNAVAILABLE: (u8, u8) = (0x03, 0x01);
    pub const OUT_OF_RESOURCES: (u8, u8) = (0x03, 0x02);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionType {
    Normal,
    Discovery,
}

/// The target's side of the negotiation: its limits and preferences.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offer {
    /// The largest data segment we accept (declared to the initiator): 512..=2^24-1.
    pub max_recv_data_segment_length: u32,
    pub max_burst_length: u32,
    pub first_burst_length: u32,
    pub max_outstanding_r2t: u32,
    /// Whether we take immediate data (AND with the initiator's).
    pub immediate_data: bool,
    /// Whether we insist on an R2T before any write data (OR with the initiator's).
    pub initial_r2t: bool,
    /// Whether CRC32C digests may be chosen when the initiator offers them.
    pub header_digest: bool,
    pub data_digest: bool,
}

impl Default for Offer {
    /// RFC 7143's defaults where they suit a target serving boot disks, a larger receive segment
    /// (Windows and Linux declare 256 KiB) and unsolicited data allowed (fewer round trips).
    fn default() -> Offer {
        Offer {
            max_recv_data_segment_length: 256 * 1024,
            max_burst_length: ops::DEFAULT_MAX_BURST,
            first_burst_length: ops::DEFAULT_FIRST_BURST,
            max_outstanding_r2t: 4,
            immediate_data: true,
            initial_r2t: false,
            header_digest: false,
            data_digest: false,
        }
    }
}

pub struct LoginConfig<'a> {
    /// The target IQN asked for (normalized: lowercase) -> whether it is served.
    pub target_exists: &'a dyn Fn(&str) -> bool,
    /// A login with TSIH != 0 adds a connection to that session: whether the session exists
    /// (it then has its one connection: "too many connections"; else "session does not exist").
    pub session_exists: &'a dyn Fn(u16) -> bool,
    /// CHAP credentials: when set, CHAP is required; when not, AuthMethod None is.
    pub chap: Option<&'a Chap>,
    pub offer: Offer,
    /// Sent (TargetPortalGroupTag) in the response to the first request of a Normal session.
    pub portal_group_tag: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Negotiated {
    pub session_type: SessionType,
    /// As sent (case kept); compare with `names::normalize`.
    pub initiator_name: String,
    pub initiator_alias: Option<String>,
    /// Normalized (lowercase); None for Discovery.
    pub target_name: Option<String>,
    /// What the initiator declared: the largest data segment we may send it.
    pub max_send_data_segment_length: u32,
    /// What we declared (8192, the default, when the login never reached the point to declare).
    pub max_recv_data_segment_length: u32,
    pub max_burst_length: u32,
    pub first_burst_length: u32,
    pub initial_r2t: bool,
    pub immediate_data: bool,
    pub max_outstanding_r2t: u32,
    pub max_connections: u32,
    pub header_digest: bool,
    pub data_digest: bool,
    pub default_time2wait: u32,
    pub default_time2retain: u32,
    pub error_recovery_level: u8,
}

/// The header fields of one Login Request that the login looks at.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoginRequest {
    pub transit: bool,
    pub cont: bool,
    pub csg: u8,
    pub nsg: u8,
    pub version_max: u8,
    pub version_min: u8,
    pub isid: [u8; 6],
    pub tsih: u16,
    pub itt: u32,
    pub cid: u16,
    pub cmdsn: u32,
    pub exp_statsn: u32,
}

impl From<&super::wire::LoginReq> for LoginRequest {
    fn from(r: &super::wire::LoginReq) -> LoginRequest {
        LoginRequest {
            transit: r.transit,
            cont: r.cont,
            csg: r.csg,
            nsg: r.nsg,
            version_max: r.version_max,
            version_min: r.version_min,
            isid: r.isid,
            tsih: r.tsih,
            itt: r.itt,
            cid: r.cid,
            cmdsn: r.cmdsn,
            exp_statsn: r.exp_statsn,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Answer with a Login Response: these flags/stages, status 0, the text appended to `out`.
    Answer { transit: bool, csg: u8, nsg: u8 },
    /// The response written transits to full feature phase: the session is set up.
    Done { negotiated: Negotiated, transit: bool, csg: u8, nsg: u8 },
    /// Answer with this status (see `status`), no text, and close the connection.
    Fail { class: u8, detail: u8, why: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Phase {
    Start,
    Security,
    Operational,
    Over,
}

#[derive(Clone, Debug)]
enum Auth {
    /// No AuthMethod agreed yet.
    Open,
    None,
    /// AuthMethod=CHAP answered; CHAP_A expected.
    ChapChosen,
    /// The challenge went out; CHAP_N/CHAP_R expected.
    Challenged(Exchange),
    /// The initiator proved itself (and the target answered its challenge, if it sent one).
    ChapDone,
}

struct Fail {
    code: (u8, u8),
    why: String,
}

fn fail<T>(code: (u8, u8), why: impl Into<String>) -> Result<T, Fail> {
    Err(Fail { code, why: why.into() })
}

/// One key the initiator sent, and what we answered, so that the same key sent again (iPXE
/// and libiscsi resend keys) gets the same answer and a changed value is caught.
struct Seen {
    key: String,
    value: String,
    answers: Vec<(String, String)>,
}

pub struct Login {
    phase: Phase,
    requests: u32,
    first: Option<LoginRequest>,
    session_type: SessionType,
    initiator_name: Option<String>,
    initiator_alias: Option<String>,
    target_name: Option<String>,
    auth: Auth,
    ops: Ops,
    seen: Vec<Seen>,
}

impl Default for Login {
    fn default() -> Login {
        Login::new()
    }
}

/// Keys only the security stage may carry.
fn is_security_key(key: &str) -> bool {
    matches!(key, "AuthMethod" | "CHAP_A" | "CHAP_I" | "CHAP_C" | "CHAP_N" | "CHAP_R")
        || key.starts_with("SRP_")
        || key.starts_with("KRB_")
        || key.starts_with("SPKM_")
}

impl Login {
    pub fn new() -> Login {
        Login {
            phase: Phase::Start,
            requests: 0,
            first: None,
            session_type: SessionType::Normal,
            initiator_name: None,
            initiator_alias: None,
            target_name: None,
            auth: Auth::Open,
            ops: Ops::default(),
            seen: Vec::new(),
        }
    }

    /// One whole Login Request (C bit clear: the session reassembles continued text first).
    /// The response text is appended to `out`; on `Fail` nothing is appended.
    pub fn on_request(&mut self, cfg: &LoginConfig, req: &LoginRequest, text: &[u8], challenge: &[u8; 16], out: &mut Vec<u8>) -> Step {
        let start = out.len();
        match self.step(cfg, req, text, challenge, out) {
            Ok(step) => step,
            Err(Fail { code: (class, detail), why }) => {
                out.truncate(start);
                self.phase = Phase::Over;
                Step::Fail { class, detail, why }
            }
        }
    }

    fn step(&mut self, cfg: &LoginConfig, req: &LoginRequest, text: &[u8], challenge: &[u8; 16], out: &mut Vec<u8>) -> Result<Step, Fail> {
        if self.phase == Phase::Over {
            return fail(status::INITIATOR_ERROR, "login request after the login ended");
        }
        self.requests += 1;
        if self.requests > REQUESTS_MAX {
            return fail(status::INITIATOR_ERROR, format!("login did not end within {REQUESTS_MAX} requests"));
        }
        self.check_header(cfg, req)?;
        let pairs = text::parse(text, text::PAIRS_MAX).map_err(|e| Fail { code: status::INITIATOR_ERROR, why: e.to_string() })?;
        let first = self.phase == Phase::Start;
        if first {
            self.phase = if req.csg == STAGE_SECURITY { Phase::Security } else { Phase::Operational };
            // The session type decides how operational keys are answered: known before them.
            if let Some((_, v)) = pairs.iter().find(|(k, _)| *k == "SessionType") {
                self.session_type = match *v {
                    "Normal" => SessionType::Normal,
                    "Discovery" => SessionType::Discovery,
                    _ => return fail(status::SESSION_TYPE_NOT_SUPPORTED, format!("SessionType={v} is neither Normal nor Discovery")),
                };
            }
        }
        let security = self.phase == Phase::Security;
        let max_burst_in_request = pairs.iter().find(|(k, _)| *k == "MaxBurstLength").and_then(|(_, v)| text::number(v, ops::LENGTH_MAX));
        let mut chap_keys = ChapKeys::default();

        for &(key, value) in &pairs {
            if let Some(seen) = self.seen.iter().find(|s| s.key == key) {
                if seen.value != value {
                    return fail(
                        status::INITIATOR_ERROR,
                        format!("{key} sent again with another value ({:?}, then {value:?})", seen.value),
                    );
                }
                for (k, v) in &seen.answers {
                    text::push(out, k, v);
                }
                continue;
            }
            let answers = if is_security_key(key) {
                if !security {
                    return fail(status::INITIATOR_ERROR, format!("{key} is a security key, sent in the operational stage"));
                }
                self.security_key(cfg, key, value, challenge, &mut chap_keys)?
            } else if let Some(answers) = self.leading_key(key, value, first)? {
                answers
            } else if ops::is_operational_key(key) {
                if security {
                    return fail(status::INITIATOR_ERROR, format!("{key} is an operational key, sent in the security stage"));
                }
                self.ops
                    .answer(&cfg.offer, self.session_type, key, value, max_burst_in_request)
                    .map_err(|why| Fail { code: status::INITIATOR_ERROR, why })?
            } else {
                // X- and X# extension keys nobody here defines, and unknown keys (RFC 7143 §6.2).
                vec![(key.to_string(), "NotUnderstood".to_string())]
            };
            for (k, v) in &answers {
                text::push(out, k, v);
            }
            self.seen.push(Seen { key: key.to_string(), value: value.to_string(), answers });
        }

        if first {
            self.check_names(cfg)?;
            if self.session_type == SessionType::Normal {
                text::push(out, "TargetPortalGroupTag", &cfg.portal_group_tag.to_string());
                if let Some(alias) = self.target_name.as_deref().and_then(|t| t.rsplit_once(':')).map(|(_, a)| a) {
                    text::push(out, "TargetAlias", alias);
                }
            }
        }
        if security {
            self.finish_chap(cfg, chap_keys, out)?;
            return self.security_transit(cfg, req);
        }
        self.operational_transit(cfg, req, out)
    }

    fn check_header(&mut self, cfg: &LoginConfig, req: &LoginRequest) -> Result<(), Fail> {
        if req.cont {
            return fail(status::TARGET_ERROR, "a Login Request with the C bit reached the login unreassembled");
        }
        if req.version_min > VERSION || req.version_max < req.version_min {
            return fail(
                status::UNSUPPORTED_VERSION,
                format!("versions {}..={} do not include {VERSION}", req.version_min, req.version_max),
            );
        }
        match &self.first {
            None => {
                if req.tsih != 0 {
                    let code = if (cfg.session_exists)(req.tsih) { status::TOO_MANY_CONNECTIONS } else { status::SESSION_DOES_NOT_EXIST };
                    return fail(code, format!("TSIH {} asks to add a connection to a session (MaxConnections=1)", req.tsih));
                }
                if req.csg != STAGE_SECURITY && req.csg != STAGE_OPERATIONAL {
                    return fail(status::INITIATOR_ERROR, format!("a login cannot start in stage {}", req.csg));
                }
                if req.csg == STAGE_OPERATIONAL && cfg.chap.is_some() {
                    return fail(status::AUTHENTICATION_FAILURE, "CHAP is required; the initiator skipped the security stage");
                }
                self.first = Some(*req);
            }
            Some(f) => {
                if (f.isid, f.tsih, f.cid) != (req.isid, req.tsih, req.cid) {
                    return fail(status::INITIATOR_ERROR, "ISID, TSIH or CID changed during the login");
                }
                let stage = if self.phase == Phase::Security { STAGE_SECURITY } else { STAGE_OPERATIONAL };
                if req.csg != stage {
                    return fail(status::INITIATOR_ERROR, format!("CSG {} while the login is in stage {stage}", req.csg));
                }
            }
        }
        if req.transit {
            let ok = match req.csg {
                STAGE_SECURITY => req.nsg == STAGE_OPERATIONAL || req.nsg == STAGE_FULL_FEATURE,
                _ => req.nsg == STAGE_FULL_FEATURE,
            };
            if !ok {
                return fail(status::INITIATOR_ERROR, format!("transit from stage {} to {} is not a stage change", req.csg, req.nsg));
            }
        }
        Ok(())
    }

    /// The keys of the leading login (names, session type) and the target-only keys; `None`:
    /// not one of them.
    fn leading_key(&mut self, key: &str, value: &str, first: bool) -> Result<Option<Vec<(String, String)>>, Fail> {
        let slot = match key {
            "InitiatorName" => &mut self.initiator_name,
            "TargetName" => &mut self.target_name,
            "SessionType" => {
                return if first { Ok(Some(vec![])) } else { fail(status::INITIATOR_ERROR, "SessionType after the first request") }
            }
            "InitiatorAlias" => {
                self.initiator_alias = Some(value.to_string());
                return Ok(Some(vec![]));
            }
            // Keys only a target sends, and SendTargets (full feature phase only).
            "TargetAlias" | "TargetAddress" | "TargetPortalGroupTag" | "SendTargets" => {
                return Ok(Some(vec![(key.to_string(), "Reject".to_string())]));
            }
            // Declarative (RFC 7143 §13.26): nothing to answer, nothing we use.
            "X#NodeArchitecture" => return Ok(Some(vec![])),
            _ => return Ok(None),
        };
        if !first {
            return fail(status::INITIATOR_ERROR, format!("{key} may only be sent in the first Login Request"));
        }
        *slot = Some(value.to_string());
        Ok(Some(vec![]))
    }

    fn check_names(&mut self, cfg: &LoginConfig) -> Result<(), Fail> {
        let Some(initiator) = &self.initiator_name else {
            return fail(status::MISSING_PARAMETER, "no InitiatorName in the first Login Request");
        };
        if !names::valid(initiator) {
            return fail(status::INITIATOR_ERROR, format!("InitiatorName {initiator:?} is not an iqn./eui./naa. name"));
        }
        match self.session_type {
            SessionType::Discovery => self.target_name = None,
            SessionType::Normal => {
                let Some(target) = &self.target_name else {
                    return fail(status::MISSING_PARAMETER, "no TargetName in the first Login Request of a Normal session");
                };
                let target = names::normalize(target);
                if !names::valid(&target) || !(cfg.target_exists)(&target) {
                    return fail(status::NOT_FOUND, format!("target {target} is not served here"));
                }
                self.target_name = Some(target);
            }
        }
        Ok(())
    }

    fn security_key(
        &mut self,
        cfg: &LoginConfig,
        key: &str,
        value: &str,
        challenge: &[u8; 16],
        keys: &mut ChapKeys,
    ) -> Result<Vec<(String, String)>, Fail> {
        let answer = |v: &str| vec![(key.to_string(), v.to_string())];
        match key {
            "AuthMethod" => {
                if !matches!(self.auth, Auth::Open) {
                    return fail(status::INITIATOR_ERROR, "AuthMethod renegotiated");
                }
                let methods: Vec<&str> = value.split(',').collect();
                if methods.iter().any(|m| m.is_empty()) {
                    return Ok(answer("Reject"));
                }
                // RFC 7143 §6.3.1: the first method in the initiator's list that the target
                // supports and is allowed to use for it; the config allows exactly one.
                let wanted = if cfg.chap.is_some() { "CHAP" } else { "None" };
                if !methods.contains(&wanted) {
                    return fail(status::AUTHENTICATION_FAILURE, format!("AuthMethod={value}: this target requires {wanted}"));
                }
                self.auth = if cfg.chap.is_some() { Auth::ChapChosen } else { Auth::None };
                Ok(answer(wanted))
            }
            "CHAP_A" => {
                if !matches!(self.auth, Auth::ChapChosen) {
                    return fail(status::INITIATOR_ERROR, "CHAP_A without AuthMethod=CHAP agreed");
                }
                if !value.split(',').any(|a| text::number(a, u64::MAX) == Some(chap::ALGORITHM_MD5)) {
                    return fail(status::AUTHENTICATION_FAILURE, format!("CHAP_A={value} does not offer MD5 (5)"));
                }
                let ex = Exchange::new(challenge);
                let answers = vec![
                    ("CHAP_A".to_string(), chap::ALGORITHM_MD5.to_string()),
                    ("CHAP_I".to_string(), ex.chap_i()),
                    ("CHAP_C".to_string(), ex.chap_c()),
                ];
                self.auth = Auth::Challenged(ex);
                Ok(answers)
            }
            "CHAP_N" | "CHAP_R" | "CHAP_I" | "CHAP_C" => {
                if !matches!(self.auth, Auth::Challenged(_)) {
                    return fail(status::INITIATOR_ERROR, format!("{key} before the target's CHAP challenge"));
                }
                let slot = match key {
                    "CHAP_N" => &mut keys.n,
                    "CHAP_R" => &mut keys.r,
                    "CHAP_I" => &mut keys.i,
                    _ => &mut keys.c,
                };
                *slot = Some(value.to_string());
                Ok(vec![])
            }
            // SRP_, KRB_, SPKM_ keys: methods never chosen here.
            _ => fail(status::INITIATOR_ERROR, format!("{key} belongs to an authentication method not agreed")),
        }
    }

    /// The initiator's CHAP_N/CHAP_R (and CHAP_I/CHAP_C for mutual CHAP) of this request.
    fn finish_chap(&mut self, cfg: &LoginConfig, keys: ChapKeys, out: &mut Vec<u8>) -> Result<(), Fail> {
        let Auth::Challenged(ex) = &self.auth else { return Ok(()) };
        let (Some(n), Some(r)) = (&keys.n, &keys.r) else {
            if keys.n.is_some() || keys.r.is_some() || keys.i.is_some() || keys.c.is_some() {
                return fail(status::AUTHENTICATION_FAILURE, "CHAP_N and CHAP_R must come together");
            }
            return Ok(());
        };
        let creds = cfg.chap.expect("CHAP chosen only when configured");
        ex.verify(creds, n, r).map_err(|e| Fail { code: status::AUTHENTICATION_FAILURE, why: e.to_string() })?;
        match (&keys.i, &keys.c) {
            (None, None) => {}
            (Some(i), Some(c)) => {
                let (name, resp) =
                    ex.answer_mutual(creds, i, c).map_err(|e| Fail { code: status::AUTHENTICATION_FAILURE, why: e.to_string() })?;
                text::push(out, "CHAP_N", &name);
                text::push(out, "CHAP_R", &resp);
            }
            _ => return fail(status::AUTHENTICATION_FAILURE, "CHAP_I and CHAP_C must come together"),
        }
        self.auth = Auth::ChapDone;
        Ok(())
    }

    fn security_transit(&mut self, cfg: &LoginConfig, req: &LoginRequest) -> Result<Step, Fail> {
        let stay = Step::Answer { transit: false, csg: STAGE_SECURITY, nsg: 0 };
        if !req.transit {
            return Ok(stay);
        }
        match self.auth {
            // RFC 7143 §13.11: AuthMethod defaults to None when not sent.
            Auth::Open if cfg.chap.is_none() => self.auth = Auth::None,
            Auth::Open => {
                return fail(status::AUTHENTICATION_FAILURE, "CHAP is required; the initiator left the security stage without it")
            }
            Auth::None | Auth::ChapDone => {}
            // Mid-exchange: the target is not ready to leave the stage (iPXE always sets T).
            Auth::ChapChosen | Auth::Challenged(_) => return Ok(stay),
        }
        let mut nsg = req.nsg;
        if nsg == STAGE_FULL_FEATURE && self.session_type == SessionType::Normal && !self.ops.offers_needed(&cfg.offer).is_empty() {
            // RFC 7143 §6.3.1: the target picks the next stage; ours must agree keys whose
            // defaults it cannot take.
            nsg = STAGE_OPERATIONAL;
        }
        if nsg == STAGE_FULL_FEATURE {
            return Ok(self.done(&cfg.offer, STAGE_SECURITY));
        }
        self.phase = Phase::Operational;
        Ok(Step::Answer { transit: true, csg: STAGE_SECURITY, nsg })
    }

    fn operational_transit(&mut self, cfg: &LoginConfig, req: &LoginRequest, out: &mut Vec<u8>) -> Result<Step, Fail> {
        self.ops.declare(&cfg.offer, out);
        if self.session_type == SessionType::Normal {
            if self.ops.offer_missing(&cfg.offer, out) {
                // Our own offers went out: the initiator must answer them before the login ends.
                return Ok(Step::Answer { transit: false, csg: STAGE_OPERATIONAL, nsg: 0 });
            }
            if let Some(why) = self.ops.offers_unanswered() {
                if req.transit {
                    return fail(status::MISSING_PARAMETER, why);
                }
            }
        }
        if !req.transit {
            return Ok(Step::Answer { transit: false, csg: STAGE_OPERATIONAL, nsg: 0 });
        }
        Ok(self.done(&cfg.offer, STAGE_OPERATIONAL))
    }

    fn done(&mut self, offer: &Offer, csg: u8) -> Step {
        self.phase = Phase::Over;
        let negotiated = self.ops.negotiated(
            offer,
            self.session_type,
            self.initiator_name.clone().expect("checked on the first request"),
            self.initiator_alias.clone(),
            self.target_name.clone(),
        );
        Step::Done { negotiated, transit: true, csg, nsg: STAGE_FULL_FEATURE }
    }
}

#[derive(Default)]
struct ChapKeys {
    n: Option<String>,
    r: Option<String>,
    i: Option<String>,
    c: Option<String>,
}

#[cfg(test)]
mod tests;
