//! The NBD I/O trace of one connection (`nbd.trace_dir`, off by default), sans-IO: the session
//! records one CSV line per transmission request into a bounded buffer; full buffers go out as
//! [`Chunk`]s through the session's `Env` (the engine's writer thread appends them to the
//! connection's file). A file never passes `nbd.trace_bytes_max`: lines beyond it are dropped
//! and counted, as are lines of chunks the writer's queue refused.
//!
//! A file: a `#` header naming the connection, client, export, target, boot and disk size, the
//! column line `us,op,offset,length`, then one line per request: microseconds since the
//! connection was accepted, the op (`r` read, `w` write, `f` flush, `t` trim, `z` write zeroes,
//! `b` block status, `c` cache, `d` disconnect, `?` anything else), offset and length in bytes.

use crate::nbd::wire;
use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Lines are gathered up to this many bytes before they go to the writer (a line is < 48 bytes).
pub const CHUNK_BYTES: usize = 64 * 1024;
/// ... or for at most this long while requests come (a connection that goes idle writes its
/// last lines at its next request or at its close).
pub const CHUNK_AGE: std::time::Duration = std::time::Duration::from_secs(1);

/// Lines for the writer: `bytes` to append to `path` (`lines` of them); `last` closes it.
#[derive(Debug)]
pub struct Chunk {
    pub path: PathBuf,
    pub bytes: Vec<u8>,
    pub lines: u64,
    pub last: bool,
}

/// Who a trace file is about (its header).
pub struct Header<'a> {
    pub connection: u64,
    pub client: std::net::SocketAddr,
    pub export: &'a str,
    pub target: &'a str,
    pub boot: Option<&'a str>,
    pub disk_bytes: u64,
    pub connected_unix_ms: u64,
}

/// One connection's recorder.
pub struct Recorder {
    path: PathBuf,
    opened: Instant,
    /// When the last chunk went out (or the recorder began).
    out_at: Instant,
    buf: Vec<u8>,
    lines: u64,
    /// Bytes handed out or buffered so far, and the file's limit.
    bytes: u64,
    bytes_max: u64,
    /// Lines dropped at `bytes_max` since the last `take_dropped`.
    dropped: u64,
}

/// The op letter of an NBD command.
pub fn op_letter(kind: u16) -> char {
    match kind {
        wire::CMD_READ => 'r',
        wire::CMD_WRITE => 'w',
        wire::CMD_FLUSH => 'f',
        wire::CMD_TRIM => 't',
        wire::CMD_WRITE_ZEROES => 'z',
        wire::CMD_BLOCK_STATUS => 'b',
        wire::CMD_CACHE => 'c',
        wire::CMD_DISC => 'd',
        _ => '?',
    }
}

/// `s` with everything but letters, digits, `.`, `-` and `_` as `_` (target ids carry `:`).
fn file_safe(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') { c } else { '_' }).take(64).collect()
}

impl Recorder {
    /// A trace of the connection `h` in `dir`, timed from `opened` (when it was accepted),
    /// begun at `now`: the file is `<dir>/nbd-<connected unix ms>-<connection>-<target>.csv`.
    pub fn new(dir: &Path, h: &Header, opened: Instant, now: Instant, bytes_max: u64) -> Recorder {
        let path = dir.join(format!("nbd-{}-{}-{}.csv", h.connected_unix_ms, h.connection, file_safe(h.target)));
        let mut buf = Vec::with_capacity(CHUNK_BYTES);
        let mut head = String::new();
        let _ = writeln!(
            head,
            "# bootfarm nbd trace: connection={} client={} export={} target={} boot={} disk_bytes={} connected_unix_ms={}",
            h.connection,
            h.client,
            h.export,
            h.target,
            h.boot.unwrap_or("-"),
            h.disk_bytes,
            h.connected_unix_ms
        );
        head.push_str("us,op,offset,length\n");
        buf.extend_from_slice(head.as_bytes());
        Recorder { path, opened, out_at: now, bytes: buf.len() as u64, buf, lines: 0, bytes_max, dropped: 0 }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records one request received at `now`; returns a full chunk to hand out, if one is.
    pub fn record(&mut self, now: Instant, kind: u16, offset: u64, length: u32) -> Option<Chunk> {
        let us = now.saturating_duration_since(self.opened).as_micros() as u64;
        let mut line = [0u8; 64];
        let n = {
            let mut w = &mut line[..];
            let _ = std::io::Write::write_fmt(&mut w, format_args!("{us},{},{offset},{length}\n", op_letter(kind)));
            64 - w.len()
        };
        if self.bytes + n as u64 > self.bytes_max {
            self.dropped += 1;
            return None;
        }
        self.bytes += n as u64;
        self.buf.extend_from_slice(&line[..n]);
        self.lines += 1;
        if self.buf.len() + 64 > CHUNK_BYTES || now.saturating_duration_since(self.out_at) >= CHUNK_AGE {
            self.out_at = now;
            return Some(self.chunk(false));
        }
        None
    }

    /// What is buffered, as a chunk (`last`: the connection is over, the file is closed).
    pub fn chunk(&mut self, last: bool) -> Chunk {
        let bytes = std::mem::replace(&mut self.buf, if last { Vec::new() } else { Vec::with_capacity(CHUNK_BYTES) });
        Chunk { path: self.path.clone(), bytes, lines: std::mem::take(&mut self.lines), last }
    }

    /// Lines dropped at the file's byte limit since the last call.
    pub fn take_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn header() -> Header<'static> {
        Header {
            connection: 7,
            client: "10.0.2.15:51000".parse().unwrap(),
            export: "lab",
            target: "52:54:00:12:34:56",
            boot: Some("tok-1"),
            disk_bytes: 64 << 20,
            connected_unix_ms: 1_800_000_000_123,
        }
    }

    /// The header, the column line, then one line per request: µs since the accept, op letter,
    /// offset, length; the file is named by time, connection and (file-safe) target.
    #[test]
    fn lines_have_the_documented_format() {
        let t0 = Instant::now();
        let mut r = Recorder::new(Path::new("/tmp/tr"), &header(), t0, t0 + Duration::from_secs(3), 1 << 20);
        assert_eq!(r.path(), Path::new("/tmp/tr/nbd-1800000000123-7-52_54_00_12_34_56.csv"));
        assert!(r.record(t0 + Duration::from_micros(1500), wire::CMD_READ, 4096, 512).is_none());
        assert!(r.record(t0 + Duration::from_millis(2), wire::CMD_WRITE, 1 << 20, 16384).is_none());
        for k in [wire::CMD_FLUSH, wire::CMD_TRIM, wire::CMD_WRITE_ZEROES, wire::CMD_BLOCK_STATUS, wire::CMD_CACHE, wire::CMD_DISC, 99] {
            assert!(r.record(t0 + Duration::from_secs(3), k, 0, 0).is_none());
        }
        let c = r.chunk(true);
        assert!(c.last);
        assert_eq!(c.lines, 9);
        let text = String::from_utf8(c.bytes).unwrap();
        let want = "# bootfarm nbd trace: connection=7 client=10.0.2.15:51000 export=lab target=52:54:00:12:34:56 boot=tok-1 disk_bytes=67108864 connected_unix_ms=1800000000123\n\
                    us,op,offset,length\n\
                    1500,r,4096,512\n\
                    2000,w,1048576,16384\n\
                    3000000,f,0,0\n3000000,t,0,0\n3000000,z,0,0\n3000000,b,0,0\n3000000,c,0,0\n3000000,d,0,0\n3000000,?,0,0\n";
        assert_eq!(text, want);
    }

    /// Lines gather into chunks of at most CHUNK_BYTES, or of CHUNK_AGE; a request before the
    /// accept time (a clock that went back) is at 0 µs.
    #[test]
    fn full_buffers_go_out_as_chunks() {
        let t0 = Instant::now() + Duration::from_secs(1);
        let mut r = Recorder::new(Path::new("/t"), &header(), t0, t0, u64::MAX);
        let (mut chunks, mut lines) = (Vec::new(), 0);
        for i in 0..10_000u64 {
            if let Some(c) = r.record(t0 + Duration::from_micros(i), wire::CMD_READ, i * 4096, 4096) {
                assert!(!c.last && c.bytes.len() <= CHUNK_BYTES && c.bytes.ends_with(b"\n"));
                lines += c.lines;
                chunks.push(c);
            }
        }
        lines += r.chunk(true).lines;
        assert_eq!(lines, 10_000);
        assert!(chunks.len() >= 3, "{} chunks", chunks.len());
        // A second after the last chunk, the next line sends what is buffered.
        let mut r = Recorder::new(Path::new("/t"), &header(), t0, t0, u64::MAX);
        assert!(r.record(t0 + Duration::from_millis(10), wire::CMD_READ, 0, 4096).is_none());
        let c = r.record(t0 + CHUNK_AGE, wire::CMD_READ, 0, 4096).expect("an old buffer goes out");
        assert_eq!(c.lines, 2);
        let mut r = Recorder::new(Path::new("/t"), &header(), t0, t0, u64::MAX);
        r.record(t0 - Duration::from_millis(5), wire::CMD_READ, 0, 4096);
        assert!(String::from_utf8(r.chunk(true).bytes).unwrap().ends_with("\n0,r,0,4096\n"));
    }

    /// At nbd.trace_bytes_max the file stops growing: the line that would pass it and every
    /// later one are dropped and counted, never cut in half.
    #[test]
    fn a_file_stops_at_its_byte_limit_and_counts_the_rest() {
        let t0 = Instant::now();
        let head = Recorder::new(Path::new("/t"), &header(), t0, t0, u64::MAX).chunk(true).bytes.len() as u64;
        let line = "0,r,0,4096\n".len() as u64;
        let mut r = Recorder::new(Path::new("/t"), &header(), t0, t0, head + 3 * line);
        for _ in 0..5 {
            assert!(r.record(t0, wire::CMD_READ, 0, 4096).is_none());
        }
        assert_eq!(r.take_dropped(), 2);
        assert_eq!(r.take_dropped(), 0);
        let c = r.chunk(true);
        assert_eq!((c.lines, c.bytes.len() as u64), (3, head + 3 * line));
    }
}
