//! Command-line entry: `argv[0]` dispatch (sendmail, mailq, newaliases, postmap) and argh
//! subcommands. Every subcommand takes `-c PATH` (main.cf); POSHTA_CONFIG does the same.

use argh::FromArgs;
use std::path::PathBuf;

pub mod check;
pub mod init;
pub mod install;
pub mod newaliases;
pub mod postconf;
pub mod postmap;
pub mod queue;
pub mod sendmail;
pub mod sendmail_msg;
pub mod serve;
pub mod user;

/// poshta: a small complete mail system in one process.
#[derive(FromArgs, Debug)]
pub struct Top {
    #[argh(subcommand)]
    pub cmd: Cmd,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub enum Cmd {
    Serve(ServeArgs),
    Init(InitArgs),
    Check(CheckArgs),
    Postconf(PostconfArgs),
    Postmap(PostmapArgs),
    User(UserArgs),
    Queue(QueueArgs),
    Install(InstallArgs),
}

/// Run the mail server (SMTP in, queue, local delivery).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "serve")]
pub struct ServeArgs {
    /// main.cf to use (default: $POSHTA_CONFIG, /etc/poshta/main.cf as root, ./poshta/main.cf)
    #[argh(option, short = 'c')]
    pub config: Option<PathBuf>,
}

/// Set up a new mail system: a commented main.cf, the queue and mail directories and a
/// self-signed TLS certificate. Nothing that exists is overwritten.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "init")]
pub struct InitArgs {
    /// main.cf to write (default: $POSHTA_CONFIG, /etc/poshta/main.cf as root, ./poshta/main.cf)
    #[argh(option, short = 'c')]
    pub config: Option<PathBuf>,
    /// the mail domain (mydomain), e.g. lab.lan
    #[argh(option)]
    pub domain: String,
    /// this host's name (myhostname; default: the system host name if it has a dot, else mail.DOMAIN)
    #[argh(option)]
    pub hostname: Option<String>,
}

/// Validate main.cf and the files it names (like `postfix check`).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "check")]
pub struct CheckArgs {
    /// main.cf to use
    #[argh(option, short = 'c')]
    pub config: Option<PathBuf>,
}

/// Print settings like Postfix's postconf: all, or the named keys.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "postconf")]
pub struct PostconfArgs {
    /// main.cf to use
    #[argh(option, short = 'c')]
    pub config: Option<PathBuf>,
    /// show only settings that differ from the defaults (set in main.cf)
    #[argh(switch, short = 'n')]
    pub non_default: bool,
    /// show the defaults instead of the effective values
    #[argh(switch, short = 'd')]
    pub defaults: bool,
    /// expand $name references in the values shown
    #[argh(switch, short = 'x')]
    pub expand: bool,
    /// key names to show
    #[argh(positional)]
    pub keys: Vec<String>,
}

/// Check a lookup table and write its compiled index (like Postfix's postmap); -q KEY
/// looks KEY up.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "postmap")]
pub struct PostmapArgs {
    /// print the value of KEY (exit 1 when not found); no index is written
    #[argh(option, short = 'q')]
    pub query: Option<String>,
    /// the table: [type:]file, e.g. hash:/etc/poshta/access or cidr:access (default type hash)
    // The text above is argh's help for the argument, not a rustdoc link.
    #[allow(rustdoc::broken_intra_doc_links)]
    #[argh(positional)]
    pub table: String,
}

/// Manage mailbox users (the users file).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "user")]
pub struct UserArgs {
    #[argh(subcommand)]
    pub cmd: UserCmd,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub enum UserCmd {
    Add(UserAddArgs),
    Passwd(UserPasswdArgs),
    Del(UserDelArgs),
    List(UserListArgs),
}

/// Add a mailbox user (asks for the password, or reads it from stdin).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "add")]
pub struct UserAddArgs {
    /// main.cf to use
    #[argh(option, short = 'c')]
    pub config: Option<PathBuf>,
    /// read the password from the first line of standard input
    #[argh(switch)]
    pub password_stdin: bool,
    /// a system user (passwd entry): mail stays in the system mailbox, no Maildir is made
    #[argh(switch)]
    pub system: bool,
    /// user name (the local part of the address)
    #[argh(positional)]
    pub name: String,
}

/// Change a mailbox user's password.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "passwd")]
pub struct UserPasswdArgs {
    /// main.cf to use
    #[argh(option, short = 'c')]
    pub config: Option<PathBuf>,
    /// read the password from the first line of standard input
    #[argh(switch)]
    pub password_stdin: bool,
    /// user name
    #[argh(positional)]
    pub name: String,
}

/// Remove a mailbox user (the Maildir is kept).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "del")]
pub struct UserDelArgs {
    /// main.cf to use
    #[argh(option, short = 'c')]
    pub config: Option<PathBuf>,
    /// user name
    #[argh(positional)]
    pub name: String,
}

/// List mailbox users.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "list")]
pub struct UserListArgs {
    /// main.cf to use
    #[argh(option, short = 'c')]
    pub config: Option<PathBuf>,
}

/// List or control the mail queue, like Postfix's mailq / postqueue / postsuper / postcat:
/// `queue` (list), `queue flush`, `queue hold ID|ALL...`, `queue release ID|ALL...`,
/// `queue delete ID|ALL...`, `queue show ID`. All but the listing need the running daemon.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "queue")]
pub struct QueueArgs {
    /// main.cf to use
    #[argh(option, short = 'c')]
    pub config: Option<PathBuf>,
    /// action (list, flush, hold, release, delete, show) and its queue ids
    #[argh(positional)]
    pub args: Vec<String>,
}

/// Put poshta in place of the system MTA's commands: /usr/sbin/sendmail, /usr/bin/mailq and
/// /usr/bin/newaliases become links to this binary (another MTA's files are refused unless
/// --force).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "install")]
pub struct InstallArgs {
    /// make the links
    #[argh(switch)]
    pub links: bool,
    /// replace files that are not poshta (kept as PATH.poshta-orig)
    #[argh(switch)]
    pub force: bool,
    /// install under this directory instead of /
    #[argh(option)]
    pub root: Option<PathBuf>,
}

/// Parse argv and run; returns the exit status.
pub fn main() -> i32 {
    // One binary, several names (Postfix's commands): argv[0] picks the program.
    let args: Vec<String> = std::env::args().collect();
    let name = args
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .and_then(|n| n.to_str())
        .unwrap_or("poshta")
        .to_string();
    if matches!(name.as_str(), "sendmail" | "mailq" | "newaliases") {
        // The Sendmail-compatible commands (sendmail -bp = mailq, -bi = newaliases): their
        // own option syntax and main.cf lookup (cli::sendmail).
        return sendmail::main(&name, args.get(1..).unwrap_or(&[]));
    }
    if name == "postmap" {
        let rest: Vec<&str> = args.iter().skip(1).map(String::as_str).collect();
        return match PostmapArgs::from_args(&["postmap"], &rest) {
            Ok(a) => postmap::run(a),
            Err(e) => {
                let (text, code) = match e.status {
                    Ok(()) => (e.output, 0),
                    Err(()) => (e.output, 64), // EX_USAGE
                };
                if code == 0 {
                    println!("{text}");
                } else {
                    eprintln!("{text}");
                }
                code
            }
        };
    }
    // Internal programs of privilege separation (not for people: no help text).
    match args.get(1).map(String::as_str) {
        Some("delivery-helper") => {
            let Some(cf) = args.get(3).filter(|_| args.get(2).map(String::as_str) == Some("-c")) else {
                eprintln!("poshta delivery-helper: usage: poshta delivery-helper -c MAIN.CF");
                return 64;
            };
            return crate::privsep::helper::main(std::path::Path::new(cf));
        }
        Some("delivery-agent") => return crate::delivery::local::agent_main(),
        Some("maildrop-agent") => return crate::mailbox::agent::agent_main(),
        _ => {}
    }
    let top: Top = argh::from_env();
    match top.cmd {
        Cmd::Serve(a) => serve::run(a),
        Cmd::Init(a) => init::run(a),
        Cmd::Check(a) => check::run(a),
        Cmd::Postconf(a) => postconf::run(a),
        Cmd::Postmap(a) => postmap::run(a),
        Cmd::User(a) => user::run(a),
        Cmd::Queue(a) => queue::run(a),
        Cmd::Install(a) => install::run(a),
    }
}
