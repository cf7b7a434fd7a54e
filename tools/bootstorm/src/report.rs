//! Results of a storm: counts by outcome, durations in an hdrhistogram, a text summary and JSON.

use hdrhistogram::Histogram;
use std::fmt::Write;
use std::time::Duration;

pub struct Phase {
    pub name: &'static str,
    pub completed: u64,
    pub failures: Vec<(&'static str, u64)>,
    pub bytes: u64,
    pub resends: u64,
    /// Time to complete each target's phase, in microseconds.
    pub micros: Histogram<u64>,
}

impl Phase {
    pub fn new(name: &'static str) -> Phase {
        Phase {
            name,
            completed: 0,
            failures: Vec::new(),
            bytes: 0,
            resends: 0,
            micros: Histogram::new_with_bounds(1, 3_600_000_000, 3).unwrap(),
        }
    }

    pub fn fail(&mut self, reason: &'static str) {
        match self.failures.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, n)) => *n += 1,
            None => self.failures.push((reason, 1)),
        }
    }

    pub fn merge(&mut self, o: &Phase) {
        self.completed += o.completed;
        self.bytes += o.bytes;
        self.resends += o.resends;
        for &(r, n) in &o.failures {
            for _ in 0..n {
                self.fail(r);
            }
        }
        self.micros.add(&o.micros).unwrap();
    }

    pub fn failed(&self) -> u64 {
        self.failures.iter().map(|(_, n)| n).sum()
    }

    fn ms(&self, q: f64) -> f64 {
        if self.micros.is_empty() {
            0.0
        } else {
            self.micros.value_at_quantile(q) as f64 / 1000.0
        }
    }

    pub fn text(&self, wall: Duration) -> String {
        let mut s = String::new();
        let secs = wall.as_secs_f64().max(1e-9);
        let _ = writeln!(s, "phase {}: {} completed, {} failed in {:.3} s", self.name, self.completed, self.failed(), secs);
        let _ = writeln!(s, "  rate:        {:.1} completions/s, {:.1} MB/s", self.completed as f64 / secs, self.bytes as f64 / secs / 1e6);
        let _ = writeln!(
            s,
            "  time (ms):   p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
            self.ms(0.5),
            self.ms(0.9),
            self.ms(0.99),
            self.ms(0.999),
            self.micros.max() as f64 / 1000.0
        );
        let _ = writeln!(s, "  bytes:       {}   client resends: {}", self.bytes, self.resends);
        for (r, n) in &self.failures {
            let _ = writeln!(s, "  failed:      {n} {r}");
        }
        s
    }

    pub fn json(&self, wall: Duration) -> String {
        let secs = wall.as_secs_f64().max(1e-9);
        let failures: Vec<String> = self.failures.iter().map(|(r, n)| format!("\"{r}\": {n}")).collect();
        format!(
            "{{\"phase\": \"{}\", \"completed\": {}, \"failed\": {}, \"failures\": {{{}}}, \"seconds\": {:.6}, \"per_second\": {:.3}, \"bytes\": {}, \"resends\": {}, \"ms\": {{\"p50\": {:.3}, \"p90\": {:.3}, \"p99\": {:.3}, \"p99_9\": {:.3}, \"max\": {:.3}}}}}",
            self.name,
            self.completed,
            self.failed(),
            failures.join(", "),
            secs,
            self.completed as f64 / secs,
            self.bytes,
            self.resends,
            self.ms(0.5),
            self.ms(0.9),
            self.ms(0.99),
            self.ms(0.999),
            self.micros.max() as f64 / 1000.0
        )
    }
}
