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
    /// When each completion happened, in milliseconds since the storm started.
    pub done_at_ms: Vec<f64>,
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
            done_at_ms: Vec::new(),
        }
    }

    pub fn fail(&mut self, reason: &'static str) {
        match self.failures.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, n)) => *n += 1,
            None => self.failures.push((reason, 1)),
        }
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

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A polyline chart (x, y) in an inline SVG, with axis labels; no script, no network.
fn svg_chart(title: &str, xlabel: &str, ylabel: &str, points: &[(f64, f64)], bars: bool) -> String {
    let (w, h, l, b) = (640.0, 260.0, 60.0, 40.0);
    let xmax = points.iter().map(|p| p.0).fold(0.0f64, f64::max).max(1e-9);
    let ymax = points.iter().map(|p| p.1).fold(0.0f64, f64::max).max(1e-9);
    let x = |v: f64| l + v / xmax * (w - l - 10.0);
    let y = |v: f64| h - b - v / ymax * (h - b - 20.0);
    let mut svg = format!(
        "<figure><figcaption>{}</figcaption><svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\"><rect width=\"{w}\" height=\"{h}\" fill=\"white\"/>\n\
         <line x1=\"{l}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#444\"/><line x1=\"{l}\" y1=\"20\" x2=\"{l}\" y2=\"{}\" stroke=\"#444\"/>\n\
         <text x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-size=\"12\">{}</text>\n\
         <text x=\"14\" y=\"{}\" font-size=\"12\" transform=\"rotate(-90 14 {})\" text-anchor=\"middle\">{}</text>\n\
         <text x=\"{l}\" y=\"{}\" font-size=\"11\">0</text><text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"end\">{:.1}</text>\n\
         <text x=\"{}\" y=\"24\" font-size=\"11\" text-anchor=\"end\">{:.0}</text>\n",
        esc(title),
        h - b,
        w - 10.0,
        h - b,
        h - b,
        (w + l) / 2.0,
        h - 8.0,
        esc(xlabel),
        (h - b) / 2.0,
        (h - b) / 2.0,
        esc(ylabel),
        h - b + 14.0,
        w - 10.0,
        h - b + 14.0,
        xmax,
        l - 4.0,
        ymax
    );
    if bars {
        let bw = ((w - l - 10.0) / points.len().max(1) as f64 - 1.0).max(1.0);
        for &(px, py) in points {
            svg += &format!(
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{bw:.1}\" height=\"{:.1}\" fill=\"#3b7dd8\"/>\n",
                x(px) - bw,
                y(py),
                h - b - y(py)
            );
        }
    } else {
        let pts: Vec<String> = points.iter().map(|&(px, py)| format!("{:.1},{:.1}", x(px), y(py))).collect();
        svg += &format!("<polyline fill=\"none\" stroke=\"#3b7dd8\" stroke-width=\"2\" points=\"{}\"/>\n", pts.join(" "));
    }
    svg + "</svg></figure>\n"
}

impl Phase {
    /// One self-contained HTML page: summary, completions over time, time-to-boot histogram.
    pub fn html(&self, wall: Duration, context: &str) -> String {
        let mut t: Vec<f64> = self.done_at_ms.clone();
        t.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let timeline: Vec<(f64, f64)> =
            std::iter::once((0.0, 0.0)).chain(t.iter().enumerate().map(|(i, ms)| (ms / 1000.0, (i + 1) as f64))).collect();
        let mut hist = Vec::new();
        if !self.micros.is_empty() {
            let max = self.micros.max().max(1);
            let step = (max / 40).max(1);
            for v in self.micros.iter_linear(step) {
                hist.push((v.value_iterated_to() as f64 / 1000.0, v.count_since_last_iteration() as f64));
            }
        }
        let failures: String = self.failures.iter().map(|(r, n)| format!("<li>{n} {}</li>", esc(r))).collect();
        format!(
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>bootstorm report</title>\n\
             <style>body{{font-family:sans-serif;max-width:720px;margin:2em auto}}table{{border-collapse:collapse}}td,th{{padding:2px 10px;text-align:right}}figcaption{{font-weight:bold;margin-top:1em}}</style>\n\
             </head><body>\n<h1>bootstorm: phase {}</h1>\n<p>{}</p>\n\
             <table><tr><th>completed</th><th>failed</th><th>seconds</th><th>per second</th><th>MB/s</th><th>resends</th></tr>\n\
             <tr><td>{}</td><td>{}</td><td>{:.3}</td><td>{:.1}</td><td>{:.1}</td><td>{}</td></tr></table>\n\
             <table><tr><th>ms</th><th>p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>max</th></tr>\n\
             <tr><td>time to complete</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td></tr></table>\n\
             <ul>{failures}</ul>\n{}{}</body></html>\n",
            esc(self.name),
            esc(context),
            self.completed,
            self.failed(),
            wall.as_secs_f64(),
            self.completed as f64 / wall.as_secs_f64().max(1e-9),
            self.bytes as f64 / wall.as_secs_f64().max(1e-9) / 1e6,
            self.resends,
            self.ms(0.5),
            self.ms(0.9),
            self.ms(0.99),
            self.ms(0.999),
            self.micros.max() as f64 / 1000.0,
            svg_chart("Completed over time", "seconds since the storm started", "completed", &timeline, false),
            svg_chart("Time to complete (distribution)", "milliseconds", "targets", &hist, true),
        )
    }
}

/// One self-contained HTML page for several phases: per phase its summary, completions over
/// time and the time distribution.
pub fn page(phases: &[&Phase], wall: Duration, context: &str) -> String {
    let mut body = String::new();
    for p in phases {
        let h = p.html(wall, context);
        let start = h.find("<h1>").unwrap_or(0);
        let end = h.rfind("</body>").unwrap_or(h.len());
        body.push_str(&h[start..end].replacen("<h1>", "<h2>", 1).replacen("</h1>", "</h2>", 1));
    }
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>bootstorm report</title>\n\
         <style>body{{font-family:sans-serif;max-width:720px;margin:2em auto}}table{{border-collapse:collapse}}td,th{{padding:2px 10px;text-align:right}}figcaption{{font-weight:bold;margin-top:1em}}</style>\n\
         </head><body>\n<h1>bootstorm report</h1>\n<p>{}</p>\n{body}</body></html>\n",
        esc(context)
    )
}

/// CPU time (user + system) bootstorm itself has used so far, in ms: what the client costs next
/// to the server it measures on the same cores.
pub fn own_cpu_ms() -> f64 {
    // Safety: getrusage fills the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let ms = |t: libc::timeval| t.tv_sec as f64 * 1000.0 + t.tv_usec as f64 / 1000.0;
    ms(u.ru_utime) + ms(u.ru_stime)
}

/// Raises the open-file limit to its hard limit (a storm holds a socket or two per target in
/// flight; many systems start at a soft limit of 1024) and says so on stderr when even that is
/// below what `in_flight` targets need, before any target fails with "no local socket".
pub fn open_files_for(in_flight: u64, per_target: u64) {
    let have = bootfarm::serve::raise_nofile_limit();
    let need = in_flight * per_target + 64;
    if have < need {
        eprintln!(
            "bootstorm: the open-file limit is {have}, below the ~{need} that {in_flight} targets in flight need; \
             raise it (ulimit -Hn / LimitNOFILE) or lower --concurrency, else targets fail with \"no local socket\""
        );
    }
}
