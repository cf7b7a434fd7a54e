//! `bootfarm doctor`: what an admin runs on a new box or a broken one. It checks the machine
//! (io_uring, limits, ports, capabilities, MTU: `system`), the configuration and every vdisk
//! chain, and the farm (peers up, same generation, identical replicas, clocks: `peers`), and
//! prints one line per finding with what to do. Exit 0: all fine, 1: warnings, 2: errors.
//! It is a one-shot command line tool, not the data path: it reads /proc and /sys, tries an
//! io_uring and asks the peers over HTTP with a timeout, and serves nothing.

mod peers;
mod system;

use crate::config::{self, Config, Overrides};
use crate::image::{Chain, ChainLimits};
use std::fmt;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Ok,
    Warn,
    Error,
}

/// One line of the report: how bad, which check, what was found and what to do.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub level: Level,
    pub check: &'static str,
    pub text: String,
}

impl Finding {
    pub fn ok(check: &'static str, text: impl Into<String>) -> Finding {
        Finding { level: Level::Ok, check, text: text.into() }
    }
    pub fn warn(check: &'static str, text: impl Into<String>) -> Finding {
        Finding { level: Level::Warn, check, text: text.into() }
    }
    pub fn error(check: &'static str, text: impl Into<String>) -> Finding {
        Finding { level: Level::Error, check, text: text.into() }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let l = match self.level {
            Level::Ok => "ok",
            Level::Warn => "warn",
            Level::Error => "error",
        };
        write!(f, "{l:<5} {:<9} {}", self.check, self.text)
    }
}

/// Runs every check for `file`, prints the report and returns the exit status.
pub fn run(file: &Path) -> u8 {
    let findings = examine(file);
    for f in &findings {
        println!("{f}");
    }
    let count = |l| findings.iter().filter(|f| f.level == l).count();
    let (w, e) = (count(Level::Warn), count(Level::Error));
    println!("{} checks: {} ok, {w} warning(s), {e} error(s)", findings.len(), count(Level::Ok));
    match findings.iter().map(|f| f.level).max() {
        Some(Level::Error) => 2,
        Some(Level::Warn) => 1,
        _ => 0,
    }
}

/// Every finding, machine first, then the configuration, the vdisks and the farm.
pub fn examine(file: &Path) -> Vec<Finding> {
    let mut out = Vec::new();
    // The configuration as far as it goes: a file that parses but does not build (a vdisk
    // that cannot be opened) still gives the limits and ports for the machine checks.
    let loaded = config::load(file, &Overrides::default(), 1, None);
    let (cfg, base, from_file) = match &loaded {
        Ok(s) => (s.config.clone(), PathBuf::new(), true),
        Err(_) => match std::fs::read_to_string(file).ok().and_then(|t| config::parse(file, &t).ok()) {
            Some(c) => (c, file.parent().map(Path::to_path_buf).unwrap_or_default(), true),
            None => (Config::default(), PathBuf::new(), false),
        },
    };
    out.extend(system::io_uring());
    out.push(system::memlock());
    out.push(system::open_files(&cfg));
    out.extend(system::ports(&cfg));
    out.extend(system::capabilities(&cfg));
    out.extend(system::mtu(&cfg));
    match &loaded {
        Ok(s) => out.push(Finding::ok(
            "config",
            format!("{}: valid ({} vdisk(s), {} farm server(s))", file.display(), s.vdisks.len(), s.farm.len()),
        )),
        Err(e) => {
            let also = if from_file { "" } else { "; the machine checks above used the defaults" };
            out.push(Finding::error("config", format!("{e}; fix it, then `bootfarm config check {}`{also}", file.display())));
        }
    }
    if from_file {
        for v in &cfg.vdisk {
            out.push(vdisk(&v.name, &base.join(&v.path), cfg.image.chain_depth_max));
        }
    }
    if let Ok(s) = &loaded {
        out.extend(peers::farm(s));
    }
    out
}

/// `bootfarm vdisk verify` of one chain: the problems found at open, then the deep check of
/// every member. Ok: a one-line summary; Err: the first defect, naming its file.
pub fn verify_chain(path: &Path, depth_max: usize) -> Result<String, String> {
    let chain = Chain::open(path, ChainLimits { depth_max }).map_err(|e| e.to_string())?;
    for l in &chain.layers {
        if let Some(p) = l.problems.first() {
            return Err(format!("{}: {p}", l.path.display()));
        }
        l.deep_check().map_err(|d| format!("{}: {d}", l.path.display()))?;
    }
    if let Some(l) = chain.layers.iter().find(|l| l.changed_in_place()) {
        return Err(format!(
            "{}: the file changed while it was being read (written in place or truncated): the result is not usable; run again once nothing writes it",
            l.path.display()
        ));
    }
    Ok(format!("{}: ok ({} image(s) in the chain, {} bytes virtual)", path.display(), chain.layers.len(), chain.virtual_size()))
}

fn vdisk(name: &str, path: &Path, depth_max: usize) -> Finding {
    match verify_chain(path, depth_max) {
        Ok(s) => Finding::ok("vdisk", format!("{name}: {s}")),
        Err(e) => Finding::error(
            "vdisk",
            format!("{name}: {e}; restore the image from a good copy (another farm node's, byte for byte) or point the [[vdisk]] at one"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_levels() {
        let f = Finding::warn("nofile", "soft limit 1024");
        assert_eq!(f.to_string(), "warn  nofile    soft limit 1024");
        assert!(Level::Error > Level::Warn && Level::Warn > Level::Ok);
    }

    #[test]
    fn a_missing_file_is_an_error_and_the_machine_is_still_checked() {
        let f = examine(Path::new("/nonexistent/bootfarm.toml"));
        let c = f.iter().find(|f| f.check == "config").unwrap();
        assert_eq!(c.level, Level::Error);
        assert!(c.text.contains("cannot read") && c.text.contains("used the defaults"), "{}", c.text);
        assert!(f.iter().any(|f| f.check == "io_uring") && f.iter().any(|f| f.check == "nofile"));
    }
}
