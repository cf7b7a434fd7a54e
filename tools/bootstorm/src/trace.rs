//! `bootstorm trace convert`: bootfarm's server-side NBD traces (`nbd.trace_dir`, one CSV file
//! per connection: `us,op,offset,length` under a `#` header) into the trace `bootstorm boot
//! --trace` replays (`offset,length,op`, 4 KiB aligned). The connections of one boot (several
//! files) are merged in time order (accept time from the header + µs). Reads and writes are
//! kept, each widened to the 4 KiB blocks it touches; flush, trim, write zeroes, block status
//! and disconnect are counted and left out (the replay sends reads and writes only, one at a
//! time, without the gaps between them: it measures the server, not the guest's think time).
//! Bounded: at most `LINES_MAX` requests in all.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Merge bootfarm NBD trace files (one per connection) into one replay trace.
    Convert {
        /// bootfarm trace files (nbd-*.csv), the connections of one boot.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Where to write the replay trace (CSV `offset,length,op`).
        #[arg(short, long)]
        output: PathBuf,
    },
}

/// Requests one conversion reads, all files together.
const LINES_MAX: usize = 10_000_000;
const BLOCK: u64 = 4096;

/// One traced request: (accept time ms * 1000 + µs, op, offset, length).
type Req = (u64, char, u64, u64);

/// A trace file's header fields and its requests.
struct File {
    header: String,
    disk_bytes: u64,
    reqs: Vec<Req>,
}

fn field<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    header.split_whitespace().find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

fn parse(name: &str, text: &str, budget: &mut usize) -> Result<File, String> {
    let mut lines = text.lines().enumerate();
    let header = match lines.next() {
        Some((_, h)) if h.starts_with("# bootfarm nbd trace:") => h.to_string(),
        _ => return Err(format!("{name}: not a bootfarm nbd trace (its first line is not '# bootfarm nbd trace: ...')")),
    };
    let num = |k: &str| field(&header, k).and_then(|v| v.parse::<u64>().ok()).ok_or_else(|| format!("{name}: header without {k}="));
    let (disk_bytes, at_ms) = (num("disk_bytes")?, num("connected_unix_ms")?);
    let mut reqs = Vec::new();
    for (n, l) in lines {
        if l.is_empty() || l.starts_with('#') || l.starts_with("us,") {
            continue;
        }
        let bad = |why: &str| format!("{name}:{}: {why}: {l:?}", n + 1);
        let t: Vec<&str> = l.split(',').collect();
        let [us, op, off, len] = t.as_slice() else { return Err(bad("want us,op,offset,length")) };
        let us: u64 = us.parse().map_err(|_| bad("bad time"))?;
        let op = op.chars().next().filter(|_| op.len() == 1).ok_or_else(|| bad("bad op"))?;
        let (off, len): (u64, u64) = (off.parse().map_err(|_| bad("bad offset"))?, len.parse().map_err(|_| bad("bad length"))?);
        if *budget == 0 {
            return Err(format!("more than {LINES_MAX} requests in all"));
        }
        *budget -= 1;
        reqs.push((at_ms.saturating_mul(1000).saturating_add(us), op, off, len));
    }
    Ok(File { header, disk_bytes, reqs })
}

/// The replay trace of `files` (name, text): the CSV text and a one-line summary.
fn convert(files: &[(String, String)]) -> Result<(String, String), String> {
    let mut budget = LINES_MAX;
    let parsed: Vec<File> = files.iter().map(|(n, t)| parse(n, t, &mut budget)).collect::<Result<_, _>>()?;
    let disk = parsed.iter().map(|f| f.disk_bytes).max().unwrap_or(0);
    if parsed.iter().any(|f| f.disk_bytes != disk) {
        return Err("the files trace disks of different sizes: not one boot".into());
    }
    let mut all: Vec<Req> = parsed.iter().flat_map(|f| f.reqs.iter().copied()).collect();
    all.sort_by_key(|r| r.0); // stable: a connection's own order is kept at equal times
    let (mut out, mut left) = (String::new(), std::collections::BTreeMap::<char, u64>::new());
    let (mut reads, mut writes, mut rbytes, mut wbytes, mut widened) = (0u64, 0u64, 0u64, 0u64, 0u64);
    let span = all.last().map_or(0, |l| l.0) - all.first().map_or(0, |f| f.0);
    let mut body = String::new();
    for &(_, op, off, len) in &all {
        if (op != 'r' && op != 'w') || len == 0 {
            *left.entry(op).or_default() += 1;
            continue;
        }
        let (a, b) = (off / BLOCK * BLOCK, (off + len).div_ceil(BLOCK) * BLOCK);
        if b > disk {
            return Err(format!("a request past the disk's end ({off}+{len} > {disk})"));
        }
        widened += (b - a) - len;
        if op == 'r' {
            (reads, rbytes) = (reads + 1, rbytes + (b - a));
        } else {
            (writes, wbytes) = (writes + 1, wbytes + (b - a));
        }
        let _ = writeln!(body, "{a},{},{op}", b - a);
    }
    let others = left.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ");
    let summary = format!(
        "{reads} reads ({:.2} MB), {writes} writes ({:.2} MB) over {:.2} s traced, {} connection(s); widened to 4 KiB by {widened} bytes; left out: {}",
        rbytes as f64 / 1e6,
        wbytes as f64 / 1e6,
        span as f64 / 1e6,
        parsed.len(),
        if others.is_empty() { "none".into() } else { others }
    );
    let _ = writeln!(out, "# bootstorm trace convert of {} bootfarm nbd trace file(s); disk_bytes={disk}", parsed.len());
    for f in &parsed {
        let _ = writeln!(out, "{}", f.header.replacen("# bootfarm nbd trace:", "# from:", 1));
    }
    let _ = writeln!(out, "# {summary}");
    out.push_str("offset,length,op\n");
    out.push_str(&body);
    Ok((out, summary))
}

pub fn run(a: Args) -> Result<bool, String> {
    let Command::Convert { files, output } = a.command;
    let mut texts = Vec::new();
    for p in &files {
        let f = std::fs::File::open(p).map_err(|e| format!("{}: {e}", p.display()))?;
        let mut t = String::new();
        for l in BufReader::new(f).lines() {
            t.push_str(&l.map_err(|e| format!("{}: {e}", p.display()))?);
            t.push('\n');
        }
        texts.push((p.display().to_string(), t));
    }
    let (csv, summary) = convert(&texts)?;
    std::fs::write(&output, csv).map_err(|e| format!("{}: {e}", output.display()))?;
    println!("{}: {summary}", output.display());
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str =
        "# bootfarm nbd trace: connection=1 client=127.0.0.1:1 export=lab target=m boot=b disk_bytes=1048576 connected_unix_ms=1000\n\
                     us,op,offset,length\n10,r,1024,1024\n20,w,8192,8192\n30,f,0,0\n5000,r,0,4096\n";
    const B: &str =
        "# bootfarm nbd trace: connection=2 client=127.0.0.1:2 export=lab target=m boot=b disk_bytes=1048576 connected_unix_ms=1002\n\
                     us,op,offset,length\n100,t,0,4096\n200,r,4000,200\n";

    /// Two connections merge by accept time + µs; reads and writes are widened to the 4 KiB
    /// blocks they touch; the other ops are counted and left out; the result loads as a
    /// bootstorm trace.
    #[test]
    fn merges_connections_in_time_order_and_aligns() {
        let (csv, summary) = convert(&[("a".into(), A.into()), ("b".into(), B.into())]).unwrap();
        let body: Vec<&str> = csv.lines().filter(|l| !l.starts_with('#')).collect();
        // a@1010 r, a@1020 w, b@2100 t (out), b@2200 r (4000+200 -> 0..8192), a@6000 r.
        assert_eq!(body, ["offset,length,op", "0,4096,r", "8192,8192,w", "0,8192,r", "0,4096,r"]);
        assert!(summary.contains("3 reads") && summary.contains("1 writes") && summary.contains("left out: f 1, t 1"), "{summary}");
        assert!(csv.contains("# from: connection=2 "), "{csv}");
        let p = std::env::temp_dir().join(format!("bootstorm-trace-{}.csv", std::process::id()));
        std::fs::write(&p, &csv).unwrap();
        let ios = crate::phases::load_trace(&p, 1 << 20).unwrap();
        std::fs::remove_file(&p).unwrap();
        assert_eq!(ios.len(), 4);
        assert!(ios[1].write && ios[1].off == 8192 && ios[1].len == 8192);
    }

    #[test]
    fn refuses_what_is_not_one_boots_trace() {
        assert!(convert(&[("x".into(), "offset,length,op\n0,4096,r\n".into())]).unwrap_err().contains("not a bootfarm nbd trace"));
        let other = B.replace("disk_bytes=1048576", "disk_bytes=2097152");
        assert!(convert(&[("a".into(), A.into()), ("b".into(), other)]).unwrap_err().contains("different sizes"));
        let past = A.replace("5000,r,0,4096", "5000,r,1048000,4096");
        assert!(convert(&[("a".into(), past)]).unwrap_err().contains("past the disk's end"));
        let bad = A.replace("5000,r,0,4096", "5000,r,zero,4096");
        assert!(convert(&[("a".into(), bad)]).unwrap_err().contains("bad offset"));
    }
}
