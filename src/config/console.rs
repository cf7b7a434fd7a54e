//! The `[console]` section: the operator's web console served at `/` by every node (read-only
//! by default), its live event stream and the token that allows its one action (drain).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Console {
    /// Allows POST /api/drain and /api/resume with `Authorization: Bearer <token>`; unset =
    /// the console is read-only (every POST is refused with 403).
    pub token: Option<String>,
    /// Event-stream (`/api/events`) connections open at once on this node, every worker
    /// together: a browser tab holds one. Beyond, 503.
    pub events_max: usize,
    /// How often an event-stream connection gets the node's status (or a keep-alive comment
    /// when nothing changed).
    pub event_interval_ms: u64,
}

impl Default for Console {
    fn default() -> Self {
        Console { token: None, events_max: 16, event_interval_ms: 1000 }
    }
}

/// A token shorter than this is refused: it is the only thing between the network and a drain.
pub const TOKEN_BYTES_MIN: usize = 16;

impl Console {
    pub fn validate(&self) -> Result<(), (&'static str, String, &'static str)> {
        if let Some(t) = &self.token {
            if t.len() < TOKEN_BYTES_MIN || !t.bytes().all(|b| b.is_ascii_graphic()) {
                return Err((
                    "console.token",
                    "(hidden)".into(),
                    "must be at least 16 printable characters without spaces (e.g. head -c 24 /dev/urandom | base64)",
                ));
            }
        }
        if self.events_max > 1024 {
            return Err(("console.events_max", self.events_max.to_string(), "at most 1024 event streams (0 = none)"));
        }
        if !(100..=60_000).contains(&self.event_interval_ms) {
            return Err(("console.event_interval_ms", self.event_interval_ms.to_string(), "must be between 100 and 60000"));
        }
        Ok(())
    }
}
