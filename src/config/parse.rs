//! main.cf lexer: physical lines to `name = value` entries with the line each starts on.
//! The grammar is in the module doc of `config`.

use super::Severity;
use crate::limits::CONFIG_LINE_BYTES_MAX;

/// One `name = value` assignment (value trimmed, continuation lines joined).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub name: String,
    pub value: String,
    /// Line where the logical line starts (1-based).
    pub line: usize,
}

/// A problem found while lexing: line, severity, message.
pub(crate) type Problem = (usize, Severity, String);

#[derive(Debug, Default)]
pub(crate) struct Parsed {
    pub entries: Vec<Entry>,
    pub problems: Vec<Problem>,
}

/// The logical line being assembled.
struct Logical {
    line: usize,
    text: String,
    /// A part of it was unusable (bad UTF-8, too long): drop it whole at the end.
    broken: bool,
}

/// Postfix's whitespace for "a line starting with whitespace continues".
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\x0b' | b'\x0c' | b'\r')
}

/// Split main.cf into assignments. Never fails: every problem becomes a `Problem`, and
/// the bad logical line is skipped.
pub(crate) fn parse(text: &[u8]) -> Parsed {
    let mut out = Parsed::default();
    let mut cur: Option<Logical> = None;
    for (idx, raw) in text.split(|&b| b == b'\n').enumerate() {
        let lineno = idx + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let first_text = raw.iter().position(|&b| !is_space(b));
        let Some(first) = first_text else {
            // Blank and whitespace-only lines are ignored; like Postfix's readlline they
            // do not end a logical line.
            continue;
        };
        if raw.get(first) == Some(&b'#') {
            // Comment lines are ignored wherever they are, also between a logical line
            // and its continuation lines (Postfix readlline does the same).
            continue;
        }
        let body = match std::str::from_utf8(raw) {
            Ok(s) => Some(s.trim()),
            Err(_) => {
                out.problems
                    .push((lineno, Severity::Error, "line is not valid UTF-8".into()));
                None
            }
        };
        if first > 0 {
            // Starts with whitespace: continues the previous logical line.
            match cur.as_mut() {
                Some(l) => match body {
                    Some(b) if !l.broken => {
                        if l.text.len() + 1 + b.len() > CONFIG_LINE_BYTES_MAX {
                            out.problems.push((
                                l.line,
                                Severity::Error,
                                format!("logical line longer than {CONFIG_LINE_BYTES_MAX} bytes"),
                            ));
                            l.broken = true;
                        } else {
                            l.text.push(' ');
                            l.text.push_str(b);
                        }
                    }
                    _ => l.broken = true,
                },
                None => out.problems.push((
                    lineno,
                    Severity::Error,
                    "line starts with whitespace but there is no parameter to continue".into(),
                )),
            }
            continue;
        }
        if let Some(l) = cur.take() {
            finish(l, &mut out);
        }
        let mut l = Logical {
            line: lineno,
            text: String::new(),
            broken: body.is_none(),
        };
        if let Some(b) = body {
            if b.len() > CONFIG_LINE_BYTES_MAX {
                out.problems.push((
                    lineno,
                    Severity::Error,
                    format!("logical line longer than {CONFIG_LINE_BYTES_MAX} bytes"),
                ));
                l.broken = true;
            } else {
                l.text.push_str(b);
            }
        }
        cur = Some(l);
    }
    if let Some(l) = cur.take() {
        finish(l, &mut out);
    }
    out
}

fn finish(l: Logical, out: &mut Parsed) {
    if l.broken {
        return;
    }
    let Some((name, value)) = l.text.split_once('=') else {
        out.problems.push((
            l.line,
            Severity::Error,
            format!("missing '=' after parameter name: \"{}\"", shorten(&l.text)),
        ));
        return;
    };
    let name = name.trim();
    if !is_param_name(name) {
        out.problems.push((
            l.line,
            Severity::Error,
            format!("bad parameter name: \"{}\"", shorten(name)),
        ));
        return;
    }
    out.entries.push(Entry {
        name: name.to_string(),
        value: value.trim().to_string(),
        line: l.line,
    });
}

/// Postfix parameter names: letters, digits, underscore.
pub(crate) fn is_param_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Keep diagnostics short when a line is long garbage.
pub(crate) fn shorten(s: &str) -> String {
    const MAX_CHARS: usize = 60;
    if s.chars().count() <= MAX_CHARS {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(MAX_CHARS).collect();
        t.push_str("...");
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(text: &str) -> Vec<(String, String, usize)> {
        let p = parse(text.as_bytes());
        assert!(p.problems.is_empty(), "{:?}", p.problems);
        p.entries.into_iter().map(|e| (e.name, e.value, e.line)).collect()
    }

    fn e(n: &str, v: &str, l: usize) -> (String, String, usize) {
        (n.to_string(), v.to_string(), l)
    }

    #[test]
    fn simple_assignments_comments_blank() {
        let t =
            "# comment\n\nmyhostname = mail.example.org\n   # indented comment\nmydomain=example.org\n\t\n  \nx =\n";
        assert_eq!(
            entries(t),
            vec![
                e("myhostname", "mail.example.org", 3),
                e("mydomain", "example.org", 5),
                e("x", "", 8)
            ]
        );
    }

    #[test]
    fn continuation_joins_with_single_space_and_keeps_start_line() {
        let t = "a = 1\nmydestination = $myhostname,\n    localhost.$mydomain,\n\tlocalhost   \nb = 2";
        assert_eq!(
            entries(t),
            vec![
                e("a", "1", 1),
                e("mydestination", "$myhostname, localhost.$mydomain, localhost", 2),
                e("b", "2", 5)
            ]
        );
    }

    #[test]
    fn continuation_across_comment_and_blank_lines() {
        let t = "a = x,\n# between\n\n   y\n";
        assert_eq!(entries(t), vec![e("a", "x, y", 1)]);
    }

    #[test]
    fn trailing_hash_is_part_of_value() {
        // Postfix has no trailing comments.
        assert_eq!(entries("a = b # not a comment"), vec![e("a", "b # not a comment", 1)]);
    }

    #[test]
    fn crlf_and_equals_in_value() {
        assert_eq!(entries("a = b=c\r\nd = e\r\n"), vec![e("a", "b=c", 1), e("d", "e", 2)]);
    }

    #[test]
    fn errors_have_line_numbers() {
        let p = parse(b"  orphan\nno equals here\nbad name = 3\n= 4\nok = 5\n");
        let lines: Vec<usize> = p.problems.iter().map(|p| p.0).collect();
        assert_eq!(lines, vec![1, 2, 3, 4]);
        assert!(p.problems.iter().all(|p| p.1 == Severity::Error));
        assert!(p.problems[1].2.contains("missing '='"));
        assert!(p.problems[2].2.contains("bad parameter name"));
        assert_eq!(
            p.entries,
            vec![Entry {
                name: "ok".into(),
                value: "5".into(),
                line: 5
            }]
        );
    }

    #[test]
    fn bad_utf8_drops_the_logical_line() {
        let p = parse(b"a = \xff\xfe\n  more\nb = 1\nc = 2\n  \xc3\n");
        assert_eq!(p.problems.iter().map(|p| p.0).collect::<Vec<_>>(), vec![1, 5]);
        assert_eq!(p.entries.len(), 1);
        assert_eq!(p.entries[0].name, "b");
    }

    #[test]
    fn overlong_logical_line_is_an_error() {
        let chunk = "x".repeat(1000);
        let mut t = String::from("a = 1\nbig = ");
        for _ in 0..70 {
            t.push_str("\n  ");
            t.push_str(&chunk);
        }
        t.push_str("\nc = 3\n");
        let p = parse(t.as_bytes());
        assert_eq!(p.problems.len(), 1);
        assert_eq!(p.problems[0].0, 2);
        let names: Vec<&str> = p.entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, vec!["a", "c"]);
        let p = parse(format!("big = {}", "y".repeat(CONFIG_LINE_BYTES_MAX)).as_bytes());
        assert_eq!(p.problems.len(), 1);
        assert!(p.entries.is_empty());
    }

    #[test]
    fn hostile_inputs_do_not_panic() {
        for t in [
            &b""[..],
            b"\n\n\n",
            b"=",
            b"==",
            b" = ",
            b"\r",
            b"#",
            b"\0=\0",
            b"a\0 = b",
            b"\xff",
        ] {
            let _ = parse(t);
        }
        assert_eq!(parse(b"a = \0").entries[0].value, "\0");
    }
}
