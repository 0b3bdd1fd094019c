//! `poshta postmap [-q KEY] TABLE`: validate a lookup table and write its compiled index,
//! like Postfix's postmap(1).
//!
//! - `TABLE` is `[type:]file`; without a type it is `hash:` (Postfix's
//!   default_database_type). A relative file name is relative to the current directory,
//!   as with Postfix's postmap.
//! - Without `-q`: the file is read and checked; every error is printed as
//!   `postmap: error: FILE:LINE: message` and the exit status is 1 (no index is written).
//!   Warnings (duplicate keys, CIDR host bits) are printed and do not fail. For
//!   hash/btree/lmdb/cdb maps the index `FILE.poshta.db` is written (temporary file,
//!   fsync, rename); cidr/regexp/pcre tables and texthash maps are only checked. The
//!   server never needs the index: it reads the text, and uses the index only when it was
//!   built from the text as it is now.
//! - `-q KEY`: look KEY up the way the table answers the server (text maps: exact key,
//!   case-folded; cidr: an IP address; regexp/pcre: the whole string with `$n`
//!   substitution) and print the value. Like Postfix's `postmap -q`, this is one plain
//!   lookup: no access(5) search of parent domains, address parts or shorter networks.
//!   Exit 0 when found, 1 when not found or the table has errors.

use crate::policy::table::{compile, Table};
use std::path::Path;

pub fn run(args: super::PostmapArgs) -> i32 {
    let cwd = Path::new(".");
    if let Some(key) = args.query {
        return match Table::open(&args.table, cwd) {
            Ok(t) => match t.lookup(&key) {
                Some(v) => {
                    println!("{v}");
                    0
                }
                None => 1,
            },
            Err(e) => {
                eprintln!("postmap: error: {e}");
                1
            }
        };
    }
    match compile(&args.table, cwd) {
        Ok(c) => {
            for w in &c.warnings {
                eprintln!("postmap: warning: {w}");
            }
            0
        }
        Err(errors) => {
            for e in &errors {
                eprintln!("postmap: error: {e}");
            }
            1
        }
    }
}
