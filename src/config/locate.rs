//! Names the key and the value behind a TOML parse error. The toml crate locates an error by a
//! byte span only ("line 2, column 10: invalid IP address syntax"); a person wants the key as
//! written in the rest of the errors (`server.listen`, `vdisk[1].path`) and the value they typed.
//! The key is read back from the text: the last table header above the error's line and the key
//! on that line. Inline tables and multi-line values are left as the line number alone.

/// Where an error at byte `at` of `text` sits: (line, key path if one is found, value text).
pub fn locate(text: &str, at: usize) -> (usize, Option<String>, String) {
    let at = at.min(text.len());
    let line_no = text[..at].matches('\n').count() + 1;
    let start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let line = text[start..].lines().next().unwrap_or("");
    if line.trim_start().starts_with('[') {
        // An error about a whole table (a missing field): name the table.
        let table = header_above(&text[..start + line.len()]);
        return (line_no, (!table.is_empty()).then_some(table), String::new());
    }
    let Some(eq) = line.find('=') else {
        return (line_no, None, String::new());
    };
    let key = line[..eq].trim();
    if key.is_empty() || key.starts_with('[') || key.starts_with('#') || key.contains('{') {
        return (line_no, None, String::new());
    }
    let key = key.replace(['"', '\''], "").split('.').map(str::trim).collect::<Vec<_>>().join(".");
    let value = value_text(&line[eq + 1..]);
    if value.starts_with('{') {
        return (line_no, None, String::new()); // an inline table: the key inside is not known
    }
    let table = header_above(&text[..start]);
    let path = if table.is_empty() { key } else { format!("{table}.{key}") };
    (line_no, Some(path), value)
}

/// The value as typed: a quoted string up to its closing quote, anything else up to a comment.
fn value_text(rest: &str) -> String {
    let v = rest.trim_start();
    for q in ['"', '\''] {
        if let Some(body) = v.strip_prefix(q) {
            if let Some(end) = body.find(q) {
                return v[..end + 2].to_string();
            }
        }
    }
    v.split('#').next().unwrap_or("").trim().to_string()
}

/// The table the lines before `above` end in, as `build` names it: `server`, `vdisk[1]`,
/// `farm.server[0]` (an array of tables is indexed by the headers of the same name before it).
fn header_above(above: &str) -> String {
    let headers: Vec<(bool, String)> = above
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let array = l.starts_with("[[");
            let inner = match l.strip_prefix("[[") {
                Some(r) => r.split_once("]]")?.0,
                None => l.strip_prefix('[')?.split_once(']')?.0,
            };
            Some((array, inner.replace(['"', '\''], "").split('.').map(str::trim).collect::<Vec<_>>().join(".")))
        })
        .collect();
    match headers.last() {
        None => String::new(),
        Some((false, name)) => name.clone(),
        Some((true, name)) => {
            let index = headers.iter().filter(|(a, n)| *a && n == name).count() - 1;
            format!("{name}[{index}]")
        }
    }
}

/// Plain words for the toml and serde messages a new user meets most; the rest pass unchanged.
pub fn explain(message: &str) -> String {
    let m = message.trim();
    if m.starts_with("invalid IP address syntax") {
        return "not an IP address (write one such as \"10.0.0.5\", \"0.0.0.0\" for every IPv4 interface or \"::\")".into();
    }
    m.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_key_and_value() {
        let t = "[server]\nlisten = \"not-an-ip\"\n";
        assert_eq!(locate(t, t.find("\"not").unwrap()), (2, Some("server.listen".into()), "\"not-an-ip\"".into()));
    }

    #[test]
    fn indexes_arrays_of_tables() {
        let t = "[[vdisk]]\nname = \"a\"\n[[vdisk]]\nname = 'b' # second\nmode = 7 # bad\n";
        assert_eq!(locate(t, t.find("7").unwrap()), (5, Some("vdisk[1].mode".into()), "7".into()));
        let t = "[tftp]\nroot = \"x\"\n[[farm.server]]\nname = \"a\"\n[[farm.server]]\naddress = \"1.2\"\n";
        assert_eq!(locate(t, t.find("\"1.2").unwrap()).1.as_deref(), Some("farm.server[1].address"));
    }

    #[test]
    fn top_level_and_dotted_keys() {
        let t = "server.listen = \"x\"\n";
        assert_eq!(locate(t, 16).1.as_deref(), Some("server.listen"));
    }

    #[test]
    fn no_key_on_a_header_or_past_the_end() {
        assert_eq!(locate("[server\nname = 1", 0), (1, None, String::new()));
        assert_eq!(locate("[[vdisk]]\nname = 1\n[[vdisk]]\n", 19), (3, Some("vdisk[1]".into()), String::new()));
        assert_eq!(locate("a = {b = 1}", 5).1, None);
        assert_eq!(locate("x", 999).0, 1);
    }
}
