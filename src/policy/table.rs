//! Lookup tables named the Postfix way, `type:/path/to/file`.
//!
//! # Types
//!
//! | type | file format | lookup |
//! | --- | --- | --- |
//! | `hash:`, `btree:`, `lmdb:`, `cdb:`, `texthash:` | postmap(1) text | exact key, case-folded |
//! | `cidr:` | cidr_table(5) | an IP address; first matching rule wins |
//! | `regexp:`, `pcre:` | regexp_table(5) / pcre_table(5) | the whole string; first matching rule wins |
//!
//! A spec without `type:` is `hash:` (Postfix's default_database_type). A relative path
//! is resolved against config_directory.
//!
//! # Lines (all types; Postfix readlline)
//!
//! ```text
//! file        = *( logical / comment / blank )
//! logical     = first-line *( comment / blank / continuation )
//! first-line  = non-WSP text          ; starts in column 1
//! continuation= 1*WSP text            ; joined to the logical line with one space
//! comment     = *WSP "#" text         ; whole lines only: `#` after text is text
//! blank       = *WSP
//! ```
//!
//! CR before LF is ignored. The file must be UTF-8 and at most
//! [`TABLE_FILE_BYTES_MAX`] bytes; a logical line is at most [`TABLE_LINE_BYTES_MAX`]
//! bytes. A continuation line with nothing before it is an error.
//!
//! # Text maps (postmap(1) input)
//!
//! `key WSP value`: the key is the first word, the value the rest of the logical line,
//! trimmed. Keys are case-folded (Unicode lowercase) when loaded and when looked up, as
//! postmap does without `-f`. A line with a key but no value is an error. A duplicate key
//! is a warning and the first value is kept (postmap's `duplicate entry`).
//!
//! The text is read directly: running `poshta postmap` is never needed. It writes a
//! compiled index `FILE.poshta.db` (see `write_index`), which [`Table::open`] uses
//! instead of the text when the index records the text file's current size and
//! modification time, i.e. when it was built from the text as it is now. `texthash:`
//! never uses an index (as Postfix's texthash never needs postmap).
//!
//! In memory a text map is one string arena (the file's own text, keys folded in place; or,
//! from the index, only the keys and values) and an array of `u32` offsets sorted by key
//! (16 bytes per entry); a lookup is a binary search. A 200,000-entry map costs about
//! 1.5× its file size.
//!
//! # cidr_table(5)
//!
//! ```text
//! rule  = [ "!" ] network WSP result
//! if    = "if" WSP [ "!" ] network        ; the lines up to the matching "endif" are
//! endif = "endif"                          ; tried only when the network matches
//! network = ipv4 [ "/" len ] / ipv6 [ "/" len ] / "[" ipv6 "]" [ "/" len ]
//! ```
//!
//! A network with host bits set below its length is skipped with Postfix's warning
//! (`non-null host address bits in "1.2.3.4/24", perhaps you should use "1.2.3.0/24"
//! instead: skipping this rule`). The key is an IP address; an IPv4-mapped IPv6 address
//! (`::ffff:1.2.3.4`) is looked up as the IPv4 address, as Postfix's smtpd reports it.
//! A key that is not an IP address matches nothing.
//!
//! # regexp_table(5) and pcre_table(5)
//!
//! ```text
//! rule  = [ "!" ] D pattern D flags WSP result    ; D: any non-space delimiter, usually "/"
//! if    = "if" WSP [ "!" ] D pattern D flags
//! endif = "endif"
//! ```
//!
//! Patterns are compiled with the `regex` crate (linear-time matching: no catastrophic
//! backtracking); back-references and look-around are not supported and are errors.
//! Matching is case-insensitive by default; the flags toggle or set:
//!
//! - `i` toggles case-insensitivity (both types);
//! - `m` multi-line mode (both types);
//! - regexp: `x` toggles POSIX extended syntax, which is on by default; basic syntax is not
//!   supported, so `x` is an error;
//! - pcre: `x` ignores whitespace and `#` comments in the pattern, `s` lets `.` match
//!   newline, `U` swaps greediness, `A` anchors at the start, `E` and `X` are accepted
//!   and change nothing (`$` already means the end of the text).
//!
//! In the result, `$1`..`$9` and `${1}`..`${9}` insert the matching group (empty when the
//! group did not take part), `$$` is a `$`. A reference to a group the pattern does not
//! have, or any `$n` in the result of a `!` rule, is an error at load. A pattern whose
//! compiled form exceeds [`TABLE_REGEX_COMPILED_BYTES_MAX`] is refused at load with its
//! file:line. Keys are matched as given (not case-folded).
//!
//! # Errors
//!
//! Any error makes the whole table fail to load ([`TableError`] with file:line); the
//! [`TableSet`] then keeps the last good version. Warnings (duplicates, host bits) do not
//! stop a load; they are returned with the table.

use crate::limits::{
    TABLE_FILE_BYTES_MAX, TABLE_IF_DEPTH_MAX, TABLE_LINE_BYTES_MAX, TABLE_PATTERN_RULES_MAX,
    TABLE_REGEX_COMPILED_BYTES_MAX,
};
use regex::{Regex, RegexBuilder};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::io::{Read, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// A problem in a table file: `file:line: msg` (line 0: not tied to a line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableError {
    pub file: PathBuf,
    pub line: usize,
    pub msg: String,
}

impl std::fmt::Display for TableError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.line > 0 {
            write!(f, "{}:{}: {}", self.file.display(), self.line, self.msg)
        } else {
            write!(f, "{}: {}", self.file.display(), self.msg)
        }
    }
}

impl std::error::Error for TableError {}

/// The table types poshta knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableType {
    Hash,
    Btree,
    Lmdb,
    Cdb,
    Texthash,
    Cidr,
    Regexp,
    Pcre,
}

impl TableType {
    pub fn name(self) -> &'static str {
        match self {
            TableType::Hash => "hash",
            TableType::Btree => "btree",
            TableType::Lmdb => "lmdb",
            TableType::Cdb => "cdb",
            TableType::Texthash => "texthash",
            TableType::Cidr => "cidr",
            TableType::Regexp => "regexp",
            TableType::Pcre => "pcre",
        }
    }

    fn from_name(s: &str) -> Option<TableType> {
        Some(match s {
            "hash" => TableType::Hash,
            "btree" => TableType::Btree,
            "lmdb" => TableType::Lmdb,
            "cdb" => TableType::Cdb,
            "texthash" => TableType::Texthash,
            "cidr" => TableType::Cidr,
            "regexp" => TableType::Regexp,
            "pcre" => TableType::Pcre,
            _ => return None,
        })
    }

    /// Text key/value maps (postmap input); the others are pattern tables.
    pub fn is_text(self) -> bool {
        matches!(
            self,
            TableType::Hash | TableType::Btree | TableType::Lmdb | TableType::Cdb | TableType::Texthash
        )
    }
}

/// Split `type:path` (no `type:`: hash) and resolve a relative path against `config_dir`.
pub fn parse_spec(spec: &str, config_dir: &Path) -> Result<(TableType, PathBuf), TableError> {
    let err = |msg: String| TableError {
        file: PathBuf::from(spec),
        line: 0,
        msg,
    };
    let (ty, path) = match spec.split_once(':') {
        Some((t, p)) if !t.contains('/') => {
            let ty = TableType::from_name(&t.to_ascii_lowercase())
                .ok_or_else(|| err(format!("unsupported dictionary type: {t}")))?;
            (ty, p)
        }
        _ => (TableType::Hash, spec),
    };
    if path.is_empty() {
        return Err(err("no file name after the table type".into()));
    }
    let p = Path::new(path);
    let path = if p.is_absolute() {
        p.to_path_buf()
    } else {
        config_dir.join(p)
    };
    Ok((ty, path))
}

/// The compiled index next to a text map: `FILE.poshta.db`.
pub fn index_path(text: &Path) -> PathBuf {
    let mut s = text.as_os_str().to_owned();
    s.push(".poshta.db");
    PathBuf::from(s)
}

/// One loaded table.
#[derive(Debug)]
pub struct Table {
    ty: TableType,
    path: PathBuf,
    body: Body,
    /// Non-fatal problems found while loading (duplicates, host bits).
    pub warnings: Vec<TableError>,
    /// Whether the compiled index was used instead of the text.
    pub from_index: bool,
}

#[derive(Debug)]
enum Body {
    Text(TextMap),
    Cidr(Vec<Op<CidrCond>>),
    Regexp(Vec<Op<RegexCond>>),
}

impl Table {
    /// Open `type:path` (relative paths against `config_dir`). Text maps use a fresh
    /// compiled index when there is one.
    pub fn open(spec: &str, config_dir: &Path) -> Result<Table, TableError> {
        let (ty, path) = parse_spec(spec, config_dir)?;
        Table::open_path(ty, &path)
    }

    /// Open a table whose type and path are known.
    pub fn open_path(ty: TableType, path: &Path) -> Result<Table, TableError> {
        if ty.is_text() && ty != TableType::Texthash {
            if let Some(map) = read_index(path) {
                return Ok(Table {
                    ty,
                    path: path.to_path_buf(),
                    body: Body::Text(map),
                    warnings: Vec::new(),
                    from_index: true,
                });
            }
        }
        let text = read_text(path)?;
        Table::parse_owned(ty, path, text).map_err(|mut errs| errs.swap_remove(0))
    }

    /// Build a table from its source text (`path` is used in messages only). Err: the
    /// first error.
    pub fn parse(ty: TableType, path: &Path, text: &str) -> Result<Table, TableError> {
        Table::parse_all(ty, path, text).map_err(|mut errs| errs.swap_remove(0))
    }

    /// Like [`Table::parse`], but Err lists every error found (postmap reports them all);
    /// the list is never empty.
    pub fn parse_all(ty: TableType, path: &Path, text: &str) -> Result<Table, Vec<TableError>> {
        Table::parse_owned(ty, path, text.to_string())
    }

    /// Text maps keep `text` as their arena (see [`TextMap`]).
    fn parse_owned(ty: TableType, path: &Path, text: String) -> Result<Table, Vec<TableError>> {
        let mut warnings = Vec::new();
        let mut errors = Vec::new();
        let body = if ty.is_text() {
            Body::Text(TextMap::parse(path, text, &mut warnings, &mut errors))
        } else if ty == TableType::Cidr {
            Body::Cidr(parse_ops(path, &text, &mut warnings, &mut errors, parse_cidr_cond))
        } else {
            let pcre = ty == TableType::Pcre;
            Body::Regexp(parse_ops(path, &text, &mut warnings, &mut errors, |p, l, s, w| {
                parse_regex_cond(p, l, s, w, pcre)
            }))
        };
        if !errors.is_empty() {
            errors.sort_by_key(|e| e.line);
            return Err(errors);
        }
        Ok(Table {
            ty,
            path: path.to_path_buf(),
            body,
            warnings,
            from_index: false,
        })
    }

    pub fn table_type(&self) -> TableType {
        self.ty
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Pattern tables (cidr, regexp, pcre) are matched against the whole string only:
    /// access(5) does no parent-domain or partial-address lookups in them.
    pub fn is_pattern(&self) -> bool {
        !self.ty.is_text()
    }

    /// Entries (text maps) or rules (pattern tables).
    pub fn len(&self) -> usize {
        match &self.body {
            Body::Text(m) => m.entries.len(),
            Body::Cidr(ops) => ops.len(),
            Body::Regexp(ops) => ops.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The value for `key`: text maps fold the key's case; cidr tables take an IP
    /// address; regexp tables match the whole key and substitute `$n`. Borrowed unless a
    /// regexp result needed substitution.
    pub fn lookup(&self, key: &str) -> Option<Cow<'_, str>> {
        match &self.body {
            Body::Text(m) => m.get(key).map(Cow::Borrowed),
            Body::Cidr(ops) => {
                let ip = parse_key_ip(key)?;
                run_ops(ops, |c| c.matches(ip).then_some(())).map(|(r, _)| Cow::Borrowed(r))
            }
            Body::Regexp(ops) => {
                let (result, caps) = run_ops(ops, |c| c.matches(key))?;
                match caps {
                    Some(caps) => Some(Cow::Owned(substitute(result, &caps))),
                    None => Some(Cow::Borrowed(result)),
                }
            }
        }
    }

    /// The text map behind this table (for postmap); None for pattern tables.
    fn text_map(&self) -> Option<&TextMap> {
        match &self.body {
            Body::Text(m) => Some(m),
            _ => None,
        }
    }
}

pub fn read_text(path: &Path) -> Result<String, TableError> {
    let err = |line: usize, msg: String| TableError {
        file: path.to_path_buf(),
        line,
        msg,
    };
    let f = std::fs::File::open(path).map_err(|e| err(0, format!("open: {e}")))?;
    // One allocation of the right size: the file is read whole, then freed after parsing.
    let size = f.metadata().map_or(0, |m| m.len()).min(TABLE_FILE_BYTES_MAX);
    let mut buf = Vec::with_capacity(usize::try_from(size).unwrap_or(0).saturating_add(1));
    f.take(TABLE_FILE_BYTES_MAX + 1)
        .read_to_end(&mut buf)
        .map_err(|e| err(0, format!("read: {e}")))?;
    if buf.len() as u64 > TABLE_FILE_BYTES_MAX {
        return Err(err(0, format!("file is larger than {TABLE_FILE_BYTES_MAX} bytes")));
    }
    String::from_utf8(buf).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let line = e
            .as_bytes()
            .get(..at)
            .map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count())
            + 1;
        err(line, "line is not valid UTF-8".into())
    })
}

/// Logical lines as (first physical line number, text), per the grammar above. Lines
/// without continuation are borrowed from the text (no allocation per line: a 200,000-line
/// map must not leave 200,000 freed strings in the allocator). Problems are collected in
/// `errors`, to be merged by the caller.
struct LogicalLines<'a> {
    path: &'a Path,
    lines: std::iter::Enumerate<std::str::Split<'a, char>>,
    pending: Option<(usize, &'a str)>,
    /// An over-long logical line is being skipped (its continuation lines too).
    skipping: bool,
    errors: Vec<TableError>,
}

fn logical_lines<'a>(path: &'a Path, text: &'a str) -> LogicalLines<'a> {
    LogicalLines {
        path,
        lines: text.split('\n').enumerate(),
        pending: None,
        skipping: false,
        errors: Vec::new(),
    }
}

impl<'a> LogicalLines<'a> {
    fn error(&mut self, line: usize, msg: String) {
        self.errors.push(TableError {
            file: self.path.to_path_buf(),
            line,
            msg,
        });
    }
}

impl<'a> Iterator for LogicalLines<'a> {
    type Item = (usize, Cow<'a, str>);

    fn next(&mut self) -> Option<Self::Item> {
        let mut cur: Option<(usize, Cow<'a, str>)> = self.pending.take().map(|(n, l)| (n, Cow::Borrowed(l)));
        loop {
            let Some((i, raw)) = self.lines.next() else {
                return cur;
            };
            let line_no = i + 1;
            let line = raw.strip_suffix('\r').unwrap_or(raw);
            let t = line.trim();
            if t.is_empty() || t.starts_with('#') {
                continue;
            }
            if line.starts_with(|c: char| c.is_whitespace()) {
                if self.skipping {
                    continue;
                }
                let Some((start, c)) = cur.as_mut() else {
                    self.error(
                        line_no,
                        "continuation line (starting with whitespace) with no line before it".into(),
                    );
                    continue;
                };
                let start = *start;
                let c = c.to_mut();
                c.push(' ');
                c.push_str(t);
                if c.len() > TABLE_LINE_BYTES_MAX {
                    cur = None;
                    self.skipping = true;
                    self.error(
                        start,
                        format!("logical line is longer than {TABLE_LINE_BYTES_MAX} bytes"),
                    );
                }
                continue;
            }
            self.skipping = false;
            let first = line.trim_end();
            if first.len() > TABLE_LINE_BYTES_MAX {
                self.skipping = true;
                self.error(
                    line_no,
                    format!("logical line is longer than {TABLE_LINE_BYTES_MAX} bytes"),
                );
                if cur.is_some() {
                    return cur;
                }
                continue;
            }
            if cur.is_some() {
                self.pending = Some((line_no, first));
                return cur;
            }
            cur = Some((line_no, Cow::Borrowed(first)));
        }
    }
}

fn fold(key: &str) -> Cow<'_, str> {
    if key.bytes().all(|b| b.is_ascii() && !b.is_ascii_uppercase()) {
        Cow::Borrowed(key)
    } else {
        Cow::Owned(key.to_lowercase())
    }
}

/// Sorted key/value arena. `entries[i] = [key_start, key_end, val_start, val_end]` into
/// `arena`. Loaded from text, the arena *is* the file's text (keys case-folded in place;
/// joined continuation lines and keys whose folded form is longer are appended), so
/// loading copies nothing and leaves no garbage behind: memory is the file plus 16 bytes
/// per entry. Loaded from the index, the arena holds only keys and values.
#[derive(Debug, Default)]
struct TextMap {
    arena: String,
    entries: Vec<[u32; 4]>,
}

/// Duplicate warnings past this many are summarised in one line (each needs a scan of
/// the text for its line number).
const DUPLICATE_WARNINGS_MAX: usize = 100;

/// read_text caps files at TABLE_FILE_BYTES_MAX < 4 GiB, so offsets fit in u32.
fn off(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl TextMap {
    fn parse(path: &Path, mut text: String, warnings: &mut Vec<TableError>, errors: &mut Vec<TableError>) -> TextMap {
        // Upper bound of the entry count (lines starting in column 1): one exact allocation.
        let cap = text
            .split('\n')
            .filter(|l| l.starts_with(|c: char| !c.is_whitespace() && c != '#'))
            .count();
        let mut entries: Vec<[u32; 4]> = Vec::with_capacity(cap);
        let mut extra = String::new();
        let base = text.as_ptr() as usize;
        {
            let mut ll = logical_lines(path, &text);
            for (line, l) in ll.by_ref() {
                let Some((key, value)) = l
                    .split_once(|c: char| c.is_whitespace())
                    .map(|(k, v)| (k, v.trim()))
                    .filter(|(_, v)| !v.is_empty())
                else {
                    errors.push(TableError {
                        file: path.to_path_buf(),
                        line,
                        msg: format!("expected format: key whitespace value (no value for \"{l}\")"),
                    });
                    continue;
                };
                let span = |s: &str| {
                    let a = (s.as_ptr() as usize).wrapping_sub(base);
                    [off(a), off(a + s.len())]
                };
                let entry = match &l {
                    // Borrowed from the text: point at it.
                    Cow::Borrowed(_) => {
                        let [ks, ke] = span(key);
                        let [vs, ve] = span(value);
                        [ks, ke, vs, ve]
                    }
                    // A joined continuation line: append it after the text.
                    Cow::Owned(_) => {
                        let at = text.len() + extra.len();
                        extra.push_str(key);
                        let vs = text.len() + extra.len();
                        extra.push_str(value);
                        [off(at), off(at + key.len()), off(vs), off(vs + value.len())]
                    }
                };
                entries.push(entry);
            }
            errors.append(&mut ll.errors);
        }
        if !extra.is_empty() {
            text.reserve_exact(extra.len());
            text.push_str(&extra);
        }
        // Case-fold keys (postmap without -f): ASCII in place; a key whose Unicode
        // lowercase differs in length is appended.
        let mut moved: Vec<(usize, String)> = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            let [ks, ke, _, _] = *e;
            let r = ks as usize..ke as usize;
            match text.get_mut(r.clone()) {
                Some(k) if k.is_ascii() => {
                    k.make_ascii_lowercase();
                    continue;
                }
                Some(_) => {}
                None => continue,
            }
            let Some(folded) = text.get(r.clone()).map(str::to_lowercase) else {
                continue;
            };
            if text.get(r.clone()) == Some(folded.as_str()) {
                continue;
            }
            if folded.len() == r.len() {
                text.replace_range(r, &folded);
            } else {
                moved.push((i, folded));
            }
        }
        // One reallocation for all moved keys (not one doubling per key).
        text.reserve_exact(moved.iter().map(|(_, f)| f.len()).sum());
        for (i, folded) in moved {
            let at = text.len();
            text.push_str(&folded);
            if let Some(e) = entries.get_mut(i) {
                e[0] = off(at);
                e[1] = off(at + folded.len());
            }
        }
        let mut m = TextMap { arena: text, entries };
        // File order breaks ties, so the first of equal keys is kept (postmap's
        // `duplicate entry` warning, first value wins). Keys appended above are rare
        // (continuations, odd Unicode); their tie order follows their position.
        let arena = &m.arena;
        let key = |e: &[u32; 4]| arena.get(e[0] as usize..e[1] as usize).unwrap_or("");
        let line_of = |e: &[u32; 4]| {
            let at = (e[0] as usize).min(arena.len());
            arena
                .as_bytes()
                .get(..at)
                .map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count() + 1)
        };
        m.entries
            .sort_unstable_by(|a, b| key(a).cmp(key(b)).then(a[0].cmp(&b[0])));
        let mut dups = 0usize;
        m.entries.dedup_by(|later, first| {
            let same = key(later) == key(first);
            if same {
                dups += 1;
                if dups <= DUPLICATE_WARNINGS_MAX {
                    warnings.push(TableError {
                        file: path.to_path_buf(),
                        line: line_of(later),
                        msg: format!("duplicate entry: \"{}\" (the first one is used)", key(later)),
                    });
                }
            }
            same
        });
        if dups > DUPLICATE_WARNINGS_MAX {
            warnings.push(TableError {
                file: path.to_path_buf(),
                line: 0,
                msg: format!("{} more duplicate entries", dups - DUPLICATE_WARNINGS_MAX),
            });
        }
        m.entries.shrink_to_fit();
        m
    }

    fn key_at(&self, i: usize) -> &str {
        match self.entries.get(i) {
            Some([k, e, _, _]) => self.arena.get(*k as usize..*e as usize).unwrap_or(""),
            None => "",
        }
    }

    fn get(&self, key: &str) -> Option<&str> {
        let key = fold(key);
        let arena = &self.arena;
        let i = self
            .entries
            .binary_search_by(|[k, e, _, _]| arena.get(*k as usize..*e as usize).unwrap_or("").cmp(&key))
            .ok()?;
        let [_, _, v, e] = self.entries.get(i)?;
        arena.get(*v as usize..*e as usize)
    }

    /// A loaded index is trusted only after these checks: offsets in range, on char
    /// boundaries, keys strictly sorted. A corrupt index is ignored (the text is read).
    fn validate(&self) -> bool {
        let n = self.arena.len();
        let ok = |x: u32| (x as usize) <= n && self.arena.is_char_boundary(x as usize);
        self.entries
            .iter()
            .all(|&[k, ke, v, ve]| k <= ke && v <= ve && ok(k) && ok(ke) && ok(v) && ok(ve))
            && (1..self.entries.len()).all(|i| self.key_at(i - 1) < self.key_at(i))
    }

    /// The same map with only keys and values in the arena (for the index).
    fn compacted(&self) -> TextMap {
        let mut arena = String::with_capacity(self.entries.iter().map(|e| (e[1] - e[0] + e[3] - e[2]) as usize).sum());
        let mut entries = Vec::with_capacity(self.entries.len());
        for &[k, ke, v, ve] in &self.entries {
            let at = arena.len();
            arena.push_str(self.arena.get(k as usize..ke as usize).unwrap_or(""));
            let vs = arena.len();
            arena.push_str(self.arena.get(v as usize..ve as usize).unwrap_or(""));
            entries.push([off(at), off(vs), off(vs), off(arena.len())]);
        }
        TextMap { arena, entries }
    }
}

// ---- compiled index -------------------------------------------------------------------

/// Index file magic and format version.
const INDEX_MAGIC: &[u8; 8] = b"POSHTAMP";
const INDEX_VERSION: u32 = 2;
/// Bound on the postcard header (a few varints).
const INDEX_HEADER_BYTES_MAX: u32 = 64;

/// What the index records about the text it was built from.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct SourceStamp {
    size: u64,
    mtime_secs: i64,
    mtime_nanos: u32,
}

fn stamp_of(meta: &std::fs::Metadata) -> SourceStamp {
    let (secs, nanos) = match meta.modified() {
        Ok(t) => match t.duration_since(SystemTime::UNIX_EPOCH) {
            Ok(d) => (i64::try_from(d.as_secs()).unwrap_or(i64::MAX), d.subsec_nanos()),
            Err(e) => (-i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX), 0),
        },
        Err(_) => (0, 0),
    };
    SourceStamp {
        size: meta.len(),
        mtime_secs: secs,
        mtime_nanos: nanos,
    }
}

/// The postcard-encoded index header.
#[derive(Debug, Serialize, Deserialize)]
struct IndexHeader {
    source: SourceStamp,
    entries: u64,
    arena_bytes: u64,
}

/// Load `FILE.poshta.db` when it exists, is well-formed and was built from the text file
/// as it is now (same size and modification time). Anything else: None, read the text.
/// The entries and the arena are read straight into their final allocations.
fn read_index(text_path: &Path) -> Option<TextMap> {
    let meta = std::fs::metadata(text_path).ok()?;
    let stamp = stamp_of(&meta);
    let f = std::fs::File::open(index_path(text_path)).ok()?;
    let file_len = f.metadata().ok()?.len();
    let mut r = std::io::BufReader::new(f);
    let mut fixed = [0u8; 16];
    r.read_exact(&mut fixed).ok()?;
    let (magic, rest) = fixed.split_at(8);
    let version = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?);
    let hlen = u32::from_le_bytes(rest.get(4..8)?.try_into().ok()?);
    if magic != INDEX_MAGIC || version != INDEX_VERSION || hlen > INDEX_HEADER_BYTES_MAX {
        return None;
    }
    let mut hbuf = vec![0u8; hlen as usize];
    r.read_exact(&mut hbuf).ok()?;
    let h: IndexHeader = postcard::from_bytes(&hbuf).ok()?;
    // The sizes must add up to the file's length before anything is allocated.
    let body = h.entries.checked_mul(16)?.checked_add(h.arena_bytes)?;
    if h.source != stamp || 16 + u64::from(hlen) + body != file_len || h.arena_bytes > TABLE_FILE_BYTES_MAX * 2 {
        return None;
    }
    let n = usize::try_from(h.entries).ok()?;
    let mut entries: Vec<[u32; 4]> = Vec::with_capacity(n);
    let mut rec = [0u8; 16];
    for _ in 0..n {
        r.read_exact(&mut rec).ok()?;
        let w = |i: usize| {
            rec.get(i..i + 4)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_le_bytes)
        };
        entries.push([w(0)?, w(4)?, w(8)?, w(12)?]);
    }
    let mut arena = vec![0u8; usize::try_from(h.arena_bytes).ok()?];
    r.read_exact(&mut arena).ok()?;
    let map = TextMap {
        arena: String::from_utf8(arena).ok()?,
        entries,
    };
    map.validate().then_some(map)
}

/// What [`compile`] did.
#[derive(Debug)]
pub struct Compiled {
    pub entries: usize,
    pub warnings: Vec<TableError>,
    /// The index written (None for texthash and pattern tables, which have no index).
    pub index: Option<PathBuf>,
}

/// postmap: parse the text of `spec`, report every error, and write the compiled
/// index for hash/btree/lmdb/cdb maps. Pattern tables and texthash are only validated.
pub fn compile(spec: &str, config_dir: &Path) -> Result<Compiled, Vec<TableError>> {
    let (ty, path) = parse_spec(spec, config_dir).map_err(|e| vec![e])?;
    let meta = std::fs::metadata(&path).map_err(|e| {
        vec![TableError {
            file: path.clone(),
            line: 0,
            msg: format!("stat: {e}"),
        }]
    })?;
    let text = read_text(&path).map_err(|e| vec![e])?;
    let table = Table::parse_owned(ty, &path, text)?;
    let index = match table.text_map() {
        Some(map) if ty != TableType::Texthash => {
            let idx = index_path(&path);
            write_index(&idx, stamp_of(&meta), &map.compacted()).map_err(|e| {
                vec![TableError {
                    file: idx.clone(),
                    line: 0,
                    msg: format!("write: {e}"),
                }]
            })?;
            Some(idx)
        }
        _ => None,
    };
    Ok(Compiled {
        entries: table.len(),
        warnings: table.warnings,
        index,
    })
}

/// Index file layout (integers little-endian):
///
/// ```text
/// "POSHTAMP" | version u32 (2) | header_len u32 | header: postcard { source: { size u64,
/// mtime_secs i64, mtime_nanos u32 }, entries u64, arena_bytes u64 } |
/// entries × [key_start u32, key_end u32, val_start u32, val_end u32] (sorted by key) |
/// arena (UTF-8, arena_bytes)
/// ```
///
/// Written to `FILE.poshta.db.tmp`, fsynced, renamed over the index, and the directory
/// fsynced, so a reader sees the old index or the new one, never a torn one. A reader
/// checks the sizes against the file length, the offsets, UTF-8 and the sort order.
fn write_index(idx: &Path, source: SourceStamp, map: &TextMap) -> std::io::Result<()> {
    let header = postcard::to_stdvec(&IndexHeader {
        source,
        entries: map.entries.len() as u64,
        arena_bytes: map.arena.len() as u64,
    })
    .map_err(std::io::Error::other)?;
    let mut tmp_name = idx.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
    f.write_all(INDEX_MAGIC)?;
    f.write_all(&INDEX_VERSION.to_le_bytes())?;
    f.write_all(&off(header.len()).to_le_bytes())?;
    f.write_all(&header)?;
    for e in &map.entries {
        for x in e {
            f.write_all(&x.to_le_bytes())?;
        }
    }
    f.write_all(map.arena.as_bytes())?;
    let f = f.into_inner().map_err(|e| e.into_error())?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, idx)?;
    if let Some(dir) = idx.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

// ---- pattern tables ------------------------------------------------------------------

/// A rule or an `if` block in a cidr/regexp table.
#[derive(Debug)]
enum Op<C> {
    Rule {
        cond: C,
        result: String,
    },
    /// When `cond` does not match, continue at `end` (the op after the matching endif).
    If {
        cond: C,
        end: usize,
    },
}

/// Run the ops in order; `test` returns None (no match) or Some(extra) on a match.
fn run_ops<C, X>(ops: &[Op<C>], mut test: impl FnMut(&C) -> Option<X>) -> Option<(&str, X)> {
    let mut i = 0;
    // Each step moves forward, so at most ops.len() steps.
    while let Some(op) = ops.get(i) {
        match op {
            Op::Rule { cond, result } => {
                if let Some(x) = test(cond) {
                    return Some((result.as_str(), x));
                }
                i += 1;
            }
            Op::If { cond, end } => {
                i = if test(cond).is_some() { i + 1 } else { (*end).max(i + 1) };
            }
        }
    }
    None
}

/// What a condition parser returns: the condition, the rest of the line (the result),
/// or None when the rule is skipped with a warning.
type CondParse<C> = Result<Option<(C, String)>, TableError>;

fn parse_ops<C>(
    path: &Path,
    text: &str,
    warnings: &mut Vec<TableError>,
    errors: &mut Vec<TableError>,
    parse_cond: impl Fn(&Path, usize, &str, &mut Vec<TableError>) -> CondParse<C>,
) -> Vec<Op<C>> {
    let err = |line: usize, msg: &str| TableError {
        file: path.to_path_buf(),
        line,
        msg: msg.to_string(),
    };
    let mut ops: Vec<Op<C>> = Vec::new();
    // (op index or None for an if whose condition was bad, line)
    let mut open_ifs: Vec<(Option<usize>, usize)> = Vec::new();
    let mut ll = logical_lines(path, text);
    let mut stopped = false;
    for (line, l) in ll.by_ref() {
        if ops.len() >= TABLE_PATTERN_RULES_MAX {
            errors.push(err(line, &format!("more than {TABLE_PATTERN_RULES_MAX} rules")));
            stopped = true;
            break;
        }
        let word = l.split_whitespace().next().unwrap_or("");
        if word.eq_ignore_ascii_case("endif") {
            if l.trim() != word {
                errors.push(err(line, "text after endif"));
            }
            match open_ifs.pop() {
                Some((Some(at), _)) => {
                    let end = ops.len();
                    if let Some(Op::If { end: e, .. }) = ops.get_mut(at) {
                        *e = end;
                    }
                }
                Some((None, _)) => {}
                None => errors.push(err(line, "endif without a matching if")),
            }
            continue;
        }
        if word.eq_ignore_ascii_case("if") {
            if open_ifs.len() >= TABLE_IF_DEPTH_MAX {
                errors.push(err(line, &format!("if blocks nested deeper than {TABLE_IF_DEPTH_MAX}")));
                stopped = true;
                break;
            }
            let rest = l.get(2..).unwrap_or("").trim();
            match parse_cond(path, line, rest, warnings) {
                Ok(Some((cond, tail))) if tail.is_empty() => {
                    open_ifs.push((Some(ops.len()), line));
                    ops.push(Op::If { cond, end: usize::MAX });
                }
                Ok(Some(_)) => {
                    errors.push(err(line, "text after the if condition"));
                    open_ifs.push((None, line));
                }
                // Postfix skips such a rule; an if cannot be skipped without changing
                // what the block means, so it is an error.
                Ok(None) => {
                    errors.push(err(line, "bad if condition (see the warning)"));
                    open_ifs.push((None, line));
                }
                Err(e) => {
                    errors.push(e);
                    open_ifs.push((None, line));
                }
            }
            continue;
        }
        match parse_cond(path, line, &l, warnings) {
            Ok(Some((_, result))) if result.is_empty() => errors.push(err(line, "no result after the pattern")),
            Ok(Some((cond, result))) => ops.push(Op::Rule { cond, result }),
            Ok(None) => {}
            Err(e) => errors.push(e),
        }
    }
    if let Some((_, line)) = open_ifs.first().filter(|_| !stopped) {
        errors.push(err(*line, "if without a matching endif"));
    }
    errors.append(&mut ll.errors);
    ops
}

#[derive(Debug)]
struct CidrCond {
    addr: u128,
    len: u8,
    v4: bool,
    negate: bool,
}

impl CidrCond {
    fn matches(&self, ip: IpAddr) -> bool {
        let hit = match (ip, self.v4) {
            (IpAddr::V4(a), true) => mask_eq(u128::from(u32::from(a)), self.addr, self.len, 32),
            (IpAddr::V6(a), false) => mask_eq(u128::from(a), self.addr, self.len, 128),
            _ => false,
        };
        hit != self.negate
    }
}

fn mask_eq(a: u128, net: u128, len: u8, width: u32) -> bool {
    let host = width.saturating_sub(u32::from(len));
    let mask = if host >= 128 { 0 } else { u128::MAX << host };
    (a & mask) == net
}

/// The key of a cidr lookup; IPv4-mapped IPv6 becomes IPv4 (what Postfix's smtpd reports).
fn parse_key_ip(key: &str) -> Option<IpAddr> {
    let ip = crate::config::value::parse_ip(key.trim())?;
    Some(match ip {
        IpAddr::V6(a) => a.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    })
}

fn parse_cidr_cond(path: &Path, line: usize, s: &str, warnings: &mut Vec<TableError>) -> CondParse<CidrCond> {
    let (pat, rest) = match s.split_once(|c: char| c.is_whitespace()) {
        Some((p, r)) => (p, r.trim()),
        None => (s, ""),
    };
    let (negate, net) = match pat.strip_prefix('!') {
        Some(n) => (true, n),
        None => (false, pat),
    };
    let (ip, len) = crate::config::value::parse_network(net).map_err(|e| TableError {
        file: path.to_path_buf(),
        line,
        msg: e,
    })?;
    if crate::config::value::has_host_bits(ip, len) {
        let masked = match ip {
            IpAddr::V4(a) => {
                let m = if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len)) };
                std::net::Ipv4Addr::from(u32::from(a) & m).to_string()
            }
            IpAddr::V6(a) => {
                let m = if len == 0 {
                    0
                } else {
                    u128::MAX << (128 - u32::from(len))
                };
                std::net::Ipv6Addr::from(u128::from(a) & m).to_string()
            }
        };
        warnings.push(TableError {
            file: path.to_path_buf(),
            line,
            msg: format!(
                "non-null host address bits in \"{net}\", perhaps you should use \"{masked}/{len}\" instead: \
                 skipping this rule"
            ),
        });
        return Ok(None);
    }
    let (addr, v4) = match ip {
        IpAddr::V4(a) => (u128::from(u32::from(a)), true),
        IpAddr::V6(a) => (u128::from(a), false),
    };
    Ok(Some((CidrCond { addr, len, v4, negate }, rest.to_string())))
}

#[derive(Debug)]
struct RegexCond {
    re: Regex,
    negate: bool,
    /// The result uses `$n`: captures are needed on a match.
    subst: bool,
}

impl RegexCond {
    /// None: no match. Some(None): match, no substitution. Some(Some(groups)): match
    /// with the groups the result refers to.
    fn matches(&self, key: &str) -> Option<Option<Vec<String>>> {
        if self.negate {
            return (!self.re.is_match(key)).then_some(None);
        }
        if !self.subst {
            return self.re.is_match(key).then_some(None);
        }
        let caps = self.re.captures(key)?;
        let groups = (0..caps.len().min(10))
            .map(|i| caps.get(i).map_or(String::new(), |m| m.as_str().to_string()))
            .collect();
        Some(Some(groups))
    }
}

/// `$n`, `${n}` and `$$` in a regexp result. Returns the highest group referenced, or
/// Err for a malformed `$`.
fn scan_subst(result: &str) -> Result<Option<usize>, String> {
    let b = result.as_bytes();
    let mut max: Option<usize> = None;
    let mut i = 0;
    while i < b.len() {
        if b.get(i) != Some(&b'$') {
            i += 1;
            continue;
        }
        match (b.get(i + 1), b.get(i + 2), b.get(i + 3)) {
            (Some(b'$'), _, _) => i += 2,
            (Some(d), _, _) if d.is_ascii_digit() => {
                max = max.max(Some(usize::from(d - b'0')));
                i += 2;
            }
            (Some(b'{'), Some(d), Some(b'}')) if d.is_ascii_digit() => {
                max = max.max(Some(usize::from(d - b'0')));
                i += 4;
            }
            _ => {
                return Err(format!(
                    "bad $ substitution in result \"{result}\" (use $1..$9, ${{1}}, $$)"
                ))
            }
        }
    }
    Ok(max)
}

fn substitute(result: &str, groups: &[String]) -> String {
    let b = result.as_bytes();
    let mut out = String::with_capacity(result.len());
    let mut i = 0;
    let mut lit = 0;
    let group = |d: u8| groups.get(usize::from(d - b'0')).map_or("", String::as_str);
    while i < b.len() {
        if b.get(i) != Some(&b'$') {
            i += 1;
            continue;
        }
        out.push_str(result.get(lit..i).unwrap_or(""));
        match (b.get(i + 1), b.get(i + 2), b.get(i + 3)) {
            (Some(b'$'), _, _) => {
                out.push('$');
                i += 2;
            }
            (Some(&d), _, _) if d.is_ascii_digit() => {
                out.push_str(group(d));
                i += 2;
            }
            (Some(b'{'), Some(&d), Some(b'}')) if d.is_ascii_digit() => {
                out.push_str(group(d));
                i += 4;
            }
            // scan_subst refused anything else at load; keep it literally.
            _ => {
                out.push('$');
                i += 1;
            }
        }
        lit = i;
    }
    out.push_str(result.get(lit..).unwrap_or(""));
    out
}

fn parse_regex_cond(
    path: &Path,
    line: usize,
    s: &str,
    _warnings: &mut Vec<TableError>,
    pcre: bool,
) -> CondParse<RegexCond> {
    let err = |msg: String| TableError {
        file: path.to_path_buf(),
        line,
        msg,
    };
    let (negate, s) = match s.strip_prefix('!') {
        Some(r) => (true, r),
        None => (false, s),
    };
    let mut chars = s.char_indices();
    let delim = match chars.next() {
        Some((_, c)) if !c.is_whitespace() && !c.is_alphanumeric() && c != '\\' => c,
        _ => return Err(err(format!("expected /pattern/flags, got \"{s}\""))),
    };
    // The pattern ends at the next unescaped delimiter; `\x` is kept as written.
    let start = delim.len_utf8();
    let mut end = None;
    let mut escaped = false;
    for (i, c) in chars {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == delim {
            end = Some(i);
            break;
        }
    }
    let Some(end) = end else {
        return Err(err(format!("missing closing {delim} after the pattern")));
    };
    let pattern = s.get(start..end).unwrap_or("");
    let after = s.get(end + delim.len_utf8()..).unwrap_or("");
    let (flags, result) = match after.find(|c: char| c.is_whitespace()) {
        Some(i) => (after.get(..i).unwrap_or(""), after.get(i..).unwrap_or("").trim()),
        None => (after, ""),
    };
    let mut b = RegexBuilder::new(pattern);
    let mut icase = true;
    let mut anchored = false;
    b.size_limit(TABLE_REGEX_COMPILED_BYTES_MAX)
        .dfa_size_limit(TABLE_REGEX_COMPILED_BYTES_MAX);
    for f in flags.chars() {
        match (f, pcre) {
            ('i', _) => icase = !icase,
            ('m', _) => {
                b.multi_line(true);
            }
            ('x', true) => {
                b.ignore_whitespace(true);
            }
            ('s', true) => {
                b.dot_matches_new_line(true);
            }
            ('U', true) => {
                b.swap_greed(true);
            }
            ('A', true) => anchored = true,
            ('E' | 'X', true) => {}
            ('x', false) => return Err(err("flag x (POSIX basic syntax) is not supported; drop it".into())),
            _ => return Err(err(format!("unknown flag {f:?} after the pattern"))),
        }
    }
    b.case_insensitive(icase);
    let anchored_pat;
    if anchored {
        anchored_pat = format!(r"\A(?:{pattern})");
        b = {
            let mut nb = RegexBuilder::new(&anchored_pat);
            nb.size_limit(TABLE_REGEX_COMPILED_BYTES_MAX)
                .dfa_size_limit(TABLE_REGEX_COMPILED_BYTES_MAX)
                .case_insensitive(icase)
                .multi_line(flags.contains('m'))
                .ignore_whitespace(flags.contains('x'))
                .dot_matches_new_line(flags.contains('s'))
                .swap_greed(flags.contains('U'));
            nb
        };
    }
    let re = b.build().map_err(|e| match e {
        regex::Error::CompiledTooBig(limit) => err(format!(
            "pattern is too expensive: its compiled form exceeds {limit} bytes; simplify it"
        )),
        other => err(format!("bad pattern /{pattern}/: {}", one_line(&other.to_string()))),
    })?;
    let max = scan_subst(result).map_err(err)?;
    if let Some(n) = max {
        if negate {
            return Err(err(format!("${n} in the result of a negated (!) pattern")));
        }
        // captures_len counts group 0.
        if n >= re.captures_len() {
            return Err(err(format!("${n} refers to a group the pattern does not have")));
        }
    }
    Ok(Some((
        RegexCond {
            re,
            negate,
            subst: max.is_some(),
        },
        result.to_string(),
    )))
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

// ---- the set of tables the server uses -------------------------------------------------

/// What identifies a table's files on disk; a change means reload.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct FileStamp {
    text: Option<(u64, Option<SystemTime>)>,
    index: Option<(u64, Option<SystemTime>)>,
}

fn file_stamp(ty: TableType, path: &Path) -> FileStamp {
    let st = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.len(), m.modified().ok()));
    FileStamp {
        text: st(path),
        index: if ty.is_text() && ty != TableType::Texthash {
            st(&index_path(path))
        } else {
            None
        },
    }
}

#[derive(Debug)]
struct Slot {
    spec: String,
    ty: TableType,
    path: PathBuf,
    stamp: FileStamp,
    /// The last good version; None when it never loaded.
    table: Option<Table>,
}

/// The tables named in the restriction lists, by spec. [`TableSet::refresh`] reloads a
/// table whose file or index changed; when the new version has errors the last good
/// version stays in use and the error is returned once (for the log).
#[derive(Debug)]
pub struct TableSet {
    config_dir: PathBuf,
    slots: Vec<Slot>,
}

impl TableSet {
    pub fn new(config_dir: &Path) -> TableSet {
        TableSet {
            config_dir: config_dir.to_path_buf(),
            slots: Vec::new(),
        }
    }

    /// Add `spec` (if new) and load it. Err: the spec is bad or the table did not load;
    /// it stays in the set (unavailable) and is retried by refresh when its file changes.
    pub fn add(&mut self, spec: &str) -> Result<(), TableError> {
        if self.slots.iter().any(|s| s.spec == spec) {
            return Ok(());
        }
        let (ty, path) = parse_spec(spec, &self.config_dir)?;
        let stamp = file_stamp(ty, &path);
        let loaded = Table::open_path(ty, &path);
        let (table, result) = match loaded {
            Ok(t) => (Some(t), Ok(())),
            Err(e) => (None, Err(e)),
        };
        self.slots.push(Slot {
            spec: spec.to_string(),
            ty,
            path,
            stamp,
            table,
        });
        result
    }

    /// The loaded table for `spec`; None when it was never added or never loaded.
    pub fn get(&self, spec: &str) -> Option<&Table> {
        self.slots
            .iter()
            .find(|s| s.spec == spec)
            .and_then(|s| s.table.as_ref())
    }

    /// Re-stat every table; reload those whose text or index changed. Returns the errors
    /// of failed reloads (each reported once per change; the old version stays in use)
    /// and the warnings of successful ones.
    pub fn refresh(&mut self) -> Vec<TableError> {
        let mut out = Vec::new();
        for slot in &mut self.slots {
            let now = file_stamp(slot.ty, &slot.path);
            if now == slot.stamp {
                continue;
            }
            slot.stamp = now;
            match Table::open_path(slot.ty, &slot.path) {
                Ok(t) => {
                    out.extend(t.warnings.iter().cloned());
                    slot.table = Some(t);
                }
                Err(mut e) => {
                    if slot.table.is_some() {
                        e.msg.push_str("; keeping the last good version");
                    }
                    out.push(e);
                }
            }
        }
        out
    }

    /// Specs in the set.
    pub fn specs(&self) -> impl Iterator<Item = &str> {
        self.slots.iter().map(|s| s.spec.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;

    fn t(ty: TableType, text: &str) -> Table {
        Table::parse(ty, Path::new("t"), text).unwrap()
    }

    fn e(ty: TableType, text: &str) -> TableError {
        Table::parse(ty, Path::new("t"), text).unwrap_err()
    }

    fn get(table: &Table, k: &str) -> Option<String> {
        table.lookup(k).map(|c| c.into_owned())
    }

    #[test]
    fn text_map_basics() {
        let m = t(
            TableType::Hash,
            "# comment\nExample.COM  REJECT  spam here \n\n  # indented comment\nuser@ OK\n1.2.3 550 go\n  away\r\nb\tvalue with\ttab\n",
        );
        assert_eq!(get(&m, "example.com").as_deref(), Some("REJECT  spam here"));
        assert_eq!(get(&m, "EXAMPLE.com").as_deref(), Some("REJECT  spam here"));
        assert_eq!(get(&m, "user@").as_deref(), Some("OK"));
        assert_eq!(get(&m, "1.2.3").as_deref(), Some("550 go away"));
        assert_eq!(get(&m, "b").as_deref(), Some("value with\ttab"));
        assert_eq!(get(&m, "nothing"), None);
        assert_eq!(get(&m, ""), None);
        assert_eq!(m.len(), 4);
        assert!(!m.is_pattern());
    }

    #[test]
    fn text_map_errors_and_duplicates() {
        let err = e(TableType::Hash, "a OK\nlonely\nc OK\n");
        assert_eq!((err.line, err.msg.contains("key whitespace value")), (2, true), "{err}");
        let err = e(TableType::Hash, "  starts indented\n");
        assert_eq!(err.line, 1);
        let m = t(TableType::Hash, "dup first\nDUP second\n");
        assert_eq!(get(&m, "dup").as_deref(), Some("first"));
        assert_eq!(m.warnings.len(), 1);
        assert_eq!(m.warnings[0].line, 2);
        let long = format!("k {}\n", "v".repeat(TABLE_LINE_BYTES_MAX + 1));
        assert_eq!(e(TableType::Hash, &long).line, 1);
    }

    #[test]
    fn every_error_is_reported() {
        let errs = Table::parse_all(TableType::Hash, Path::new("t"), "a OK\nb\n  \nc OK\nd\n").unwrap_err();
        assert_eq!(errs.iter().map(|e| e.line).collect::<Vec<_>>(), vec![2, 5]);
        let errs = Table::parse_all(
            TableType::Regexp,
            Path::new("t"),
            "if /(/\n/a/ OK\nendif\n/b/q OK\nendif\n",
        )
        .unwrap_err();
        assert_eq!(errs.iter().map(|e| e.line).collect::<Vec<_>>(), vec![1, 4, 5]);
    }

    #[test]
    fn unicode_keys_fold() {
        // Same-length fold in place, a longer fold (İ → i̇) appended, continuation appended.
        let m = t(
            TableType::Hash,
            "ÄBC@Example.org OK\nİX one\nkey first\n  second\nZ last\n",
        );
        assert_eq!(get(&m, "äbc@example.ORG").as_deref(), Some("OK"));
        assert_eq!(get(&m, "i\u{307}x").as_deref(), Some("one"));
        assert_eq!(get(&m, "İX").as_deref(), Some("one"));
        assert_eq!(get(&m, "KEY").as_deref(), Some("first second"));
        assert_eq!(get(&m, "z").as_deref(), Some("last"));
        assert_eq!(m.len(), 4);
    }

    #[test]
    fn cidr_first_match_and_if() {
        let c = t(
            TableType::Cidr,
            "127.1.2.4 OK\n127.1.2.0/24 550 Go away\n[2001:db8::]/32 REJECT v6\n::1 OK\n\
             if 10.0.0.0/8\n10.1.0.0/16 DUNNO\n!10.2.0.0/16 HOLD\nendif\n0.0.0.0/0 DEFER\n",
        );
        assert_eq!(get(&c, "127.1.2.4").as_deref(), Some("OK"));
        assert_eq!(get(&c, "127.1.2.5").as_deref(), Some("550 Go away"));
        assert_eq!(get(&c, "::ffff:127.1.2.4").as_deref(), Some("OK"));
        assert_eq!(get(&c, "2001:db8:1::7").as_deref(), Some("REJECT v6"));
        assert_eq!(get(&c, "[::1]").as_deref(), Some("OK"));
        assert_eq!(get(&c, "10.1.9.9").as_deref(), Some("DUNNO"));
        assert_eq!(get(&c, "10.3.0.1").as_deref(), Some("HOLD"));
        assert_eq!(get(&c, "10.2.0.1").as_deref(), Some("DEFER"));
        assert_eq!(get(&c, "192.0.2.1").as_deref(), Some("DEFER"));
        assert_eq!(get(&c, "2001:db9::1"), None);
        assert_eq!(get(&c, "not-an-ip"), None);
        assert_eq!(get(&c, "1.2.3.4.5"), None);
    }

    #[test]
    fn cidr_host_bits_warn_and_skip() {
        let c = t(TableType::Cidr, "1.2.3.4/24 REJECT\n1.2.3.4 OK\n");
        assert_eq!(c.warnings.len(), 1);
        assert!(
            c.warnings[0]
                .msg
                .contains("non-null host address bits in \"1.2.3.4/24\", perhaps you should use \"1.2.3.0/24\""),
            "{}",
            c.warnings[0]
        );
        assert_eq!(get(&c, "1.2.3.5"), None);
        assert_eq!(get(&c, "1.2.3.4").as_deref(), Some("OK"));
    }

    #[test]
    fn cidr_errors() {
        for (text, line) in [
            ("1.2.3.0/33 OK\n", 1),
            ("ok\nhost.example OK\n", 1),
            ("1.2.3.4\n", 1),
            ("if 1.2.3.0/24\n1.2.3.4 OK\n", 1),
            ("1.2.3.4 OK\nendif\n", 2),
            ("if 1.2.3.0/24 extra\nendif\n", 1),
        ] {
            assert_eq!(e(TableType::Cidr, text).line, line, "{text:?}");
        }
    }

    #[test]
    fn regexp_rules_flags_and_substitution() {
        let r = t(
            TableType::Regexp,
            "/^(.*)@example\\.com$/ REJECT user $1 not here\n\
             /^Case@x$/i DUNNO\n\
             !/@/ REJECT no domain\n\
             if /\\.org$/\n/^postmaster@/ OK\n/^(a)(b)?c@/ 550 ${1}-$2-$$\nendif\n\
             #/never/ OK\n/^x|y$/ OK\n",
        );
        assert_eq!(get(&r, "Joe@EXAMPLE.com").as_deref(), Some("REJECT user Joe not here"));
        assert_eq!(get(&r, "case@x"), None); // i toggled: case-sensitive
        assert_eq!(get(&r, "Case@x").as_deref(), Some("DUNNO"));
        assert_eq!(get(&r, "nodomain").as_deref(), Some("REJECT no domain"));
        assert_eq!(get(&r, "postmaster@a.org").as_deref(), Some("OK"));
        assert_eq!(get(&r, "postmaster@a.net"), None);
        assert_eq!(get(&r, "ac@a.org").as_deref(), Some("550 a--$"));
        assert_eq!(get(&r, "q@y").as_deref(), Some("OK"));
        assert!(r.is_pattern());
    }

    #[test]
    fn pcre_flags_and_delimiters() {
        let r = t(TableType::Pcre, "/a b #c/x OK\n%^foo.bar%s DUNNO\n|^(x+)|U HOLD $1\n");
        assert_eq!(get(&r, "ab").as_deref(), Some("OK"));
        assert_eq!(get(&r, "foo\nbar").as_deref(), Some("DUNNO"));
        assert_eq!(get(&r, "xxx").as_deref(), Some("HOLD x"));
        let a = t(TableType::Pcre, "/b/A OK\n");
        assert_eq!(get(&a, "ab"), None);
        assert_eq!(get(&a, "ba").as_deref(), Some("OK"));
    }

    #[test]
    fn regexp_errors() {
        for (ty, text, line) in [
            (TableType::Regexp, "/a/ OK\n/(unclosed/ OK\n", 2),
            (TableType::Regexp, "/a/x OK\n", 1),
            (TableType::Regexp, "/a/q OK\n", 1),
            (TableType::Regexp, "/a OK\n", 1),
            (TableType::Regexp, "/a/\n", 1),
            (TableType::Regexp, "/(a)/ $2\n", 1),
            (TableType::Regexp, "!/(a)/ $1\n", 1),
            (TableType::Regexp, "/a/ bad $x\n", 1),
            (TableType::Regexp, "/(a)\\1/ OK\n", 1),
            (TableType::Pcre, "/(?=a)/ OK\n", 1),
            (TableType::Regexp, "if /a/\n/b/ OK\n", 1),
            (TableType::Regexp, "endif\n", 1),
            (TableType::Regexp, "a/b/ OK\n", 1),
        ] {
            let err = e(ty, text);
            assert_eq!(err.line, line, "{text:?}: {err}");
        }
    }

    #[test]
    fn expensive_regex_refused_at_load() {
        let err = e(TableType::Regexp, "/ok/ OK\n/(\\w{100}){100}/ REJECT\n");
        assert_eq!(err.line, 2, "{err}");
        assert!(err.msg.contains("too expensive"), "{err}");
        let err = e(TableType::Pcre, "/a{1000}{1000}/ OK\n");
        assert!(err.msg.contains("too expensive"), "{err}");
    }

    #[test]
    fn if_depth_and_rule_count_bounded() {
        let deep = "if /a/\n".repeat(TABLE_IF_DEPTH_MAX + 1) + &"endif\n".repeat(TABLE_IF_DEPTH_MAX + 1);
        assert!(e(TableType::Regexp, &deep).msg.contains("nested"));
        let many = "1.2.3.4 OK\n".repeat(TABLE_PATTERN_RULES_MAX + 1);
        assert!(e(TableType::Cidr, &many).msg.contains("more than"));
    }

    #[test]
    fn specs() {
        let d = Path::new("/etc/poshta");
        assert_eq!(
            parse_spec("cidr:access", d).unwrap(),
            (TableType::Cidr, PathBuf::from("/etc/poshta/access"))
        );
        assert_eq!(parse_spec("/x/y", d).unwrap(), (TableType::Hash, PathBuf::from("/x/y")));
        assert_eq!(
            parse_spec("LMDB:/x", d).unwrap(),
            (TableType::Lmdb, PathBuf::from("/x"))
        );
        assert!(parse_spec("mysql:/x", d).unwrap_err().msg.contains("unsupported"));
        assert!(parse_spec("hash:", d).is_err());
        assert_eq!(index_path(Path::new("/e/access")), PathBuf::from("/e/access.poshta.db"));
    }

    #[test]
    fn bad_utf8_reports_line() {
        let dir = tempdir("utf8");
        let p = dir.join("m");
        std::fs::write(&p, b"a OK\nb \xff\n").unwrap();
        let err = Table::open_path(TableType::Hash, &p).unwrap_err();
        assert_eq!(err.line, 2, "{err}");
    }

    /// Removed when the test ends, pass or fail.
    fn tempdir(tag: &str) -> TempDir {
        TempDir::new(&format!("poshta-table-{tag}-{}", std::process::id()))
    }

    #[test]
    fn index_used_only_when_it_matches_the_text() {
        let dir = tempdir("index");
        let p = dir.join("access");
        std::fs::write(&p, "a@b REJECT\nc OK\n").unwrap();
        let spec = format!("hash:{}", p.display());
        let c = compile(&spec, &dir).unwrap();
        assert_eq!(c.entries, 2);
        assert_eq!(c.index.as_deref(), Some(index_path(&p).as_path()));
        let t1 = Table::open(&spec, &dir).unwrap();
        assert!(t1.from_index);
        assert_eq!(get(&t1, "A@B").as_deref(), Some("REJECT"));
        // Text changed after postmap: the stale index is ignored.
        std::fs::write(&p, "a@b OK\n").unwrap();
        let t2 = Table::open(&spec, &dir).unwrap();
        assert!(!t2.from_index);
        assert_eq!(get(&t2, "a@b").as_deref(), Some("OK"));
        // A corrupt index is ignored too.
        compile(&spec, &dir).unwrap();
        let mut bytes = std::fs::read(index_path(&p)).unwrap();
        let n = bytes.len();
        bytes.truncate(n - 2);
        std::fs::write(index_path(&p), &bytes).unwrap();
        let t3 = Table::open(&spec, &dir).unwrap();
        assert!(!t3.from_index);
        assert_eq!(get(&t3, "a@b").as_deref(), Some("OK"));
        // texthash never writes or uses an index.
        let th = compile(&format!("texthash:{}", p.display()), &dir).unwrap();
        assert!(th.index.is_none());
    }

    #[test]
    fn index_rejects_unsorted_or_out_of_range_offsets() {
        let bad = TextMap {
            arena: "bbaa".into(),
            entries: vec![[0, 1, 1, 2], [2, 3, 3, 4]],
        };
        assert!(!bad.validate());
        let oob = TextMap {
            arena: "ab".into(),
            entries: vec![[0, 1, 1, 9]],
        };
        assert!(!oob.validate());
        let utf = TextMap {
            arena: "äb".into(),
            entries: vec![[0, 1, 1, 3]],
        };
        assert!(!utf.validate());
        let good = TextMap {
            arena: "akbv".into(),
            entries: vec![[0, 1, 1, 2], [2, 3, 3, 4]],
        };
        assert!(good.validate());
        assert_eq!(good.get("B"), Some("v"));
    }

    #[test]
    fn table_set_keeps_last_good_version() {
        let dir = tempdir("set");
        let p = dir.join("access");
        std::fs::write(&p, "1.2.3.4 REJECT\n").unwrap();
        let mut set = TableSet::new(&dir);
        set.add("cidr:access").unwrap();
        assert_eq!(
            set.get("cidr:access").and_then(|t| get(t, "1.2.3.4")).as_deref(),
            Some("REJECT")
        );
        assert!(set.refresh().is_empty());
        // A broken edit: the error is reported once, the old table stays.
        std::fs::write(&p, "1.2.3.4 OK\n1.2.3.999 OK\n").unwrap();
        let errs = set.refresh();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].line, 2);
        assert!(errs[0].to_string().contains("access:2:"), "{}", errs[0]);
        assert!(errs[0].msg.contains("keeping the last good version"));
        assert_eq!(
            set.get("cidr:access").and_then(|t| get(t, "1.2.3.4")).as_deref(),
            Some("REJECT")
        );
        assert!(set.refresh().is_empty());
        // Fixed: the new version is picked up without a restart.
        std::fs::write(&p, "1.2.3.4 OK\n").unwrap();
        assert!(set.refresh().is_empty());
        assert_eq!(
            set.get("cidr:access").and_then(|t| get(t, "1.2.3.4")).as_deref(),
            Some("OK")
        );
        // A table that never loaded is unavailable, and loads once it appears.
        assert!(set.add("hash:missing").is_err());
        assert!(set.get("hash:missing").is_none());
        std::fs::write(dir.join("missing"), "k v\n").unwrap();
        assert!(set.refresh().is_empty());
        assert_eq!(set.get("hash:missing").and_then(|t| get(t, "K")).as_deref(), Some("v"));
    }
}
