//! HTTP/1.1 requests as borrowed views (no copy, no allocation), byte ranges (RFC 9110 §14),
//! and HTTP dates. GET and HEAD, and POST of the console's actions (`/api/drain`,
//! `/api/resume`) alone: the appliance takes no request bodies (an action is its path and an
//! `Authorization` header).

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub request_line_bytes_max: usize,
    pub header_bytes_max: usize,
    pub headers_max: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Request<'a> {
    pub head: bool,
    /// A POST (only to the console's action paths, without a body).
    pub post: bool,
    /// The request target as sent (path and query, still percent-encoded).
    pub target: &'a [u8],
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    pub keep_alive: bool,
    pub range: Option<&'a [u8]>,
    pub if_none_match: Option<&'a [u8]>,
    pub if_modified_since: Option<&'a [u8]>,
    pub if_range: Option<&'a [u8]>,
    pub host: Option<&'a [u8]>,
    pub authorization: Option<&'a [u8]>,
}

/// The fixed targets a POST may name (the console's actions); with [`TARGET_ACTION`], the
/// only ones: any other POST is 405.
pub const POST_PATHS: [&[u8]; 2] = [b"/api/drain", b"/api/resume"];

/// The per-target action: `POST /api/targets/<target id>/disconnect`.
pub const TARGET_ACTION: (&str, &str) = ("/api/targets/", "/disconnect");

/// Whether a POST may name `path` (before percent-decoding: an id needs no '/').
pub fn post_allowed(path: &[u8]) -> bool {
    let (pre, post) = (TARGET_ACTION.0.as_bytes(), TARGET_ACTION.1.as_bytes());
    POST_PATHS.contains(&path)
        || (path.len() > pre.len() + post.len()
            && path.starts_with(pre)
            && path.ends_with(post)
            && !path[pre.len()..path.len() - post.len()].contains(&b'/'))
}

/// Why a request cannot be served; each maps to one status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// Not a whole request yet: read more.
    Incomplete,
    BadRequest(&'static str),
    MethodNotAllowed,
    UriTooLong,
    HeadersTooLarge,
    /// A body (Content-Length > 0 or Transfer-Encoding): nothing here accepts one.
    PayloadTooLarge,
    VersionNotSupported,
}

impl Error {
    pub fn status(self) -> u16 {
        match self {
            Error::Incomplete | Error::BadRequest(_) => 400,
            Error::MethodNotAllowed => 405,
            Error::UriTooLong => 414,
            Error::HeadersTooLarge => 431,
            Error::PayloadTooLarge => 413,
            Error::VersionNotSupported => 505,
        }
    }
}

fn find_head_end(b: &[u8]) -> Option<usize> {
    // CRLF CRLF, or bare LF LF (RFC 9112 §2.2 lets recipients accept bare LF).
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\n' {
            if b.get(i + 1) == Some(&b'\n') {
                return Some(i + 2);
            }
            if b.get(i + 1) == Some(&b'\r') && b.get(i + 2) == Some(&b'\n') {
                return Some(i + 3);
            }
        }
        i += 1;
    }
    None
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t' | b'\r', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t' | b'\r'] = s {
        s = rest;
    }
    s
}

fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c))
}

/// Parses one request from the front of `b`; returns it and the bytes it used.
pub fn parse<'a>(b: &'a [u8], limits: &Limits) -> Result<(Request<'a>, usize), Error> {
    let line_end = b.iter().position(|&c| c == b'\n');
    match line_end {
        None if b.len() > limits.request_line_bytes_max => return Err(Error::UriTooLong),
        Some(n) if n > limits.request_line_bytes_max => return Err(Error::UriTooLong),
        _ => {}
    }
    let Some(end) = find_head_end(b) else {
        return Err(if b.len() > limits.header_bytes_max { Error::HeadersTooLarge } else { Error::Incomplete });
    };
    if end > limits.header_bytes_max {
        return Err(Error::HeadersTooLarge);
    }
    let mut lines = b[..end].split(|&c| c == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let first = lines.next().unwrap_or_default();
    let mut parts = first.split(|&c| c == b' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(Error::BadRequest("malformed request line"));
    };
    let path = target.split(|&c| c == b'?').next().unwrap_or_default();
    let (head, post) = match method {
        b"GET" => (false, false),
        b"HEAD" => (true, false),
        b"POST" if post_allowed(path) => (false, true),
        m if is_token(m) => return Err(Error::MethodNotAllowed),
        _ => return Err(Error::BadRequest("malformed method")),
    };
    let minor = match version {
        b"HTTP/1.1" => 1,
        b"HTTP/1.0" => 0,
        v if v.starts_with(b"HTTP/") => return Err(Error::VersionNotSupported),
        _ => return Err(Error::BadRequest("malformed version")),
    };
    if target.is_empty() || target[0] != b'/' || target.iter().any(|&c| c <= b' ' || c == 0x7F) {
        return Err(Error::BadRequest("request target must be an origin-form path"));
    }
    let mut r = Request { head, post, target, minor, keep_alive: minor == 1, ..Default::default() };
    let mut count = 0;
    let mut host = false;
    for line in lines {
        if line.is_empty() {
            break;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            return Err(Error::BadRequest("obsolete header line folding"));
        }
        count += 1;
        if count > limits.headers_max {
            return Err(Error::HeadersTooLarge);
        }
        let Some(colon) = line.iter().position(|&c| c == b':') else {
            return Err(Error::BadRequest("header line without a colon"));
        };
        let (name, value) = (&line[..colon], trim(&line[colon + 1..]));
        if !is_token(name) {
            return Err(Error::BadRequest("malformed header name"));
        }
        if name.eq_ignore_ascii_case(b"connection") {
            for opt in value.split(|&c| c == b',').map(trim) {
                if opt.eq_ignore_ascii_case(b"close") {
                    r.keep_alive = false;
                } else if opt.eq_ignore_ascii_case(b"keep-alive") && minor == 0 {
                    r.keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case(b"range") {
            r.range = Some(value);
        } else if name.eq_ignore_ascii_case(b"if-none-match") {
            r.if_none_match = Some(value);
        } else if name.eq_ignore_ascii_case(b"if-modified-since") {
            r.if_modified_since = Some(value);
        } else if name.eq_ignore_ascii_case(b"if-range") {
            r.if_range = Some(value);
        } else if name.eq_ignore_ascii_case(b"host") {
            if host {
                return Err(Error::BadRequest("more than one Host header"));
            }
            host = true;
            r.host = Some(value);
        } else if name.eq_ignore_ascii_case(b"authorization") {
            r.authorization = Some(value);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            return Err(Error::PayloadTooLarge);
        } else if name.eq_ignore_ascii_case(b"content-length") {
            match std::str::from_utf8(value).ok().and_then(|v| v.parse::<u64>().ok()) {
                Some(0) => {}
                Some(_) => return Err(Error::PayloadTooLarge),
                None => return Err(Error::BadRequest("malformed Content-Length")),
            }
        }
    }
    if minor == 1 && !host {
        return Err(Error::BadRequest("HTTP/1.1 request without Host"));
    }
    Ok((r, end))
}

/// What a Range header asks of a representation of `size` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Range {
    /// No usable Range: the whole representation, 200.
    Full,
    /// One satisfiable range, inclusive: 206.
    Single(u64, u64),
    /// Syntactically valid but nothing satisfiable: 416.
    Unsatisfiable,
    /// Several ranges: answered with the whole representation (200), as RFC 9110 §14.2 allows.
    Multiple,
}

pub fn parse_range(v: &[u8], size: u64) -> Range {
    let Some(spec) = v.strip_prefix(b"bytes=") else { return Range::Full };
    // Digits only; a number past u64 saturates instead of making the header "invalid": a
    // first-byte-pos that large is past any end (416), a last-byte-pos or suffix-length that
    // large means "to the end" (206), as RFC 9110 §14.1.2 reads them.
    let num = |s: &[u8]| -> Option<u64> {
        let s = trim(s);
        if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(s.iter().fold(0u64, |n, &d| n.saturating_mul(10).saturating_add((d - b'0') as u64)))
    };
    let mut ranges = spec.split(|&c| c == b',').map(trim).filter(|r| !r.is_empty());
    let Some(first) = ranges.next() else { return Range::Full };
    if ranges.next().is_some() {
        return Range::Multiple;
    }
    let Some(dash) = first.iter().position(|&c| c == b'-') else { return Range::Full };
    let (a, b) = (&first[..dash], &first[dash + 1..]);
    match (a.is_empty(), b.is_empty()) {
        (true, true) => Range::Full,
        // bytes=-n: the last n bytes.
        (true, false) => match num(b) {
            Some(0) => Range::Unsatisfiable,
            Some(n) if size > 0 => Range::Single(size.saturating_sub(n), size - 1),
            Some(_) => Range::Unsatisfiable,
            None => Range::Full,
        },
        (false, _) => {
            let Some(start) = num(a) else { return Range::Full };
            let end = if b.is_empty() {
                Some(u64::MAX)
            } else {
                match num(b) {
                    Some(e) if e >= start => Some(e),
                    _ => None,
                }
            };
            match end {
                None => Range::Full, // invalid (last < first): the header is ignored
                Some(_) if start >= size => Range::Unsatisfiable,
                Some(e) => Range::Single(start, e.min(size - 1)),
            }
        }
    }
}

const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

fn civil(days: i64) -> (i64, u32, u32) {
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + (m <= 2) as i64, m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// IMF-fixdate, e.g. "Sun, 06 Nov 1994 08:49:37 GMT", into `out` (29 bytes).
pub fn format_date(unix: i64, out: &mut Vec<u8>) {
    use std::io::Write;
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    let (y, m, d) = civil(days);
    let _ = write!(
        out,
        "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
        DAYS[days.rem_euclid(7) as usize],
        d,
        MONTHS[m as usize - 1],
        y,
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    );
}

/// Parses an IMF-fixdate (the form servers send and clients echo back); None otherwise.
pub fn parse_date(s: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(trim(s)).ok()?;
    let p: Vec<&str> = s.split([' ', ':']).collect();
    if p.len() != 8 || p[7] != "GMT" {
        return None;
    }
    let d: u32 = p[1].parse().ok()?;
    let m = MONTHS.iter().position(|&x| x == p[2])? as u32 + 1;
    // Unsigned fields and a four-digit year: no sign tricks, no overflow in the arithmetic.
    let y: u32 = p[3].parse().ok()?;
    let (hh, mm, ss): (u32, u32, u32) = (p[4].parse().ok()?, p[5].parse().ok()?, p[6].parse().ok()?);
    if !(1..=31).contains(&d) || !(1000..=9999).contains(&y) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    Some(days_from_civil(y as i64, m, d) * 86_400 + (hh * 3600 + mm * 60 + ss) as i64)
}

/// Decodes %XX escapes once. Refuses NUL, malformed escapes and non-UTF-8 results. Borrows
/// when there is nothing to decode (the common case: no allocation).
pub fn percent_decode(s: &[u8]) -> Option<std::borrow::Cow<'_, str>> {
    if !s.contains(&b'%') {
        return std::str::from_utf8(s).ok().map(std::borrow::Cow::Borrowed);
    }
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' {
            let h = s.get(i + 1..i + 3)?;
            let v = u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok()?;
            if v == 0 {
                return None;
            }
            out.push(v);
            i += 3;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok().map(std::borrow::Cow::Owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Limits = Limits { request_line_bytes_max: 100, header_bytes_max: 300, headers_max: 4 };

    #[test]
    fn parses_ipxe_range_request() {
        let b = b"GET /vdisk/win10 HTTP/1.1\r\nConnection: keep-alive\r\nHost: 10.0.2.2:8080\r\nRange: bytes=32768-34815\r\n\r\nGET /next";
        let (r, n) = parse(b, &L).unwrap();
        assert_eq!(r.target, b"/vdisk/win10");
        assert!(r.keep_alive && !r.head);
        assert_eq!(r.range, Some(&b"bytes=32768-34815"[..]));
        assert_eq!(&b[n..], b"GET /next", "pipelined bytes stay for the next request");
    }

    #[test]
    fn http10_and_connection_close() {
        let (r, _) = parse(b"HEAD / HTTP/1.0\r\n\r\n", &L).unwrap();
        assert!(r.head && !r.keep_alive && r.minor == 0);
        let (r, _) = parse(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", &L).unwrap();
        assert!(r.keep_alive);
        let (r, _) = parse(b"GET / HTTP/1.1\nHost: x\nConnection: close\n\n", &L).unwrap();
        assert!(!r.keep_alive, "bare LF accepted");
    }

    #[test]
    fn errors_map_to_statuses() {
        let e = |b: &[u8]| parse(b, &L).unwrap_err().status();
        assert_eq!(parse(b"GET / HTTP/1.1\r\nHost: x\r\n", &L).unwrap_err(), Error::Incomplete);
        assert_eq!(e(b"POST / HTTP/1.1\r\nHost: x\r\n\r\n"), 405);
        assert_eq!(e(b"POST /api/drainx HTTP/1.1\r\nHost: x\r\n\r\n"), 405);
        assert_eq!(e(b"POST /api/targets//disconnect HTTP/1.1\r\nHost: x\r\n\r\n"), 405, "no id");
        assert_eq!(e(b"POST /api/targets/a/b/disconnect HTTP/1.1\r\nHost: x\r\n\r\n"), 405, "an id has no '/'");
        assert_eq!(e(b"POST /api/targets/a/drain HTTP/1.1\r\nHost: x\r\n\r\n"), 405);
        let (r, _) = parse(b"POST /api/targets/52:54:00:12:34:56/disconnect HTTP/1.1\r\nHost: x\r\n\r\n", &L).unwrap();
        assert!(r.post);
        assert_eq!(e(b"POST /api/drain HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n"), 413, "an action has no body");
        let (r, _) = parse(b"POST /api/drain HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t0k\r\n\r\n", &L).unwrap();
        assert!(r.post && !r.head && r.authorization == Some(&b"Bearer t0k"[..]));
        assert_eq!(e(b"GET / HTTP/2.0\r\n\r\n"), 505);
        assert_eq!(e(b"GET / HTTP/1.1\r\n\r\n"), 400, "Host is required in 1.1");
        assert_eq!(e(b"GET nopath HTTP/1.1\r\nHost: x\r\n\r\n"), 400);
        assert_eq!(e(b"GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n"), 400);
        assert_eq!(e(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n"), 413);
        assert_eq!(e(b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"), 413);
        assert_eq!(e(&[b"GET /".as_slice(), &[b'a'; 200]].concat()), 414);
        assert_eq!(e(b"GET / HTTP/1.1\r\nHost: x\r\na: 1\r\nb: 2\r\nc: 3\r\nd: 4\r\n\r\n"), 431);
        assert_eq!(e(&[b"GET / HTTP/1.1\r\nHost: x\r\nX: ".as_slice(), &[b'a'; 400]].concat()), 431);
        assert_eq!(e(b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n"), 400);
    }

    #[test]
    fn ranges_at_every_edge() {
        assert_eq!(parse_range(b"bytes=0-0", 10), Range::Single(0, 0));
        assert_eq!(parse_range(b"bytes=9-9", 10), Range::Single(9, 9));
        assert_eq!(parse_range(b"bytes=5-", 10), Range::Single(5, 9));
        assert_eq!(parse_range(b"bytes=5-100", 10), Range::Single(5, 9));
        assert_eq!(parse_range(b"bytes=-3", 10), Range::Single(7, 9));
        assert_eq!(parse_range(b"bytes=-30", 10), Range::Single(0, 9));
        assert_eq!(parse_range(b"bytes=10-", 10), Range::Unsatisfiable);
        assert_eq!(parse_range(b"bytes=-0", 10), Range::Unsatisfiable);
        assert_eq!(parse_range(b"bytes=0-1,5-6", 10), Range::Multiple);
        assert_eq!(parse_range(b"bytes=5-1", 10), Range::Full, "invalid ranges are ignored");
        assert_eq!(parse_range(b"items=0-1", 10), Range::Full);
        assert_eq!(parse_range(b"bytes=x-1", 10), Range::Full);
        assert_eq!(parse_range(b"bytes=0-", 0), Range::Unsatisfiable);
    }

    /// Numbers past u64 (20 digits and more) are read as "huge", not as a malformed header:
    /// a first-byte-pos past the end is 416, a last-byte-pos or suffix past it clamps (206).
    #[test]
    fn ranges_with_numbers_past_u64() {
        let big = b"99999999999999999999999999999999";
        let r = |v: &[u8]| parse_range(v, 10);
        assert_eq!(r(&[b"bytes=".as_slice(), big, b"-"].concat()), Range::Unsatisfiable);
        assert_eq!(r(&[b"bytes=".as_slice(), big, b"-", big].concat()), Range::Unsatisfiable);
        assert_eq!(r(b"bytes=18446744073709551616-"), Range::Unsatisfiable, "u64::MAX + 1");
        assert_eq!(r(b"bytes=18446744073709551615-18446744073709551615"), Range::Unsatisfiable);
        assert_eq!(r(&[b"bytes=0-".as_slice(), big].concat()), Range::Single(0, 9));
        assert_eq!(r(&[b"bytes=3-".as_slice(), big].concat()), Range::Single(3, 9));
        assert_eq!(r(b"bytes=9-18446744073709551616"), Range::Single(9, 9));
        assert_eq!(r(&[b"bytes=-".as_slice(), big].concat()), Range::Single(0, 9), "suffix longer than the disk: all of it");
        assert_eq!(r(&[b"bytes=00000000000000000000000000002-".as_slice(), b"5"].concat()), Range::Single(2, 5), "leading zeros");
        assert_eq!(r(&[b"bytes=".as_slice(), big, b"-5"].concat()), Range::Full, "last < first: invalid, ignored");
        assert_eq!(r(b"bytes=1-2x"), Range::Full);
    }

    #[test]
    fn dates_round_trip() {
        let mut v = Vec::new();
        format_date(784_111_777, &mut v);
        assert_eq!(v, b"Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(parse_date(&v), Some(784_111_777));
        assert_eq!(parse_date(b"Sunday, 06-Nov-94 08:49:37 GMT"), None);
        // Found by fuzzing: absurd years and signed fields must not overflow.
        assert_eq!(parse_date(b":3:Dec:5717777777717777:4:5:-717777777777777717777737:GMT"), None);
        assert_eq!(parse_date(b"Sun, 06 Nov 99999999999 08:49:37 GMT"), None);
        assert_eq!(parse_date(b"Sun, 06 Nov 1994 08:49:-1 GMT"), None);
        v.clear();
        format_date(1_795_000_000, &mut v);
        assert_eq!(parse_date(&v), Some(1_795_000_000));
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode(b"/boot/a%20b").as_deref(), Some("/boot/a b"));
        assert_eq!(percent_decode(b"/boot/%2e%2e/x").as_deref(), Some("/boot/../x"));
        assert_eq!(percent_decode(b"/a%00"), None);
        assert_eq!(percent_decode(b"/a%zz"), None);
        assert_eq!(percent_decode(b"/a%f"), None);
    }
}
