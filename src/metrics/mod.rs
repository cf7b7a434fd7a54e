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
}
