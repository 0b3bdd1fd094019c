//! `poshta postconf`: print main.cf parameters like Postfix's postconf(1).
//!
//! - no names: every parameter, sorted by name; names: those, in the order given;
//! - `-n`: only parameters set in main.cf; `-d`: the defaults instead;
//! - `-x`: expand `$name` references (default: print values as written, like Postfix).
//!
//! Output is `name = value` (`name =` when empty). An unknown name gets
//! `postconf: warning: NAME: unknown parameter` on stderr and the rest are still printed;
//! like Postfix the exit status stays 0. Problems in main.cf go to stderr. Exit 1 only
//! when main.cf exists but cannot be read.

use crate::config::{self, Env, Param};
use std::io::Write;

pub fn run(args: super::PostconfArgs) -> i32 {
    let path = config::config_path(args.config.as_deref());
    let env = Env::system();
    let loaded = if args.defaults {
        config::load_defaults(&path, &env)
    } else {
        match config::load_env(&path, &env) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("postconf: fatal: open {}: {e}", path.display());
                return 1;
            }
        }
    };
    for d in &loaded.diagnostics {
        eprintln!("postconf: {d}");
    }
    let mut out = String::new();
    let show = |p: &Param, out: &mut String| {
        if args.non_default && p.set.is_none() {
            return;
        }
        let v = match (args.defaults, args.expand) {
            (true, false) => p.default.as_str(),
            (true, true) => p.default_expanded.as_str(),
            (false, false) => p.value(),
            (false, true) => p.expanded.as_str(),
        };
        out.push_str(&line(&p.name, v));
    };
    if args.keys.is_empty() {
        for p in &loaded.params {
            show(p, &mut out);
        }
    } else {
        for name in &args.keys {
            match loaded.param(name) {
                Some(p) => show(p, &mut out),
                None => eprintln!("postconf: warning: {name}: unknown parameter"),
            }
        }
    }
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_all(out.as_bytes()).and_then(|()| stdout.flush()) {
        // A closed pipe (`postconf | head`) is not worth more than a note.
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            eprintln!("postconf: fatal: write: {e}");
            return 1;
        }
    }
    0
}

/// `name = value`, or `name =` when the value is empty (as Postfix prints it).
fn line(name: &str, value: &str) -> String {
    if value.is_empty() {
        format!("{name} =\n")
    } else {
        format!("{name} = {value}\n")
    }
}
