//! A hashed timer wheel with 1 ms ticks, one per worker for every service's deadlines, each
//! entry keyed by the [`Token`] of what it wakes. Sessions keep at most one live entry: when a deadline
//! moves later the old entry stays and, when it fires, the owner checks its real deadline and
//! re-arms; when it moves earlier a new entry is added and the stale one is ignored when it
//! fires (the generation or the deadline no longer match). Insert O(1), expiry O(expired).

use super::token::Token;
use std::time::{Duration, Instant};

const SLOTS: usize = 4096;

pub struct Wheel {
    origin: Instant,
    /// Next tick to process.
    current: u64,
    slots: Vec<Vec<(u64, u64)>>,
    len: usize,
}

impl Wheel {
    pub fn new(now: Instant) -> Wheel {
        Wheel { origin: now, current: 0, slots: (0..SLOTS).map(|_| Vec::new()).collect(), len: 0 }
    }

    fn tick_of(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.origin).as_millis() as u64
    }

    /// Arms a wake-up for `token` at `due` (rounded up to the next tick).
    pub fn insert(&mut self, due: Instant, token: Token) -> u64 {
        let tick = (self.tick_of(due) + 1).max(self.current);
        self.slots[(tick % SLOTS as u64) as usize].push((tick, token.pack()));
        self.len += 1;
        tick
    }

    /// Moves time to `now`, appending the token of every expired entry to `out`.
    pub fn advance(&mut self, now: Instant, out: &mut Vec<Token>) {
        let target = self.tick_of(now);
        if self.len == 0 {
            self.current = target + 1;
            return;
        }
        // After a long sleep one lap covers every slot.
        let end = target.min(self.current + SLOTS as u64 - 1);
        while self.current <= end {
            let slot = &mut self.slots[(self.current % SLOTS as u64) as usize];
            let mut i = 0;
            while i < slot.len() {
                if slot[i].0 <= target {
                    let (_, t) = slot.swap_remove(i);
                    out.push(Token::unpack(t));
                    self.len -= 1;
                } else {
                    i += 1;
                }
            }
            self.current += 1;
        }
        self.current = self.current.max(target + 1);
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How long the worker may sleep without missing a tick that matters.
    pub fn wait_hint(&self) -> Duration {
        if self.len == 0 {
            Duration::from_millis(100)
        } else {
            Duration::from_millis(5)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::token::ServiceId;

    fn t(id: u32, g: u16) -> Token {
        Token::new(ServiceId::Tftp, 0, id, g)
    }

    #[test]
    fn fires_in_order_of_ticks_and_handles_laps() {
        let t0 = Instant::now();
        let mut w = Wheel::new(t0);
        w.insert(t0 + Duration::from_millis(10), t(1, 0));
        w.insert(t0 + Duration::from_millis(5000), t(2, 0)); // beyond one lap of 4096 ticks
        w.insert(t0 + Duration::from_millis(3), t(3, 7));
        let mut out = Vec::new();
        w.advance(t0 + Duration::from_millis(2), &mut out);
        assert!(out.is_empty());
        w.advance(t0 + Duration::from_millis(20), &mut out);
        assert_eq!(out, vec![t(3, 7), t(1, 0)]);
        out.clear();
        w.advance(t0 + Duration::from_millis(4200), &mut out);
        assert!(out.is_empty(), "a later lap's entry stays");
        w.advance(t0 + Duration::from_millis(5002), &mut out);
        assert_eq!(out, vec![t(2, 0)]);
        assert!(w.is_empty());
        w.advance(t0 + Duration::from_secs(100), &mut out);
        w.insert(t0 + Duration::from_secs(99), t(4, 0)); // in the past: fires at the next tick
        out.clear();
        w.advance(t0 + Duration::from_millis(100_002), &mut out);
        assert_eq!(out, vec![t(4, 0)]);
    }
}
