//! The operational keys of RFC 7143 §13: each offer answered by its result function (min, max,
//! AND, OR, list choice, declarative), bad values answered "Reject" (the key keeps its default),
//! keys irrelevant to a Discovery session answered "Irrelevant", and the target's own offers for
//! keys the initiator left at a default the target cannot take.

use super::{Negotiated, Offer, SessionType};
use crate::iscsi::text::{self, yes_no};

/// RFC 7143 §13 defaults.
pub const DEFAULT_MAX_RECV: u32 = 8192;
pub const DEFAULT_MAX_BURST: u32 = 262144;
pub const DEFAULT_FIRST_BURST: u32 = 65536;
const DEFAULT_TIME2WAIT: u32 = 2;
const DEFAULT_TIME2RETAIN: u32 = 20;
/// Segment and burst lengths: 512..=2^24-1.
pub const LENGTH_MIN: u64 = 512;
pub const LENGTH_MAX: u64 = (1 << 24) - 1;
/// The iSCSIProtocolLevel we implement (RFC 7144 §2.1: 1 = RFC 7143).
const PROTOCOL_LEVEL: u64 = 1;

pub fn is_operational_key(key: &str) -> bool {
    matches!(
        key,
        "HeaderDigest"
            | "DataDigest"
            | "MaxConnections"
            | "InitialR2T"
            | "ImmediateData"
            | "MaxRecvDataSegmentLength"
            | "MaxBurstLength"
            | "FirstBurstLength"
            | "DefaultTime2Wait"
            | "DefaultTime2Retain"
            | "MaxOutstandingR2T"
            | "DataPDUInOrder"
            | "DataSequenceInOrder"
            | "ErrorRecoveryLevel"
            | "IFMarker"
            | "OFMarker"
            | "IFMarkInt"
            | "OFMarkInt"
            | "TaskReporting"
            | "iSCSIProtocolLevel"
            | "RDMAExtensions"
            | "InitiatorRecvDataSegmentLength"
            | "TargetRecvDataSegmentLength"
    )
}

/// RFC 7143 §13: "Irrelevant when: SessionType=Discovery".
fn irrelevant_in_discovery(key: &str) -> bool {
    matches!(
        key,
        "MaxConnections"
            | "InitialR2T"
            | "ImmediateData"
            | "MaxBurstLength"
            | "FirstBurstLength"
            | "MaxOutstandingR2T"
            | "DataPDUInOrder"
            | "DataSequenceInOrder"
    )
}

/// A target offer the initiator must answer.
#[derive(Clone, Debug)]
struct Offered {
    key: &'static str,
    value: u64,
    answered: bool,
}

#[derive(Default)]
pub struct Ops {
    max_send: Option<u32>,
    /// What we declared as MaxRecvDataSegmentLength (None: not yet).
    declared: Option<u32>,
    max_burst: Option<u32>,
    first_burst: Option<u32>,
    initial_r2t: Option<bool>,
    immediate_data: Option<bool>,
    max_r2t: Option<u32>,
    header_digest: Option<bool>,
    data_digest: Option<bool>,
    time2wait: Option<u32>,
    time2retain: Option<u32>,
    offered: Vec<Offered>,
}

fn pair(key: &str, value: impl ToString) -> Vec<(String, String)> {
    vec![(key.to_string(), value.to_string())]
}

/// A digest list ("CRC32C,None"): the first value we support; None: nothing acceptable.
fn choose_digest(value: &str, crc_allowed: bool) -> Option<bool> {
    for v in value.split(',') {
        match v {
            "None" => return Some(false),
            "CRC32C" if crc_allowed => return Some(true),
            _ => {}
        }
    }
    None
}

impl Ops {
    /// The answer to one operational key the initiator offered (or its answer to our offer).
    pub fn answer(
        &mut self,
        offer: &Offer,
        session: SessionType,
        key: &str,
        value: &str,
        max_burst_in_request: Option<u64>,
    ) -> Result<Vec<(String, String)>, String> {
        if let Some(o) = self.offered.iter_mut().find(|o| o.key == key && !o.answered) {
            o.answered = true;
            let ours = o.value;
            return self.take_answer(key, value, ours).map(|()| vec![]);
        }
        if session == SessionType::Discovery && irrelevant_in_discovery(key) {
            return Ok(pair(key, "Irrelevant"));
        }
        let reject = || Ok(pair(key, "Reject"));
        let length = |v: &str| text::number(v, LENGTH_MAX).filter(|&n| n >= LENGTH_MIN).map(|n| n as u32);
        Ok(match key {
            "HeaderDigest" | "DataDigest" => {
                let header = key == "HeaderDigest";
                let Some(crc) = choose_digest(value, if header { offer.header_digest } else { offer.data_digest }) else {
                    return reject();
                };
                *(if header { &mut self.header_digest } else { &mut self.data_digest }) = Some(crc);
                pair(key, if crc { "CRC32C" } else { "None" })
            }
            "MaxConnections" => match text::number(value, 65535) {
                Some(n) if n >= 1 => pair(key, 1),
                _ => return reject(),
            },
            "InitialR2T" => match text::boolean(value) {
                Some(b) => {
                    let r = b || offer.initial_r2t;
                    self.initial_r2t = Some(r);
                    pair(key, yes_no(r))
                }
                None => return reject(),
            },
            "ImmediateData" => match text::boolean(value) {
                Some(b) => {
                    let r = b && offer.immediate_data;
                    self.immediate_data = Some(r);
                    pair(key, yes_no(r))
                }
                None => return reject(),
            },
            "MaxRecvDataSegmentLength" => {
                // Declarative per direction (RFC 7143 §13.12): theirs limits what we send; the
                // answer is our own declaration.
                let Some(n) = length(value) else {
                    // Not declared then either: one key, one answer; both sides keep 8192.
                    self.declared.get_or_insert(DEFAULT_MAX_RECV);
                    return reject();
                };
                self.max_send = Some(n);
                match self.declared {
                    Some(_) => vec![],
                    None => {
                        let ours = our_max_recv(offer);
                        self.declared = Some(ours);
                        pair(key, ours)
                    }
                }
            }
            "MaxBurstLength" => {
                let Some(n) = length(value) else { return reject() };
                let r = n.min(offer.max_burst_length);
                self.max_burst = Some(r);
                pair(key, r)
            }
            "FirstBurstLength" => {
                let Some(n) = length(value) else { return reject() };
                // RFC 7143 §13.14: FirstBurstLength MUST NOT exceed MaxBurstLength; the result
                // function is min, so answering lower is allowed.
                let burst = max_burst_in_request
                    .map(|b| (b as u32).min(offer.max_burst_length))
                    .or(self.max_burst)
                    .unwrap_or(DEFAULT_MAX_BURST.min(offer.max_burst_length));
                let r = n.min(offer.first_burst_length).min(burst);
                self.first_burst = Some(r);
                pair(key, r)
            }
            "DefaultTime2Wait" => match text::number(value, 3600) {
                // Result function max; ours is 0 (no reconnect wait needed at ERL 0).
                Some(n) => {
                    self.time2wait = Some(n as u32);
                    pair(key, n)
                }
                None => return reject(),
            },
            "DefaultTime2Retain" => match text::number(value, 3600) {
                // Result function min; ours is 0: at ERL 0 nothing survives a dropped connection.
                Some(_) => {
                    self.time2retain = Some(0);
                    pair(key, 0)
                }
                None => return reject(),
            },
            "MaxOutstandingR2T" => match text::number(value, 65535) {
                Some(n) if n >= 1 => {
                    let r = (n as u32).min(offer.max_outstanding_r2t.max(1));
                    self.max_r2t = Some(r);
                    pair(key, r)
                }
                _ => return reject(),
            },
            // OR with our Yes: data always in order (the only mode we implement).
            "DataPDUInOrder" | "DataSequenceInOrder" => match text::boolean(value) {
                Some(_) => pair(key, "Yes"),
                None => return reject(),
            },
            "ErrorRecoveryLevel" => match text::number(value, 2) {
                Some(_) => pair(key, 0),
                None => return reject(),
            },
            // RFC 7143 §13.25: the obsolete marker keys; "No" for the markers (the RFC allows it
            // instead of Reject, and RFC 3720 initiators expect it), Reject for the intervals.
            "IFMarker" | "OFMarker" => match text::boolean(value) {
                Some(_) => pair(key, "No"),
                None => return reject(),
            },
            "IFMarkInt" | "OFMarkInt" => return reject(),
            // RFC 7143 §13.23: we implement the RFC 3720 task reporting semantics only.
            "TaskReporting" => {
                if value.split(',').any(|v| v == "RFC3720") {
                    pair(key, "RFC3720")
                } else {
                    return reject();
                }
            }
            "iSCSIProtocolLevel" => match text::number(value, 31) {
                Some(n) => pair(key, n.min(PROTOCOL_LEVEL)),
                None => return reject(),
            },
            // iSER (RFC 7145): not over TCP. AND with our No; its lengths are then irrelevant.
            "RDMAExtensions" => match text::boolean(value) {
                Some(_) => pair(key, "No"),
                None => return reject(),
            },
            "InitiatorRecvDataSegmentLength" | "TargetRecvDataSegmentLength" => pair(key, "Irrelevant"),
            _ => unreachable!("is_operational_key lists {key}"),
        })
    }

    /// The initiator's answer to a key we offered: it must be a result our offer allows.
    fn take_answer(&mut self, key: &str, value: &str, ours: u64) -> Result<(), String> {
        let bad = || Err(format!("{key}={value} does not answer the target's offer {key}={ours}"));
        match key {
            "ImmediateData" => match text::boolean(value) {
                Some(false) => self.immediate_data = Some(false),
                _ => return bad(),
            },
            _ => {
                let Some(n) = text::number(value, LENGTH_MAX).filter(|&n| n >= LENGTH_MIN && n <= ours) else { return bad() };
                match key {
                    "MaxBurstLength" => self.max_burst = Some(n as u32),
                    _ => self.first_burst = Some(n as u32),
                }
            }
        }
        Ok(())
    }

    /// Declares our MaxRecvDataSegmentLength once in the operational stage, asked or not.
    pub fn declare(&mut self, offer: &Offer, out: &mut Vec<u8>) {
        if self.declared.is_none() {
            let ours = our_max_recv(offer);
            self.declared = Some(ours);
            text::push(out, "MaxRecvDataSegmentLength", &ours.to_string());
        }
    }

    /// Keys the initiator left at a default our offer cannot take (a Normal session's).
    pub fn offers_needed(&self, offer: &Offer) -> Vec<(&'static str, u64)> {
        let mut v = Vec::new();
        let burst = self.max_burst.unwrap_or(DEFAULT_MAX_BURST.min(offer.max_burst_length));
        if self.max_burst.is_none() && offer.max_burst_length < DEFAULT_MAX_BURST {
            v.push(("MaxBurstLength", offer.max_burst_length as u64));
        }
        let first = offer.first_burst_length.min(burst);
        if self.first_burst.is_none() && first < DEFAULT_FIRST_BURST {
            v.push(("FirstBurstLength", first as u64));
        }
        if self.immediate_data.is_none() && !offer.immediate_data {
            v.push(("ImmediateData", 0));
        }
        v
    }

    /// Sends the offers still needed and not yet sent; true when some went out.
    pub fn offer_missing(&mut self, offer: &Offer, out: &mut Vec<u8>) -> bool {
        let mut sent = false;
        for (key, value) in self.offers_needed(offer) {
            if self.offered.iter().any(|o| o.key == key) {
                continue;
            }
            text::push(out, key, &if key == "ImmediateData" { "No".to_string() } else { value.to_string() });
            self.offered.push(Offered { key, value, answered: false });
            sent = true;
        }
        sent
    }

    pub fn offers_unanswered(&self) -> Option<String> {
        self.offered.iter().find(|o| !o.answered).map(|o| format!("the initiator did not answer the target's offer of {}", o.key))
    }

    pub fn negotiated(
        &self,
        offer: &Offer,
        session_type: SessionType,
        initiator_name: String,
        initiator_alias: Option<String>,
        target_name: Option<String>,
    ) -> Negotiated {
        let max_burst = self.max_burst.unwrap_or(DEFAULT_MAX_BURST.min(offer.max_burst_length));
        Negotiated {
            session_type,
            initiator_name,
            initiator_alias,
            target_name,
            max_send_data_segment_length: self.max_send.unwrap_or(DEFAULT_MAX_RECV),
            max_recv_data_segment_length: self.declared.unwrap_or(DEFAULT_MAX_RECV),
            max_burst_length: max_burst,
            first_burst_length: self.first_burst.unwrap_or(DEFAULT_FIRST_BURST).min(max_burst),
            initial_r2t: self.initial_r2t.unwrap_or(true),
            immediate_data: self.immediate_data.unwrap_or(offer.immediate_data),
            max_outstanding_r2t: self.max_r2t.unwrap_or(1),
            max_connections: 1,
            header_digest: self.header_digest.unwrap_or(false),
            data_digest: self.data_digest.unwrap_or(false),
            default_time2wait: self.time2wait.unwrap_or(DEFAULT_TIME2WAIT),
            default_time2retain: self.time2retain.unwrap_or(DEFAULT_TIME2RETAIN),
            error_recovery_level: 0,
        }
    }
}

/// The configured receive limit, kept inside the RFC's range.
fn our_max_recv(offer: &Offer) -> u32 {
    offer.max_recv_data_segment_length.clamp(LENGTH_MIN as u32, LENGTH_MAX as u32)
}
