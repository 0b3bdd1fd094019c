//! The daemon's local control socket: `poshta queue` asks the running daemon here, so
//! in-flight state is exact and hold / release / delete / flush act on the live queue.
//!
//! # Socket
//!
//! A Unix stream socket at `$queue_directory/control`, mode 0666 in the 0711 queue directory.
//! It is bound at start, after the queue lock is taken (so a leftover socket file can only be
//! a stale one from an earlier run, and is removed first). The file stays behind at exit; a
//! client then gets "connection refused", which it reports as "the mail system is down".
//!
//! Access control uses the caller's uid from the kernel (SO_PEERCRED), with Postfix's
//! defaults: any local user may list the queue (`mailq`, authorized_mailq_users =
//! static:anyone) and flush it (`postqueue -f`, authorized_flush_users = static:anyone);
//! SHOW, HOLD, RELEASE, DELETE and RELOAD (postcat, postsuper, `postfix reload`) need root or
//! the daemon's own user.
//!
//! Clients are served one at a time (a control client is a person or a script, and this
//! bounds the memory); each one has limits::CONTROL_CLIENT_TIMEOUT_SECS to send its request,
//! and as long again for each write of the response.
//!
//! # Protocol
//!
//! One request per connection: one line of at most limits::CONTROL_REQUEST_BYTES_MAX bytes
//! (including the LF), words separated by spaces:
//!
//! ```text
//! request  = "LIST" / "FLUSH" / "RELOAD" / "SHOW" SP id
//!          / ("HOLD" / "RELEASE" / "DELETE") 1*(SP target) LF
//! target   = id / "ALL"
//! id       = 1*16HEXDIG          ; a queue id as mailq prints it
//! response = "OK" SP length LF body   ; body: exactly `length` bytes
//!          / "ERR" SP text LF         ; nothing done (bad request, queue write failed)
//! ```
//!
//! Bodies:
//! - `LIST`: the listing in postqueue -p format (`cli::queue::format_mailq`): `!` after a
//!   held message's id, `*` after one being delivered; then the files waiting in maildrop/
//!   (`net::pickup::list_waiting`), each with the reason `(waiting for pickup)`.
//! - `FLUSH`: `N\n`, the number of messages that became due (postqueue -f). Not logged.
//! - `RELOAD`: `reloaded\n`, once main.cf, the users file, the aliases and the certificate
//!   were read again, the very same reload as `kill -HUP` (`net::reload`), done before the
//!   reply so that the caller (`poshta user`, `newaliases`) returns when the daemon uses
//!   the change. A configuration the daemon cannot use: `ERR` with the reason (the running
//!   configuration is kept, as on SIGHUP). The delivery helper reloads right after.
//! - `HOLD` / `RELEASE` / `DELETE`: one line per message, `+ ID: held` (`released`,
//!   `deleted`, `deleted after the current delivery attempt`) or `- ID: no such message`.
//!   The records are durable (fsynced) before the response is sent. `ALL` means every
//!   message queued at that moment.
//! - `SHOW`: postcat-like: `*** ENVELOPE RECORDS ID ***`, `message_size:`,
//!   `message_arrival_time:`, `client:`, `sender:`, one `recipient:` line per recipient
//!   (with its state when not pending), `*** MESSAGE CONTENTS ID ***`, the body bytes as
//!   queued, then `\n*** MESSAGE FILE END ID ***\n`. If the body cannot be read, the
//!   connection is closed short of `length`, which the client reports as an error.
//!
//! Deleting a message that is being delivered: its `Deleted` record is written at once (it
//! stays deleted after a restart), it is no longer listed, and the attempt in progress
//! completes (it may still deliver); see `queue::Deletion`.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use smol::io::{AsyncReadExt, AsyncWriteExt};
use smol::net::unix::UnixStream;
use smol::{Async, Timer};

use super::Ctx;
use crate::limits;
use crate::mlog;
use crate::queue::{Deletion, QueueError, QueueId};

/// The socket's file name in the queue directory.
pub const SOCKET_NAME: &str = "control";

/// The socket's path for a queue directory.
pub fn socket_path(queue_dir: &Path) -> PathBuf {
    queue_dir.join(SOCKET_NAME)
}

/// Bind the control socket (removing a stale one) and make it 0666. Call after the queue
/// is open: its lock guarantees no other daemon uses this directory.
pub fn bind(queue_dir: &Path) -> std::io::Result<Async<UnixListener>> {
    // Who may do what is decided per request from the caller's uid (module doc).
    Async::new(bind_public_socket(&socket_path(queue_dir))?)
}

/// Bind a Unix socket at `path` that every local user may connect to (0666), removing a
/// stale one first (the caller holds the queue lock: no live daemon owns it).
pub fn bind_public_socket(path: &Path) -> std::io::Result<UnixListener> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let l = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    Ok(l)
}

/// Accept and serve control clients, one at a time, for the life of the process.
pub async fn serve(ctx: Rc<Ctx>, listener: Async<UnixListener>) {
    // Runs for the life of the process; every client is bounded in time.
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                mlog!("control", "warning: accept: {e}");
                // EMFILE and the like: do not spin.
                Timer::after(Duration::from_millis(100)).await;
                continue;
            }
        };
        // No credentials: treated as an ordinary user.
        let uid = rustix::net::sockopt::socket_peercred(stream.get_ref())
            .map(|c| c.uid.as_raw())
            .unwrap_or(u32::MAX);
        let privileged = uid == 0 || uid == rustix::process::geteuid().as_raw();
        let stream = UnixStream::from(stream);
        client(&ctx, stream, uid, privileged).await;
    }
}

fn timeout() -> Duration {
    Duration::from_secs(limits::CONTROL_CLIENT_TIMEOUT_SECS)
}

/// Read the request line: at most limits::CONTROL_REQUEST_BYTES_MAX bytes, within the timeout.
async fn read_request(stream: &mut UnixStream) -> Result<String, &'static str> {
    let read = async {
        let mut buf = Vec::with_capacity(256);
        let mut chunk = [0u8; 512];
        loop {
            if let Some(end) = buf.iter().position(|&b| b == b'\n') {
                buf.truncate(end);
                return String::from_utf8(buf).map_err(|_| "request is not UTF-8");
            }
            if buf.len() >= limits::CONTROL_REQUEST_BYTES_MAX {
                return Err("request too long");
            }
            let room = (limits::CONTROL_REQUEST_BYTES_MAX - buf.len()).min(chunk.len());
            match stream.read(&mut chunk[..room]).await {
                Ok(0) | Err(_) => return Err("request incomplete"),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    smol::future::or(read, async {
        Timer::after(timeout()).await;
        Err("timeout reading the request")
    })
    .await
}

/// Write with the per-write timeout; false when the client is gone or too slow.
async fn send(stream: &mut UnixStream, data: &[u8]) -> bool {
    smol::future::or(async { stream.write_all(data).await.is_ok() }, async {
        Timer::after(timeout()).await;
        false
    })
    .await
}

async fn reply_ok(stream: &mut UnixStream, body: &[u8]) {
    let mut out = format!("OK {}\n", body.len()).into_bytes();
    out.extend_from_slice(body);
    let _ = send(stream, &out).await;
}

async fn reply_err(stream: &mut UnixStream, text: &str) {
    let _ = send(stream, format!("ERR {text}\n").as_bytes()).await;
}

/// A queue id as mailq prints it: 1 to 16 hex digits.
pub fn parse_id(s: &str) -> Option<QueueId> {
    if s.is_empty() || s.len() > 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(s, 16).ok().map(QueueId)
}

#[derive(Clone, Copy)]
enum Action {
    Hold,
    Release,
    Delete,
}

async fn client(ctx: &Rc<Ctx>, mut stream: UnixStream, uid: u32, privileged: bool) {
    let line = match read_request(&mut stream).await {
        Ok(l) => l,
        Err(why) => {
            mlog!("control", "warning: {why}");
            reply_err(&mut stream, why).await;
            return;
        }
    };
    let mut words = line.trim_end_matches('\r').split(' ').filter(|w| !w.is_empty());
    let verb = words.next().unwrap_or("").to_ascii_uppercase();
    let args: Vec<&str> = words.collect();
    let q = &ctx.queue;
    if !privileged && !matches!(verb.as_str(), "LIST" | "FLUSH") {
        mlog!(
            "control",
            "warning: uid={uid}: {verb} refused: only root or the mail system's user"
        );
        reply_err(
            &mut stream,
            "permission denied: only root or the mail system's user may do that",
        )
        .await;
        return;
    }
    match (verb.as_str(), args.as_slice()) {
        ("LIST", []) => {
            let msgs = q.list();
            // The daemon owns maildrop/; reading the heads may block (off the event loop).
            let dir = crate::net::pickup::maildrop_dir(&ctx.policy().settings.queue_directory);
            let dir2 = dir.clone();
            let maildrop = smol::unblock(move || crate::net::pickup::list_waiting(&dir2))
                .await
                .unwrap_or_else(|e| {
                    mlog!("control", "warning: list maildrop {}: {e}", dir.display());
                    Default::default()
                });
            let text = crate::cli::queue::format_mailq(&msgs, &maildrop, crate::cli::queue::WAITING_REASON);
            reply_ok(&mut stream, text.as_bytes()).await;
        }
        ("FLUSH", []) => {
            let n = q.flush(crate::time::now_unix());
            mlog!("control", "flush: {n} messages due now");
            reply_ok(&mut stream, format!("{n}\n").as_bytes()).await;
        }
        ("RELOAD", []) => {
            // The same reload as SIGHUP (net::reload), done before the reply: `poshta user add`
            // and newaliases return once the daemon uses the new users and aliases.
            mlog!("control", "reload requested");
            let config_file = ctx.config_file.clone();
            match super::reload(ctx, &config_file) {
                Ok(()) => reply_ok(&mut stream, b"reloaded\n").await,
                Err(e) => reply_err(&mut stream, &format!("reload failed, running configuration kept: {e}")).await,
            }
        }
        ("SHOW", [id]) => show(ctx, &mut stream, id).await,
        ("HOLD", [_, ..]) => act(ctx, &mut stream, Action::Hold, &args).await,
        ("RELEASE", [_, ..]) => act(ctx, &mut stream, Action::Release, &args).await,
        ("DELETE", [_, ..]) => act(ctx, &mut stream, Action::Delete, &args).await,
        _ => reply_err(&mut stream, "bad request").await,
    }
}

async fn act(ctx: &Rc<Ctx>, stream: &mut UnixStream, action: Action, args: &[&str]) {
    let q = &ctx.queue;
    // Targets: explicit ids in order (each reported), or every message for ALL.
    let mut targets: Vec<(String, Option<QueueId>)> = Vec::new();
    for a in args {
        if a.eq_ignore_ascii_case("ALL") {
            targets.extend(q.list().iter().map(|m| (m.qid.to_string(), Some(m.qid))));
        } else {
            targets.push((a.to_string(), parse_id(a)));
        }
    }
    let mut body = String::new();
    for (text, id) in targets {
        let Some(id) = id else {
            body.push_str(&format!("- {text}: no such message\n"));
            continue;
        };
        let done = match action {
            Action::Hold => q.hold(id).map(|()| "held"),
            Action::Release => q.release(id).map(|()| "released"),
            Action::Delete => q.delete(id).map(|d| match d {
                Deletion::Deleted => "deleted",
                Deletion::AfterAttempt => "deleted after the current delivery attempt",
            }),
        };
        match done {
            Ok(what) => {
                mlog!("control", "{id}: {what}");
                body.push_str(&format!("+ {id}: {what}\n"));
            }
            Err(QueueError::UnknownId(_)) => body.push_str(&format!("- {text}: no such message\n")),
            Err(e) => {
                mlog!("control", "warning: {e}");
                reply_err(stream, &e.to_string()).await;
                return;
            }
        }
    }
    // The records must be durable before the client hears "done".
    if let Err(e) = q.sync().await {
        mlog!("control", "warning: {e}");
        reply_err(stream, &e.to_string()).await;
        return;
    }
    reply_ok(stream, body.as_bytes()).await;
}

async fn show(ctx: &Rc<Ctx>, stream: &mut UnixStream, id_text: &str) {
    let q = &ctx.queue;
    let Some(id) = parse_id(id_text) else {
        reply_err(stream, &format!("{id_text}: no such message")).await;
        return;
    };
    let info = q.list().into_iter().find(|m| m.qid == id);
    let (Some(info), Ok(env), Ok(mut reader)) = (info, q.envelope(id), q.body(id)) else {
        reply_err(stream, &format!("{id}: no such message")).await;
        return;
    };
    let head = crate::cli::queue::format_show_head(&info, &env);
    let tail = format!("\n*** MESSAGE FILE END {id} ***\n");
    let total = head.len() as u64 + info.size + tail.len() as u64;
    if !send(stream, format!("OK {total}\n{head}").as_bytes()).await {
        return;
    }
    let mut left = info.size;
    // Bounded: `left` shrinks by every chunk sent; a short or failed read ends the response.
    while left > 0 {
        let want = left.min(limits::QUEUE_CHUNK_BYTES_MAX as u64) as usize;
        let (r, res) = smol::unblock(move || {
            let mut buf = vec![0u8; want];
            let r = reader.read(&mut buf).inspect(|&n| buf.truncate(n));
            (reader, (r, buf))
        })
        .await;
        reader = r;
        match res {
            (Ok(n), data) if n > 0 => {
                if !send(stream, &data).await {
                    return;
                }
                left -= n as u64;
            }
            (Ok(_), _) => {
                mlog!("control", "warning: {id}: body shorter than its size");
                return;
            }
            (Err(e), _) => {
                mlog!("control", "warning: {id}: read body: {e}");
                return;
            }
        }
    }
    let _ = send(stream, tail.as_bytes()).await;
}
