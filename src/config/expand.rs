//! `$name` expansion over main.cf values and key defaults (grammar in the `config`
//! module doc). Each parameter is expanded at most once (memoized), so the work is
//! linear in the file size however the references fan out; loops and nesting deeper
//! than CONFIG_EXPANSION_DEPTH_MAX are errors; an expanded value is at most
//! CONFIG_LINE_BYTES_MAX bytes.

use super::keys::{self, DefaultValue};
use super::parse::is_param_name;
use super::Env;
use crate::limits::{CONFIG_EXPANSION_DEPTH_MAX, CONFIG_LINE_BYTES_MAX};
use std::collections::{HashMap, HashSet};

/// Why a value could not be expanded (an error: the key falls back to its default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ExpandError(pub String);

/// Raw (unexpanded) values set in main.cf: name → (value, line).
pub(crate) type FileValues = HashMap<String, (String, usize)>;

pub(crate) struct Resolver<'a> {
    file: &'a FileValues,
    env: &'a Env,
    config_directory: &'a str,
    memo: HashMap<String, String>,
    stack: Vec<String>,
    /// Every name looked up through `$name` (also in conditionals).
    pub referenced: HashSet<String>,
    /// Warnings: (line of the value containing the reference, message).
    pub warnings: Vec<(usize, String)>,
}

/// The default text of `key`, as `postconf -d` prints it. `Domain` needs the effective
/// myhostname, so it is computed by the resolver, not here.
pub(crate) fn default_text(key: &keys::Key, env: &Env, config_directory: &str) -> String {
    match key.default {
        DefaultValue::Text(t) => t.to_string(),
        DefaultValue::Hostname => env.hostname.clone(),
        DefaultValue::Domain => domain_of(&env.hostname),
        DefaultValue::Root { root, user } => (if env.is_root { root } else { user }).to_string(),
        DefaultValue::ConfigDirectory => config_directory.to_string(),
    }
}

/// Postfix's mydomain default: myhostname minus its first label when what is left still
/// has a dot (so `mail.example.org` gives `example.org`, `host.lan` gives `localdomain`).
pub(crate) fn domain_of(host: &str) -> String {
    match host.split_once('.') {
        Some((_, rest)) if rest.contains('.') => rest.to_string(),
        _ => "localdomain".to_string(),
    }
}

impl<'a> Resolver<'a> {
    pub fn new(file: &'a FileValues, env: &'a Env, config_directory: &'a str) -> Self {
        Resolver {
            file,
            env,
            config_directory,
            memo: HashMap::new(),
            stack: Vec::new(),
            referenced: HashSet::new(),
            warnings: Vec::new(),
        }
    }

    /// The raw value of `name` and the line it is set on (0 for defaults); None when the
    /// name is neither set nor a known key.
    fn raw(&mut self, name: &str) -> Result<Option<(String, usize)>, ExpandError> {
        if name == "config_directory" {
            // Read-only: the directory main.cf is in, whatever the file says.
            return Ok(Some((self.config_directory.to_string(), 0)));
        }
        if let Some((v, line)) = self.file.get(name) {
            return Ok(Some((v.clone(), *line)));
        }
        let Some(key) = keys::find(name) else {
            return Ok(None);
        };
        if key.default == DefaultValue::Domain {
            let host = self.expand_key("myhostname")?;
            return Ok(Some((domain_of(&host), 0)));
        }
        Ok(Some((default_text(key, self.env, self.config_directory), 0)))
    }

    /// True when `name` has a value (set in the file or a known key).
    fn defined(&self, name: &str) -> bool {
        self.file.contains_key(name) || keys::find(name).is_some()
    }

    /// The fully expanded effective value of parameter `name` ("" when undefined).
    pub fn expand_key(&mut self, name: &str) -> Result<String, ExpandError> {
        if let Some(v) = self.memo.get(name) {
            return Ok(v.clone());
        }
        if self.stack.iter().any(|n| n == name) {
            let mut chain: Vec<&str> = self.stack.iter().map(String::as_str).collect();
            chain.push(name);
            return Err(ExpandError(format!("parameter expansion loop: {}", chain.join(" -> "))));
        }
        if self.stack.len() >= CONFIG_EXPANSION_DEPTH_MAX {
            return Err(ExpandError(format!(
                "parameter expansion nested deeper than {CONFIG_EXPANSION_DEPTH_MAX} levels (at ${name})"
            )));
        }
        let Some((raw, line)) = self.raw(name)? else {
            return Ok(String::new());
        };
        self.stack.push(name.to_string());
        let r = self.expand_text(&raw, line);
        self.stack.pop();
        let v = r?;
        self.memo.insert(name.to_string(), v.clone());
        Ok(v)
    }

    /// The value `$name` stands for inside a value set on `line`.
    fn reference(&mut self, name: &str, line: usize) -> Result<String, ExpandError> {
        self.referenced.insert(name.to_string());
        if !self.defined(name) {
            self.warnings
                .push((line, format!("undefined parameter ${name} expands to an empty value")));
            return Ok(String::new());
        }
        self.expand_key(name)
    }

    /// Expand every `$` form in `text` (a value set on `line`, 0 for a default).
    pub fn expand_text(&mut self, text: &str, line: usize) -> Result<String, ExpandError> {
        let mut out = String::new();
        let mut rest = text;
        while let Some(pos) = rest.find('$') {
            out.push_str(&rest[..pos]);
            let after = &rest[pos + 1..];
            let mut chars = after.chars();
            match chars.next() {
                Some('$') => {
                    out.push('$');
                    rest = &after[1..];
                }
                Some(open @ ('{' | '(')) => {
                    let close = if open == '{' { '}' } else { ')' };
                    let inner_len = matching(&after[1..], open, close).ok_or_else(|| {
                        ExpandError(format!("missing '{close}' after \"${open}\" in \"{}\"", short(text)))
                    })?;
                    let inner = &after[1..1 + inner_len];
                    let v = self.braced(inner, line, text)?;
                    out.push_str(&v);
                    rest = &after[1 + inner_len + 1..];
                }
                Some(c) if c.is_ascii_alphanumeric() || c == '_' => {
                    let end = after
                        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                        .unwrap_or(after.len());
                    let v = self.reference(&after[..end], line)?;
                    out.push_str(&v);
                    rest = &after[end..];
                }
                _ => {
                    return Err(ExpandError(format!(
                        "'$' not followed by a parameter name in \"{}\" (write $$ for a literal $)",
                        short(text)
                    )))
                }
            }
            if out.len() > CONFIG_LINE_BYTES_MAX {
                return Err(too_long());
            }
        }
        out.push_str(rest);
        if out.len() > CONFIG_LINE_BYTES_MAX {
            return Err(too_long());
        }
        Ok(out)
    }

    /// The inside of `${...}` / `$(...)`: `name`, `name?value` (value if $name is
    /// non-empty), `name:value` (value if $name is empty); Postfix 3 forms
    /// `name?{value}`, `name:{value}` and `name?{value1}:{value2}` too.
    fn braced(&mut self, inner: &str, line: usize, whole: &str) -> Result<String, ExpandError> {
        let op_at = inner.find(['?', ':']).unwrap_or(inner.len());
        let name = inner[..op_at].trim();
        if !is_param_name(name) {
            return Err(ExpandError(format!(
                "bad parameter name \"{}\" in \"{}\"",
                short(name),
                short(whole)
            )));
        }
        let Some(op) = inner[op_at..].chars().next() else {
            return self.reference(name, line);
        };
        let body = &inner[op_at + 1..];
        // A conditional only asks whether the value is empty: no warning when undefined.
        self.referenced.insert(name.to_string());
        let non_empty = self.defined(name) && !self.expand_key(name)?.is_empty();
        let braced = split_braced(body);
        if braced.is_none() && body.trim_start().starts_with('{') {
            return Err(ExpandError(format!("bad conditional \"${{{}}}\"", short(inner))));
        }
        let (if_set, if_empty) = match (op, braced) {
            ('?', Some((a, b))) => (Some(a), b),
            (':', Some((a, None))) => (None, Some(a)),
            ('?', None) => (Some(body), None),
            (':', None) => (None, Some(body)),
            _ => return Err(ExpandError(format!("bad conditional \"${{{}}}\"", short(inner)))),
        };
        let chosen = if non_empty { if_set } else { if_empty };
        match chosen {
            Some(t) => self.expand_text(t, line),
            None => Ok(String::new()),
        }
    }
}

fn too_long() -> ExpandError {
    ExpandError(format!("expanded value longer than {CONFIG_LINE_BYTES_MAX} bytes"))
}

fn short(s: &str) -> String {
    super::parse::shorten(s)
}

/// Length of the text up to the `close` that matches an already-consumed `open`.
fn matching(s: &str, open: char, close: char) -> Option<usize> {
    let mut depth = 0usize;
    for (i, c) in s.char_indices() {
        if c == open {
            depth += 1;
        } else if c == close {
            if depth == 0 {
                return Some(i);
            }
            depth -= 1;
        }
    }
    None
}

/// `{a}` → (a, None); `{a}:{b}` → (a, Some(b)); anything else → None (plain value).
fn split_braced(body: &str) -> Option<(&str, Option<&str>)> {
    let t = body.trim();
    let rest = t.strip_prefix('{')?;
    let a_len = matching(rest, '{', '}')?;
    let a = rest[..a_len].trim();
    let after = rest[a_len + 1..].trim();
    if after.is_empty() {
        return Some((a, None));
    }
    let b = after.strip_prefix(':')?.trim().strip_prefix('{')?;
    let b_len = matching(b, '{', '}')?;
    if !b[b_len + 1..].trim().is_empty() {
        return None;
    }
    Some((a, Some(b[..b_len].trim())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Env {
        Env {
            is_root: false,
            hostname: "mail.example.org".into(),
        }
    }

    fn file(pairs: &[(&str, &str)]) -> FileValues {
        pairs
            .iter()
            .enumerate()
            .map(|(i, (k, v))| (k.to_string(), (v.to_string(), i + 1)))
            .collect()
    }

    fn ex(pairs: &[(&str, &str)], key: &str) -> Result<String, ExpandError> {
        let f = file(pairs);
        let e = env();
        Resolver::new(&f, &e, "/etc/poshta").expand_key(key)
    }

    #[test]
    fn forms() {
        let f = [("a", "A"), ("e", ""), ("x", "$a-${a}-$(a)-$$a-$$$a")];
        assert_eq!(ex(&f, "x").unwrap(), "A-A-A-$a-$A");
        let f = [
            ("a", "A"),
            ("e", ""),
            ("x", "${a?yes}|${e?yes}|${a:no}|${e:no}|${nope?y}|${nope:n}"),
        ];
        assert_eq!(ex(&f, "x").unwrap(), "yes|||no||n");
        let f = [
            ("a", "A"),
            ("e", ""),
            ("x", "${a?{1 $a}:{2}}|${e?{1}:{2 $a}}|${e:{z}}|$(a?(p))"),
        ];
        assert_eq!(ex(&f, "x").unwrap(), "1 A|2 A|z|(p)");
        // Nested braces inside a conditional value.
        let f = [("a", "A"), ("x", "${a?${a}${a}}")];
        assert_eq!(ex(&f, "x").unwrap(), "AA");
    }

    #[test]
    fn defaults_and_derived_domain() {
        assert_eq!(ex(&[], "myorigin").unwrap(), "mail.example.org");
        assert_eq!(ex(&[], "mydomain").unwrap(), "example.org");
        assert_eq!(
            ex(&[("myhostname", "h.lab.test")], "mydestination").unwrap(),
            "h.lab.test, localhost.lab.test, localhost"
        );
        assert_eq!(ex(&[("myhostname", "pi")], "mydomain").unwrap(), "localdomain");
        assert_eq!(ex(&[("myhostname", "pi.lan")], "mydomain").unwrap(), "localdomain");
        assert_eq!(ex(&[], "queue_directory").unwrap(), "/etc/poshta/spool");
        assert_eq!(
            ex(&[("config_directory", "/nope")], "mailbox_users_file").unwrap(),
            "/etc/poshta/users"
        );
        assert_eq!(
            ex(&[("mynetworks", "10.0.0.0/8")], "smtpd_forbid_bare_newline_exclusions").unwrap(),
            "10.0.0.0/8"
        );
        assert_eq!(ex(&[], "smtpd_tls_key_file").unwrap(), "/etc/poshta/tls/key.pem");
    }

    #[test]
    fn loops_are_errors() {
        let e = ex(&[("a", "$b"), ("b", "${c}"), ("c", "x $a")], "a").unwrap_err();
        assert!(e.0.contains("loop: a -> b -> c -> a"), "{e:?}");
        assert!(ex(&[("a", "$a")], "a").is_err());
        assert!(ex(&[("a", "${a?x}")], "a").is_err());
        // myhostname → mydomain default → myhostname.
        assert!(ex(&[("myhostname", "x.$mydomain")], "myhostname")
            .unwrap_err()
            .0
            .contains("loop"));
    }

    #[test]
    fn depth_limit() {
        let names: Vec<String> = (0..=CONFIG_EXPANSION_DEPTH_MAX).map(|i| format!("k{i}")).collect();
        let mut pairs: Vec<(String, String)> = names.windows(2).map(|w| (w[0].clone(), format!("${}", w[1]))).collect();
        pairs.push((names[CONFIG_EXPANSION_DEPTH_MAX].clone(), "end".into()));
        let p: Vec<(&str, &str)> = pairs.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        let e = ex(&p, "k0").unwrap_err();
        assert!(e.0.contains("deeper"), "{e:?}");
        // One level less is fine.
        assert_eq!(ex(&p, "k1").unwrap(), "end");
    }

    #[test]
    fn fan_out_is_bounded() {
        // 2^30 references if expanded naively; memoization keeps it linear, and the
        // output bound stops the growth.
        let mut pairs: Vec<(String, String)> = (0..30)
            .map(|i| (format!("k{i}"), format!("$k{}$k{}", i + 1, i + 1)))
            .collect();
        pairs.push(("k30".into(), String::new()));
        let p: Vec<(&str, &str)> = pairs.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        assert_eq!(ex(&p, "k0").unwrap(), "");
        let pairs2: Vec<(String, String)> = pairs
            .iter()
            .map(|(a, b)| {
                if a == "k30" {
                    (a.clone(), "xy".into())
                } else {
                    (a.clone(), b.clone())
                }
            })
            .collect();
        let p: Vec<(&str, &str)> = pairs2.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        assert!(ex(&p, "k0").unwrap_err().0.contains("longer"));
    }

    #[test]
    fn unknown_names_warn_and_expand_empty() {
        let f = file(&[("a", "x${nope}y$nope2")]);
        let e = env();
        let mut r = Resolver::new(&f, &e, "/c");
        assert_eq!(r.expand_key("a").unwrap(), "xy");
        assert_eq!(r.warnings.len(), 2);
        assert_eq!(r.warnings[0].0, 1);
        assert!(r.warnings[0].1.contains("$nope"));
        assert!(r.referenced.contains("nope2"));
    }

    #[test]
    fn syntax_errors() {
        for bad in [
            "$",
            "a$",
            "$-x",
            "${a",
            "$(a",
            "${}",
            "${a b}",
            "${a?x",
            "$(a}",
            "${a!x}",
            "${a?{x}:y}",
        ] {
            assert!(ex(&[("a", "A"), ("x", bad)], "x").is_err(), "{bad}");
        }
    }

    #[test]
    fn hostile_inputs_do_not_panic() {
        for t in [
            "${{{{",
            "}}}}",
            "$(((",
            "${a?{{{}",
            "$é",
            "ä$$ö",
            "${a?{x}:{y}}{",
            "\0$\0",
        ] {
            let _ = ex(&[("a", "A"), ("x", t)], "x");
        }
    }
}
