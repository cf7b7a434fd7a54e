//! A running transfer's port: what a packet there means for the transfer, what a stranger
//! gets, and how an ended transfer is counted, described and told to its client. Sans-IO: the
//! engine compares addresses, sends the ERROR this returns and logs the outcome.
//!
//! The one rule that is not bookkeeping: a client that never acknowledged anything may be a
//! spoofed address, so a transfer that timed out before its first ACK sends it nothing.

use super::server::Refusal;
use super::transfer::{Status, Transfer};
use super::wire::{self, Packet};
use crate::metrics::Counter;
use std::time::Instant;

/// The answer to a packet at a transfer's port from another address than its client's
/// (RFC 1350: ERROR 5, and the transfer goes on).
pub const WRONG_TID: Refusal = Refusal { code: wire::ERR_UNKNOWN_TID, message: "unknown transfer ID", counter: Counter::TftpWrongTid };

/// Feeds a packet from the transfer's own client to its transfer. Anything but an ACK or an
/// ERROR is malformed here: counted (the counter is returned) and otherwise ignored.
pub fn from_client(transfer: &mut Transfer, payload: &[u8], now: Instant) -> Result<(), Counter> {
    match wire::parse(payload) {
        Ok(Packet::Ack { block }) => transfer.handle_ack(block, now),
        Ok(Packet::Error { code, .. }) => transfer.handle_error(code),
        _ => return Err(Counter::TftpMalformed),
    }
    Ok(())
}

/// How an ended transfer is counted and logged, and the ERROR message (code 0) its client gets,
/// if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ending {
    pub counter: Counter,
    pub outcome: &'static str,
    pub error: Option<&'static str>,
}

/// The ending of a transfer with `status` (`Active`: ended by shutdown). `file_changed`: the
/// engine saw the file copied over or truncated under it; `confirmed`: the client acknowledged
/// something.
pub fn ending(status: Status, file_changed: bool, confirmed: bool) -> Ending {
    let (counter, outcome) = match status {
        _ if file_changed => (Counter::TftpFailedFileChanged, "aborted: the file changed on the server (copied over or truncated)"),
        Status::Done => (Counter::TftpCompleted, "completed"),
        Status::TimedOut => (Counter::TftpFailedTimeout, "timed out"),
        Status::TooLong => (Counter::TftpFailedLifetime, "longer than tftp.transfer_lifetime_max_ms"),
        Status::SourceFailed => (Counter::TftpFailedFileChanged, "file changed"),
        Status::Evicted => (Counter::TftpFailedEvicted, "evicted before its first ACK (table full)"),
        Status::ClientError(_) => (Counter::TftpFailedClient, "ended by the client"),
        Status::Active => (Counter::TftpFailedShutdown, "aborted by shutdown"),
    };
    let error = match status {
        _ if file_changed => Some("file changed on the server during the transfer; retry"),
        Status::TimedOut if confirmed => Some("transfer timed out"),
        Status::TooLong => Some("transfer took too long"),
        Status::SourceFailed => Some("file changed during the transfer, retry"),
        Status::Active => Some("server shutting down"),
        _ => None,
    };
    Ending { counter, outcome, error }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unconfirmed_client_gets_no_timeout_error_and_a_changed_file_wins_over_the_status() {
        assert_eq!(ending(Status::TimedOut, false, false).error, None);
        assert_eq!(ending(Status::TimedOut, false, true).error, Some("transfer timed out"));
        assert_eq!(ending(Status::TimedOut, false, true).counter, Counter::TftpFailedTimeout);
        let changed = ending(Status::Done, true, true);
        assert_eq!(changed.counter, Counter::TftpFailedFileChanged);
        assert_eq!(changed.error, Some("file changed on the server during the transfer; retry"));
        assert_eq!(ending(Status::Done, false, true), Ending { counter: Counter::TftpCompleted, outcome: "completed", error: None });
        assert_eq!(ending(Status::ClientError(3), false, true).error, None, "the client ended it: no answer");
        assert_eq!(ending(Status::Evicted, false, false).error, None, "an evicted transfer is left without a packet");
        assert_eq!(ending(Status::Active, false, true).error, Some("server shutting down"));
    }

    #[test]
    fn only_ack_and_error_reach_the_transfer_from_its_client() {
        use super::super::transfer::{negotiate, Limits};
        let now = Instant::now();
        let req = match wire::parse(b"\x00\x01boot.bin\x00octet\x00").unwrap() {
            Packet::Request(r) => r,
            _ => unreachable!(),
        };
        let n = negotiate(&req, 1000, &Limits::DEFAULT).unwrap();
        let mut t = Transfer::new(n, 1000, &Limits::DEFAULT, now);
        assert_eq!(from_client(&mut t, &wire::data_header(1), now), Err(Counter::TftpMalformed));
        assert_eq!(from_client(&mut t, b"\x00", now), Err(Counter::TftpMalformed));
        assert_eq!(t.status(), Status::Active);
        assert_eq!(from_client(&mut t, b"\x00\x05\x00\x03nope\x00", now), Ok(()));
        assert_eq!(t.status(), Status::ClientError(3));
    }
}
