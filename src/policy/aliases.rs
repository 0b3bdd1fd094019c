//! aliases(5): the alias table of local delivery, and its expansion.
//!
//! # File format (as Postfix's aliases(5), read as text: no compile step)
//!
//! ```text
//! # comment: a line whose first non-blank character is `#`
//! name: target, target, ...
//! support: user1, user2,
//!     user3                       # <- not a comment: see below
//! "odd name": "|/usr/bin/vacation -a x", "/var/log/mail copy", bob@example.org
//! staff: :include:/etc/poshta/staff.list
//! ```
//!
//! - A logical entry starts at a line that does not begin with whitespace. A line that begins
//!   with whitespace continues the previous entry (joined with one space). Blank lines and
//!   comment lines are skipped and do not end an entry. `#` only starts a comment at the
//!   start of a line: after a target it is part of the target (and then an error, because
//!   an unquoted target may not contain whitespace).
//! - `name` is everything before the first `:` outside double quotes, trimmed; it may be
//!   quoted (`"a b":`). Names are case-insensitive (stored lowercased).
//! - Targets are separated by `,` outside double quotes. A target that is entirely quoted
//!   (`"..."`, `\"` and `\\` escape) is unquoted; a target containing whitespace must be
//!   quoted. Empty targets (`a, , b`) are skipped. Targets are:
//!   - `|command` — pipe the message to a command;
//!   - `/path` — append to a file;
//!   - `:include:/path` — the targets listed in that file (same syntax without `name:`;
//!     commas and/or one target per line, no continuation lines; comments allowed). The
//!     path must be absolute; the file is read when the alias is expanded (as Postfix
//!     does), not at load time;
//!   - `\name` — deliver to the local user `name` without further alias expansion;
//!   - `local@domain` — an address: local if the caller says the domain is local (then
//!     the local part is expanded like a name), else remote;
//!   - `name` — a local name, expanded again if it is itself an alias.
//! - Control characters (including NUL) and invalid UTF-8 are errors; so are a missing
//!   `:`, an empty name, an entry without targets, a relative `:include:` path, a
//!   continuation line before any entry, and entries past the size limits in
//!   [`crate::limits`]. Errors name the file and line; a file with any error is refused as a
//!   whole (the caller keeps the last good table, as the issue asks). A duplicate name is a
//!   warning: the first entry wins (Postfix's postalias keeps the first and warns).
//!
//! A map spec may carry a Postfix map type: `hash:`, `lmdb:`, `cdb:`, `btree:`, `dbm:` or
//! `texthash:` — the named file itself (not `.db`) is read as text. Any other type is an error.
//!
//! # Expansion (Postfix local(8) semantics, done in memory)
//!
//! - A name that is no alias is delivered to the local user of that name ([`Target::Local`];
//!   the caller decides whether the user exists).
//! - A name that appears in its own expansion (`root: root, admin@example.org`) is delivered
//!   to the user of that name rather than expanded again.
//! - Each alias is expanded once per recipient and each final target is kept once
//!   (`support: u1, u2` with `all: support, u1` gives u1 one copy).
//! - A chain that comes back to a name being expanded (`a: b`, `b: a`) is an error: the
//!   caller bounces it as "mail forwarding loop". Expansion never runs forever: depth,
//!   include nesting and the number of targets are bounded ([`crate::limits`]).
//! - `|command` and `/file` targets carry their [`Source`] (the aliases file or an include
//!   file), so the caller can apply allow_mail_to_commands / allow_mail_to_files
//!   (Postfix classes `alias` and `include`) and run them as the right user.
//! - Looking up `alice+tag` as `alice` (recipient_delimiter) is the caller's job: call
//!   [`Aliases::contains`] with both forms.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::limits::{
    ALIASES_ENTRIES_MAX, ALIASES_ENTRY_BYTES_MAX, ALIASES_ERRORS_REPORTED_MAX, ALIASES_EXPANSION_DEPTH_MAX,
    ALIASES_EXPANSION_TARGETS_MAX, ALIASES_FILE_BYTES_MAX, ALIASES_INCLUDE_BYTES_MAX, ALIASES_INCLUDE_DEPTH_MAX,
};

/// Map types whose file is read as text.
const TEXT_MAP_TYPES: &[&str] = &["hash", "lmdb", "cdb", "btree", "dbm", "texthash"];

/// A problem at a place in a file (`line` 0: the file as a whole).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: usize,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(f, "{}:{}: {}", self.file.display(), self.line, self.message)
        }
    }
}

/// Why a table was refused: every error found (at most ALIASES_ERRORS_REPORTED_MAX).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AliasError {
    pub errors: Vec<Diagnostic>,
}

impl fmt::Display for AliasError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for AliasError {}

/// Where a `|command` or `/file` target was written.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Source {
    /// In the aliases file (allow_mail_to_commands class `alias`).
    Alias,
    /// In this `:include:` file (class `include`); Postfix runs such commands as the
    /// file's owner.
    Include(PathBuf),
}

/// A final destination of an expanded recipient.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// The local user (lowercased name).
    Local(String),
    /// An address in a domain that is not local (as written).
    Remote(String),
    /// `|command`: the command line (without `|`).
    Command { command: String, source: Source },
    /// `/path`: append to this file.
    File { path: PathBuf, source: Source },
}

/// Why (part of) an expansion failed. The rest of the expansion is still delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpandError {
    /// Permanent: bounce ("mail forwarding loop"); else defer (e.g. an unreadable include).
    pub permanent: bool,
    /// Logged cause; also fit for a DSN diagnostic (`x-unix; ...`): names no file content.
    pub reason: String,
}

/// The result of expanding one recipient.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expansion {
    /// Each final target once, in the order first reached.
    pub deliveries: Vec<Target>,
    pub errors: Vec<ExpandError>,
}

/// One parsed target, before expansion (address locality is decided at expansion).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Raw {
    Name(String),
    /// `\name`: no further expansion.
    Exact(String),
    Address {
        text: String,
        local: String,
        domain: String,
    },
    Command(String),
    File(PathBuf),
    Include(PathBuf),
}

/// A loaded alias table.
#[derive(Debug, Clone, Default)]
pub struct Aliases {
    map: HashMap<String, Vec<Raw>>,
}

/// `hash:/etc/aliases` → `/etc/aliases`; a plain path stays.
fn strip_map_type(spec: &str) -> Result<&str, String> {
    let spec = spec.trim();
    if let Some((ty, rest)) = spec.split_once(':') {
        if !ty.is_empty() && !ty.contains('/') && ty.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return if TEXT_MAP_TYPES.contains(&ty.to_ascii_lowercase().as_str()) {
                Ok(rest)
            } else {
                Err(format!(
                    "unsupported map type {ty:?} (supported: {})",
                    TEXT_MAP_TYPES.join(", ")
                ))
            };
        }
    }
    Ok(spec)
}

/// Read a whole file, at most `max` bytes (more is an error, not a silent cut).
fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>, String> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    let mut data = Vec::with_capacity(meta.len().min(max) as usize);
    file.take(max + 1).read_to_end(&mut data).map_err(|e| e.to_string())?;
    if data.len() as u64 > max {
        return Err(format!("larger than {max} bytes"));
    }
    Ok(data)
}

/// Split at `sep` outside double quotes (`\` escapes inside quotes).
fn split_unquoted(s: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut in_quote, mut escaped, mut start) = (false, false, 0);
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if in_quote && c == '\\' {
            escaped = true;
        } else if c == '"' {
            in_quote = !in_quote;
        } else if c == sep && !in_quote {
            parts.push(&s[start..i]);
            start = i + c.len_utf8();
        }
    }
    parts.push(&s[start..]);
    parts
}

/// The position of the first `:` outside double quotes.
fn find_unquoted_colon(s: &str) -> Option<usize> {
    let first = split_unquoted(s, ':');
    (first.len() > 1).then(|| first[0].len())
}

/// `"a \" b"` → `a " b`; None when `s` is not one whole quoted string.
fn unquote_whole(s: &str) -> Option<String> {
    let inner = s.strip_prefix('"')?.strip_suffix('"')?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next()?),
            '"' => return None,
            c => out.push(c),
        }
    }
    Some(out)
}

/// Whitespace outside double quotes?
fn has_unquoted_space(s: &str) -> bool {
    split_unquoted(s, ' ').len() > 1 || split_unquoted(s, '\t').len() > 1
}

fn parse_target(s: &str) -> Result<Option<Raw>, String> {
    let t = s.trim();
    if t.is_empty() {
        return Ok(None);
    }
    if t.chars().any(|c| c.is_control()) {
        return Err(format!(
            "control character in target {:?}",
            t.escape_debug().to_string()
        ));
    }
    let inner = match unquote_whole(t) {
        Some(u) => u,
        None if t.starts_with('"') && !t.contains("\"@") => return Err(format!("unbalanced quotes in target {t}")),
        None if has_unquoted_space(t) => {
            return Err(format!("whitespace in target {t:?}: quote the whole target"));
        }
        None => t.to_string(),
    };
    if let Some(cmd) = inner.strip_prefix('|') {
        let cmd = cmd.trim();
        return if cmd.is_empty() {
            Err("empty |command".into())
        } else {
            Ok(Some(Raw::Command(cmd.to_string())))
        };
    }
    if inner.len() >= 9 && inner[..9].eq_ignore_ascii_case(":include:") {
        let path = inner[9..].trim();
        if !path.starts_with('/') {
            return Err(format!(
                ":include: path {path:?} is not absolute (relative paths are refused)"
            ));
        }
        return Ok(Some(Raw::Include(PathBuf::from(path))));
    }
    if inner.starts_with('/') {
        return Ok(Some(Raw::File(PathBuf::from(inner))));
    }
    if let Some(name) = inner.strip_prefix('\\') {
        if name.is_empty() || name.contains('@') {
            return Err(format!("bad \\name target {inner:?}"));
        }
        return Ok(Some(Raw::Exact(name.to_lowercase())));
    }
    if let Some((local, domain)) = inner.rsplit_once('@') {
        if local.is_empty() || domain.is_empty() {
            return Err(format!("bad address {inner:?}"));
        }
        let local = unquote_whole(local).unwrap_or_else(|| local.to_string());
        return Ok(Some(Raw::Address {
            text: inner.clone(),
            local: local.to_lowercase(),
            domain: domain.trim_end_matches('.').to_ascii_lowercase(),
        }));
    }
    Ok(Some(Raw::Name(inner.to_lowercase())))
}

/// `name: targets` → (name, targets).
fn parse_entry(text: &str) -> Result<(String, Vec<Raw>), String> {
    let colon = find_unquoted_colon(text).ok_or("need name:value pair (no ':' found)")?;
    let name_part = text[..colon].trim();
    let name = match unquote_whole(name_part) {
        Some(n) => n,
        None if has_unquoted_space(name_part) || name_part.contains('"') => {
            return Err(format!("bad alias name {name_part:?} (quote a name with spaces)"));
        }
        None => name_part.to_string(),
    };
    if name.is_empty() {
        return Err("empty alias name".into());
    }
    if name.chars().any(|c| c.is_control()) {
        return Err("control character in alias name".into());
    }
    let targets = parse_targets(&text[colon + 1..])?;
    if targets.is_empty() {
        return Err(format!("alias {name:?} has no targets"));
    }
    Ok((name.to_lowercase(), targets))
}

fn parse_targets(list: &str) -> Result<Vec<Raw>, String> {
    let mut out = Vec::new();
    for part in split_unquoted(list, ',') {
        if let Some(t) = parse_target(part)? {
            out.push(t);
        }
    }
    Ok(out)
}

/// Errors found so far: (line, message).
type LineErrors = Vec<(usize, String)>;
/// What is done with each logical line.
type EntryFn<'a> = dyn FnMut(usize, &str, &mut LineErrors) + 'a;

/// A logical line being assembled: (first line number, text, already known bad).
type Pending = (usize, String, bool);

/// Split `data` into logical entries (see the module doc), reporting line-level errors.
/// Calls `entry(line, text)` for each; stops early once `errors` is full. With
/// `each_line` (include files), every line stands alone: there are no continuations.
fn logical_lines(
    data: &[u8],
    each_line: bool,
    errors: &mut LineErrors,
    mut entry: impl FnMut(usize, &str, &mut LineErrors),
) {
    let mut cur: Option<Pending> = None;
    let flush = |cur: &mut Option<Pending>, errors: &mut LineErrors, entry: &mut EntryFn<'_>| {
        if let Some((line, text, bad)) = cur.take() {
            if !bad {
                entry(line, &text, errors);
            }
        }
    };
    for (i, raw) in data.split(|&b| b == b'\n').enumerate() {
        if errors.len() >= ALIASES_ERRORS_REPORTED_MAX {
            return;
        }
        let lineno = i + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        match raw.iter().position(|b| !b.is_ascii_whitespace()) {
            None => continue,
            Some(p) if raw[p] == b'#' => continue,
            Some(_) => {}
        }
        let continuation = !each_line && raw[0].is_ascii_whitespace();
        let problem = if raw.len() > ALIASES_ENTRY_BYTES_MAX {
            Some(format!("line longer than {ALIASES_ENTRY_BYTES_MAX} bytes"))
        } else if raw.contains(&0) {
            Some("NUL byte in line".to_string())
        } else if std::str::from_utf8(raw).is_err() {
            Some("line is not valid UTF-8".to_string())
        } else {
            None
        };
        if !continuation {
            flush(&mut cur, errors, &mut entry);
        }
        if let Some(p) = problem {
            errors.push((lineno, p));
            // The entry this line belongs to is not used.
            match cur.as_mut() {
                Some(c) if continuation => c.2 = true,
                _ => cur = Some((lineno, String::new(), true)),
            }
            continue;
        }
        let text = String::from_utf8_lossy(raw);
        if continuation {
            match cur.as_mut() {
                Some((_, s, bad)) => {
                    if s.len() + text.len() + 1 > ALIASES_ENTRY_BYTES_MAX {
                        if !*bad {
                            errors.push((lineno, format!("entry longer than {ALIASES_ENTRY_BYTES_MAX} bytes")));
                        }
                        *bad = true;
                    } else {
                        s.push(' ');
                        s.push_str(text.trim());
                    }
                }
                None => errors.push((
                    lineno,
                    "continuation line (starts with whitespace) without an entry".into(),
                )),
            }
        } else {
            cur = Some((lineno, text.trim().to_string(), false));
        }
    }
    flush(&mut cur, errors, &mut entry);
}

impl Aliases {
    /// Load an aliases file; `spec` is a path or `type:path` (see the module doc).
    /// Ok: the table and warnings (duplicates, include files that do not exist now).
    /// Err: every error found, with file:line; the caller keeps its last good table.
    pub fn load(spec: &str) -> Result<(Aliases, Vec<Diagnostic>), AliasError> {
        let path = strip_map_type(spec).map_err(|m| AliasError {
            errors: vec![Diagnostic {
                file: PathBuf::from(spec),
                line: 0,
                message: m,
            }],
        })?;
        let path = Path::new(path);
        let data = read_bounded(path, ALIASES_FILE_BYTES_MAX).map_err(|m| AliasError {
            errors: vec![Diagnostic {
                file: path.to_path_buf(),
                line: 0,
                message: m,
            }],
        })?;
        Aliases::parse(path, &data)
    }

    /// Load several tables (alias_maps): the first table naming an alias wins, as Postfix
    /// searches alias_maps in order. Errors and warnings of all files are collected.
    pub fn load_maps(specs: &[String]) -> Result<(Aliases, Vec<Diagnostic>), AliasError> {
        let mut all = Aliases::default();
        let (mut warnings, mut errors) = (Vec::new(), Vec::new());
        for spec in specs
            .iter()
            .map(|s| s.trim().trim_end_matches(','))
            .filter(|s| !s.is_empty())
        {
            match Aliases::load(spec) {
                Ok((a, w)) => {
                    warnings.extend(w);
                    for (k, v) in a.map {
                        all.map.entry(k).or_insert(v);
                    }
                }
                Err(e) => errors.extend(e.errors),
            }
        }
        if errors.is_empty() {
            Ok((all, warnings))
        } else {
            Err(AliasError { errors })
        }
    }

    /// Parse aliases text; `file` names it in diagnostics.
    pub fn parse(file: &Path, data: &[u8]) -> Result<(Aliases, Vec<Diagnostic>), AliasError> {
        let mut map: HashMap<String, Vec<Raw>> = HashMap::new();
        let mut first_line: HashMap<String, usize> = HashMap::new();
        let mut warnings = Vec::new();
        let mut errors: Vec<(usize, String)> = Vec::new();
        logical_lines(data, false, &mut errors, |line, text, errors| match parse_entry(text) {
            Ok((name, targets)) => {
                if let Some(first) = first_line.get(&name) {
                    warnings.push((
                        line,
                        format!("duplicate entry {name:?} (first at line {first}); ignored"),
                    ));
                } else if map.len() >= ALIASES_ENTRIES_MAX {
                    if errors.last().map(|e| e.1.as_str()) != Some("too many entries") {
                        errors.push((line, "too many entries".into()));
                    }
                } else {
                    first_line.insert(name.clone(), line);
                    map.insert(name, targets);
                }
            }
            Err(m) => errors.push((line, m)),
        });
        let diag = |(line, message): (usize, String)| Diagnostic {
            file: file.to_path_buf(),
            line,
            message,
        };
        if !errors.is_empty() {
            return Err(AliasError {
                errors: errors.into_iter().map(diag).collect(),
            });
        }
        // Include files are read at expansion; one that is missing now is worth a warning.
        let mut checked = HashSet::new();
        let mut lines: Vec<(&String, &usize)> = first_line.iter().collect();
        lines.sort_by_key(|(_, l)| **l);
        for (name, line) in lines {
            for raw in map.get(name).into_iter().flatten() {
                if let Raw::Include(p) = raw {
                    if checked.insert(p.clone()) && !p.is_file() {
                        warnings.push((
                            *line,
                            format!("include file {} is missing or not a regular file", p.display()),
                        ));
                    }
                }
            }
        }
        warnings.sort_by_key(|w| w.0);
        Ok((Aliases { map }, warnings.into_iter().map(diag).collect()))
    }

    /// Number of names.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Is `name` (case-insensitive) an alias? For RCPT-time checks: aliases first, then users.
    pub fn contains(&self, name: &str) -> bool {
        self.map.contains_key(&name.to_lowercase())
    }

    /// Expand a local name. `is_local_domain(domain)` (lowercased domain) says whether a
    /// `user@domain` target is local, and so expanded again as `user`.
    pub fn expand(&self, local_name: &str, is_local_domain: impl Fn(&str) -> bool) -> Expansion {
        let mut ex = Expander {
            aliases: self,
            is_local_domain: &is_local_domain,
            out: Expansion::default(),
            seen: HashSet::new(),
            expanded: HashSet::new(),
            included: HashSet::new(),
            stack: Vec::new(),
            includes: Vec::new(),
            full: false,
        };
        ex.name(&local_name.to_lowercase());
        ex.out
    }

    /// Does `postmaster` reach someone (RFC 5321 §4.5.1 requires it)? True when its
    /// expansion has no error and at least one target that can receive: a remote address,
    /// a command, a file, or a local user for which `user_exists` is true. For
    /// `poshta check`.
    pub fn postmaster_resolves(
        &self,
        is_local_domain: impl Fn(&str) -> bool,
        user_exists: impl Fn(&str) -> bool,
    ) -> bool {
        let ex = self.expand("postmaster", is_local_domain);
        ex.errors.is_empty()
            && ex.deliveries.iter().any(|t| match t {
                Target::Local(u) => user_exists(u),
                _ => true,
            })
    }
}

struct Expander<'a> {
    aliases: &'a Aliases,
    is_local_domain: &'a dyn Fn(&str) -> bool,
    out: Expansion,
    /// Final targets already in `out.deliveries` (one copy each).
    seen: HashSet<Target>,
    /// Aliases fully expanded (their targets are in `out` already).
    expanded: HashSet<String>,
    /// Include files fully read.
    included: HashSet<PathBuf>,
    /// Aliases being expanded, outermost first.
    stack: Vec<String>,
    /// Include files being read, outermost first.
    includes: Vec<PathBuf>,
    /// The target limit was hit (reported once).
    full: bool,
}

impl Expander<'_> {
    fn error(&mut self, permanent: bool, reason: String) {
        if !self.out.errors.iter().any(|e| e.reason == reason) {
            self.out.errors.push(ExpandError { permanent, reason });
        }
    }

    fn push(&mut self, t: Target) {
        if self.seen.contains(&t) {
            return;
        }
        if self.out.deliveries.len() >= ALIASES_EXPANSION_TARGETS_MAX {
            if !self.full {
                self.full = true;
                self.error(
                    true,
                    format!("alias expansion has more than {ALIASES_EXPANSION_TARGETS_MAX} targets"),
                );
            }
            return;
        }
        self.seen.insert(t.clone());
        self.out.deliveries.push(t);
    }

    /// Does the alias `name` list itself directly (`root: root, ...`)?
    fn lists_itself(&self, name: &str) -> bool {
        self.aliases
            .map
            .get(name)
            .is_some_and(|ts| ts.iter().any(|t| matches!(t, Raw::Name(n) if n == name)))
    }

    fn name(&mut self, name: &str) {
        if self.expanded.contains(name) {
            return;
        }
        if self.stack.last().map(String::as_str) == Some(name) {
            // A name in its own expansion is the user of that name (Postfix local(8)).
            self.push(Target::Local(name.to_string()));
            return;
        }
        if self.stack.iter().any(|s| s == name) {
            if self.lists_itself(name) {
                self.push(Target::Local(name.to_string()));
            } else {
                self.error(true, format!("mail forwarding loop for {name}"));
            }
            return;
        }
        let Some(targets) = self.aliases.map.get(name) else {
            self.push(Target::Local(name.to_string()));
            return;
        };
        if self.stack.len() >= ALIASES_EXPANSION_DEPTH_MAX {
            self.error(
                true,
                format!("alias expansion nested deeper than {ALIASES_EXPANSION_DEPTH_MAX} at {name}"),
            );
            return;
        }
        self.stack.push(name.to_string());
        for raw in targets {
            self.raw(raw, &Source::Alias);
        }
        self.stack.pop();
        self.expanded.insert(name.to_string());
    }

    fn raw(&mut self, raw: &Raw, source: &Source) {
        match raw {
            Raw::Name(n) => self.name(n),
            Raw::Exact(n) => self.push(Target::Local(n.clone())),
            Raw::Address { text, local, domain } => {
                if (self.is_local_domain)(domain) {
                    self.name(local);
                } else {
                    self.push(Target::Remote(text.clone()));
                }
            }
            Raw::Command(c) => self.push(Target::Command {
                command: c.clone(),
                source: source.clone(),
            }),
            Raw::File(p) => self.push(Target::File {
                path: p.clone(),
                source: source.clone(),
            }),
            Raw::Include(p) => self.include(p),
        }
    }

    fn include(&mut self, path: &Path) {
        if self.included.contains(path) {
            return;
        }
        if self.includes.iter().any(|p| p == path) {
            self.error(
                true,
                format!("mail forwarding loop: :include:{} includes itself", path.display()),
            );
            return;
        }
        if self.includes.len() >= ALIASES_INCLUDE_DEPTH_MAX {
            self.error(
                true,
                format!(":include: files nested deeper than {ALIASES_INCLUDE_DEPTH_MAX}"),
            );
            return;
        }
        let data = match read_bounded(path, ALIASES_INCLUDE_BYTES_MAX) {
            Ok(d) => d,
            Err(e) => {
                // An admin can fix the file: defer rather than bounce (Postfix does the same).
                self.error(false, format!("cannot read include file {}: {e}", path.display()));
                return;
            }
        };
        let mut targets = Vec::new();
        let mut errors = Vec::new();
        // Same syntax without names: every logical line is a target list.
        logical_lines(&data, true, &mut errors, |line, text, errors| {
            match parse_targets(text) {
                Ok(ts) => targets.extend(ts),
                Err(m) => errors.push((line, m)),
            }
        });
        for (line, m) in errors {
            self.error(false, format!("{}:{line}: {m}", path.display()));
        }
        let source = Source::Include(path.to_path_buf());
        self.includes.push(path.to_path_buf());
        for raw in &targets {
            self.raw(raw, &source);
        }
        self.includes.pop();
        self.included.insert(path.to_path_buf());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Aliases {
        Aliases::parse(Path::new("aliases"), text.as_bytes()).unwrap().0
    }

    fn local(n: &str) -> Target {
        Target::Local(n.into())
    }

    #[test]
    fn targets() {
        assert_eq!(parse_target(" bob ").unwrap(), Some(Raw::Name("bob".into())));
        assert_eq!(parse_target("\\Root").unwrap(), Some(Raw::Exact("root".into())));
        assert_eq!(
            parse_target("\"|cmd a, b\"").unwrap(),
            Some(Raw::Command("cmd a, b".into()))
        );
        assert_eq!(parse_target("|cmd").unwrap(), Some(Raw::Command("cmd".into())));
        assert_eq!(parse_target(":INCLUDE:/x").unwrap(), Some(Raw::Include("/x".into())));
        assert!(parse_target(":include:x").is_err());
        assert!(parse_target("a b").is_err());
        assert!(parse_target("\"a").is_err());
        assert!(parse_target("@x").is_err());
        assert_eq!(parse_target("   ").unwrap(), None);
        match parse_target("\"John Doe\"@Example.ORG.").unwrap() {
            Some(Raw::Address { text, local, domain }) => {
                assert_eq!(
                    (text.as_str(), local.as_str(), domain.as_str()),
                    ("\"John Doe\"@Example.ORG.", "john doe", "example.org")
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn map_types() {
        assert_eq!(strip_map_type("hash:/etc/aliases").unwrap(), "/etc/aliases");
        assert_eq!(strip_map_type("texthash:/a").unwrap(), "/a");
        assert_eq!(strip_map_type("/etc/aliases").unwrap(), "/etc/aliases");
        assert!(strip_map_type("ldap:/etc/x").is_err());
    }

    #[test]
    fn self_reference_and_group() {
        let a = parse("root: root, ops\nops: root, ann\n");
        let e = a.expand("ROOT", |_| false);
        assert!(e.errors.is_empty(), "{e:?}");
        assert_eq!(e.deliveries, vec![local("root"), local("ann")]);
    }
}
