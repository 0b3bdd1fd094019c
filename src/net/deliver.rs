//! The delivery runner: takes due messages from the queue and delivers them in batches of
//! up to limits::LOCAL_DELIVERY_BATCH_MESSAGES, at most limits::LOCAL_DELIVERY_CONCURRENCY_MAX
//! batches at a time. A batch is one blocking job on the thread pool: each message is
//! written to tmp/, fsynced and renamed into new/ (Maildir spec), and each Maildir's new/ is
//! fsynced once for the whole batch before any of its messages is recorded as delivered.
//! Batching keeps the per-message cost (thread hand-offs, directory flushes, lock contention
//! on one busy Maildir) low; under light load a batch is a single message.
//!
//! Routing is decided here, at delivery time (Postfix's trivial-rewrite does the same): a
//! local mailbox user gets a Maildir copy; a remote recipient is routed by
//! `delivery::route::route` (transport_maps, relayhost) and sent by [`super::relay`]: the
//! remote recipients of the whole batch are grouped per next hop, one session per next hop
//! (connection reuse), one transaction per message and smtp_destination_recipient_limit
//! recipients; a local recipient that no longer exists bounces.
//!
//! Retries: the queue computes the next try (its own doubling backoff between
//! minimal_backoff_time and maximal_backoff_time, `queue::schedule`). Only the lifetime
//! comes from `delivery::route::retry_decision`: a temporary failure of a message older than
//! maximal_queue_lifetime (bounce_queue_lifetime for a bounce) becomes a bounce.

use std::rc::Rc;
use std::time::{Duration, Instant};

use smol::Timer;

use super::relay::{self, Dest, Item, ItemResult, RelayConf};
use super::Ctx;
use crate::delivery::dsn::{self, is_null_sender, DiagnosticCode, Notice, RecipientStatus};
use crate::delivery::local::{self, Ident, LocalConfig, Meta};
use crate::delivery::maildir::{self, MaildirDelivery};
use crate::delivery::route::{retry_decision, route, Retry, RetryPolicy, Route};
use crate::delivery::DeliveryError;
use crate::limits::{
    LOCAL_DELIVERY_BATCH_MESSAGES, LOCAL_DELIVERY_CONCURRENCY_MAX, LOCAL_DELIVERY_GATHER, LOOP_HEADER_SCAN_BYTES_MAX,
};
use crate::policy::aliases::{Source, Target};
use crate::policy::RcptClass;
use crate::privsep::Work;
use crate::queue::{Job, Outcome};

/// Why a local recipient bounces.
const UNKNOWN_USER: &str = "unknown user (no such mailbox user)";

/// One recipient's result for the log line.
struct Res {
    idx: usize,
    outcome: Outcome,
    /// `local`, `none`, or `host[ip]:port`.
    relay: String,
    /// For sent: what to show in the log (`delivered to maildir`, the remote 250 reply).
    detail: String,
    /// For a bounce: RFC 3463 status, RFC 3464 Diagnostic-Code (`smtp; ...` or
    /// `X-Postfix; ...`), and the remote host that answered.
    dsn: String,
    diagnostic: String,
    remote_mta: Option<String>,
    /// The log's service name when not derived from `relay` (`local`, `virtual`).
    service: &'static str,
}

fn res(idx: usize, outcome: Outcome, relay: &str) -> Res {
    Res {
        idx,
        outcome,
        relay: relay.to_string(),
        detail: "delivered to maildir".into(),
        dsn: String::new(),
        diagnostic: String::new(),
        remote_mta: None,
        service: "",
    }
}

pub async fn runner(ctx: Rc<Ctx>) {
    // When the first message of a batch that is not yet full became due.
    let mut gathering: Option<Instant> = None;
    loop {
        if ctx.stopping.get() {
            return;
        }
        let paused = ctx.policy().settings.delivery_paused;
        if !paused {
            let room = LOCAL_DELIVERY_CONCURRENCY_MAX.saturating_sub(ctx.deliveries.get());
            if room > 0 {
                // Gather: less than a batch waits up to LOCAL_DELIVERY_GATHER for more, so that
                // under steady load messages share a batch (one syncfs and one new/ fsync per
                // Maildir, one thread hand-off) instead of paying them one by one.
                let due = ctx
                    .queue
                    .ready_count(crate::time::now_unix(), LOCAL_DELIVERY_BATCH_MESSAGES);
                if due > 0 && due < LOCAL_DELIVERY_BATCH_MESSAGES {
                    let since = *gathering.get_or_insert_with(Instant::now);
                    let left = LOCAL_DELIVERY_GATHER.saturating_sub(since.elapsed());
                    if !left.is_zero() {
                        Timer::after(left).await;
                        continue;
                    }
                }
                gathering = None;
                let mut jobs = ctx
                    .queue
                    .ready(crate::time::now_unix(), room * LOCAL_DELIVERY_BATCH_MESSAGES);
                // Batches moved out of `jobs`, not copied (a copy cloned every envelope).
                // Bounded: each turn takes at least one job.
                while !jobs.is_empty() {
                    let rest = if jobs.len() > LOCAL_DELIVERY_BATCH_MESSAGES {
                        jobs.split_off(LOCAL_DELIVERY_BATCH_MESSAGES)
                    } else {
                        Vec::new()
                    };
                    let batch = std::mem::replace(&mut jobs, rest);
                    ctx.deliveries.set(ctx.deliveries.get() + 1);
                    let c = ctx.clone();
                    ctx.ex
                        .spawn(async move {
                            deliver_batch(&c, batch).await;
                            c.deliveries.set(c.deliveries.get() - 1);
                            c.idle.notify(usize::MAX);
                            c.queue.poke();
                        })
                        .detach();
                }
            }
        }
        // Sleep until something changes, or until the next deferred message is due.
        let wait = match (paused, ctx.queue.next_due()) {
            (false, Some(due)) => Duration::from_secs(due.saturating_sub(crate::time::now_unix()).max(1)),
            _ => Duration::from_secs(3600),
        };
        smol::future::or(ctx.queue.changed(), async {
            Timer::after(wait).await;
        })
        .await;
    }
}

/// One local copy to write.
struct Local {
    job: usize,
    idx: usize,
    maildir: std::path::PathBuf,
    body: crate::queue::BodyReader,
    seq: u64,
    prepend: String,
    size: u64,
}

/// One delivery for a system user, an alias command or an alias file (through the
/// privileged helper, or in this process when there is none).
struct Helped {
    job: usize,
    idx: usize,
    work: Work,
    meta: Meta,
    body: crate::queue::BodyReader,
}

/// Loop facts from a message's header.
#[derive(Debug, Default, Clone)]
struct LoopFacts {
    /// Received: lines (hopcount_limit).
    received: usize,
    /// Delivered-To: values, lowercased.
    delivered_to: Vec<String>,
}

/// Count Received: and collect Delivered-To: in the header (at most
/// LOOP_HEADER_SCAN_BYTES_MAX bytes). Blocking.
fn scan_header(body: &mut dyn std::io::BufRead) -> LoopFacts {
    use std::io::BufRead;
    let mut facts = LoopFacts::default();
    // The body reader buffers a record already: no BufReader (and its 8 KiB) on top.
    let mut r = std::io::Read::take(body, LOOP_HEADER_SCAN_BYTES_MAX as u64);
    let mut line = Vec::new();
    // Bounded by the take() above.
    loop {
        line.clear();
        match r.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let l = String::from_utf8_lossy(&line);
        let l = l.trim_end_matches(['\r', '\n']);
        if l.is_empty() {
            break;
        }
        if let Some((name, value)) = l.split_once(':') {
            if name.eq_ignore_ascii_case("received") {
                facts.received += 1;
            } else if name.eq_ignore_ascii_case("delivered-to") {
                facts.delivered_to.push(value.trim().to_lowercase());
            }
        }
    }
    facts
}

/// A sub-delivery's result, for the recipient it belongs to.
struct Sub {
    job: usize,
    idx: usize,
    r: Result<String, DeliveryError>,
    /// RFC 3463 status for a failure ("" = the default for the reason).
    dsn: &'static str,
}

fn fail(job: usize, idx: usize, e: DeliveryError, dsn: &'static str) -> Sub {
    Sub {
        job,
        idx,
        r: Err(e),
        dsn,
    }
}

/// A unique id for an mbox message (the Maildir scheme, see delivery::mbox).
fn uidl(secs: u64, micros: u32, seq: u64) -> String {
    format!("{secs}.M{micros}P{}Q{seq}", crate::pid())
}

/// Deliver one [`Helped`] (blocking): through the helper, or here with our own rights.
fn run_helped(h: &mut Helped, cfg: &LocalConfig) -> Result<String, DeliveryError> {
    if let Some(c) = crate::privsep::client() {
        return c.deliver(&h.work, &h.meta, &mut h.body);
    }
    let me = nix::unistd::User::from_uid(nix::unistd::geteuid())
        .ok()
        .flatten()
        .map(|u| Ident::from_user(&u))
        .ok_or_else(|| DeliveryError::temporary("no passwd entry for our own uid"))?;
    match &h.work {
        Work::Mailbox { user } => {
            let who = crate::policy::router::system_user(user)
                .map(|u| Ident::from_user(&u))
                .ok_or_else(|| DeliveryError::permanent(format!("unknown user: \"{user}\"")))?;
            local::deliver_mailbox(cfg, &who, &h.meta, &mut h.body)
        }
        Work::AliasCommand { command, .. } => local::run_command(command, &me, &h.meta, &mut h.body),
        Work::AliasFile { path, .. } => local::append_file(cfg, &me, std::path::Path::new(path), &h.meta, &mut h.body),
    }
}

async fn deliver_batch(ctx: &Rc<Ctx>, jobs: Vec<Job>) {
    let policy = ctx.policy();
    policy.refresh_aliases("local");
    let s = &policy.settings;
    let started = Instant::now();
    let (secs, micros) = crate::time::now();
    // Per job: results in any order.
    // Sized up front: a batch's outcome lists grown one push at a time (and the lists of
    // finished outcomes below, one per job) were allocations that musl's allocator mapped
    // and unmapped batch after batch (docs/decisions.md, "Where a session's time goes").
    let mut outcomes: Vec<Vec<Res>> = jobs.iter().map(|j| Vec::with_capacity(j.recipients.len())).collect();
    let mut done: Vec<(usize, Outcome)> =
        Vec::with_capacity(jobs.iter().map(|j| j.recipients.len()).max().unwrap_or(0));
    let recipients: usize = jobs.iter().map(|j| j.recipients.len()).sum();
    let mut locals = Vec::with_capacity(recipients);
    let mut helped: Vec<Helped> = Vec::new();
    let mut subs: Vec<Sub> = Vec::with_capacity(recipients);
    // Alias recipients with remote targets: (job, idx, alias address, targets).
    let mut forwards: Vec<(usize, usize, String, Vec<String>)> = Vec::new();
    // Remote recipients: (job, rcpt index, address), routed below.
    let mut remote: Vec<(usize, usize, String)> = Vec::new();
    let facts = loop_facts(ctx, &jobs).await;
    let next_seq = || {
        let seq = ctx.delivery_seq.get();
        ctx.delivery_seq.set(seq + 1);
        seq
    };
    for (j, job) in jobs.iter().enumerate() {
        let f = facts.get(j).cloned().unwrap_or_default();
        for (idx, addr) in &job.recipients {
            let (j, idx) = (j, *idx);
            // Postfix: more Received: headers than hopcount_limit is a mail loop.
            if f.received > s.hopcount_limit {
                subs.push(fail(
                    j,
                    idx,
                    DeliveryError::permanent(format!(
                        "mail forwarding loop: too many hops ({} Received: headers, hopcount_limit {})",
                        f.received, s.hopcount_limit
                    )),
                    "5.4.6",
                ));
                continue;
            }
            let class = policy.router.classify(addr);
            let is_loop = |a: &str| f.delivered_to.iter().any(|d| d == &a.to_lowercase());
            if class.is_local_recipient() && is_loop(addr) {
                subs.push(fail(
                    j,
                    idx,
                    DeliveryError::permanent(format!("mail forwarding loop for {addr}")),
                    "5.4.6",
                ));
                continue;
            }
            let domain = addr.rsplit_once('@').map(|(_, d)| d).unwrap_or(s.myhostname.as_str());
            let meta = |recipient: String, seq: u64| Meta {
                sender: job.sender.clone(),
                recipient,
                time_secs: secs,
                time_micros: micros,
                uidl: uidl(secs, micros, seq),
                seq,
                size: job.size,
            };
            match class {
                RcptClass::Local { user } => match ctx.queue.body(job.qid) {
                    Ok(body) => locals.push(Local {
                        job: j,
                        idx,
                        maildir: s.virtual_mailbox_base.join(&user),
                        body,
                        seq: next_seq(),
                        // RFC 5321 §4.4: the final delivery adds Return-Path:;
                        // Delivered-To: marks the mailbox (loop detection, as Postfix's
                        // local/virtual do).
                        prepend: format!("Return-Path: <{}>\nDelivered-To: {}\n", job.sender, addr),
                        size: job.size,
                    }),
                    Err(e) => subs.push(fail(j, idx, DeliveryError::temporary(format!("queue read: {e}")), "")),
                },
                RcptClass::System { user } => match ctx.queue.body(job.qid) {
                    Ok(body) => helped.push(Helped {
                        job: j,
                        idx,
                        work: Work::Mailbox { user },
                        meta: meta(addr.clone(), next_seq()),
                        body,
                    }),
                    Err(e) => subs.push(fail(j, idx, DeliveryError::temporary(format!("queue read: {e}")), "")),
                },
                RcptClass::Alias { name } => {
                    let aliases = policy.router.aliases();
                    let ex = aliases.expand(&name, |d| policy.router.is_local_domain(d));
                    let mut remote_targets = Vec::new();
                    for e in ex.errors {
                        let dsn = if e.reason.contains("loop") { "5.4.6" } else { "" };
                        subs.push(fail(
                            j,
                            idx,
                            DeliveryError {
                                permanent: e.permanent,
                                reason: e.reason,
                            },
                            dsn,
                        ));
                    }
                    for t in ex.deliveries {
                        let body = match ctx.queue.body(job.qid) {
                            Ok(b) => b,
                            Err(e) => {
                                subs.push(fail(j, idx, DeliveryError::temporary(format!("queue read: {e}")), ""));
                                break;
                            }
                        };
                        match t {
                            Target::Local(n) => {
                                let target_addr = format!("{n}@{domain}");
                                if is_loop(&target_addr) {
                                    subs.push(fail(
                                        j,
                                        idx,
                                        DeliveryError::permanent(format!("mail forwarding loop for {target_addr}")),
                                        "5.4.6",
                                    ));
                                    continue;
                                }
                                match policy.router.user_class(&n) {
                                    RcptClass::Local { user } => locals.push(Local {
                                        job: j,
                                        idx,
                                        maildir: s.virtual_mailbox_base.join(&user),
                                        body,
                                        seq: next_seq(),
                                        prepend: format!(
                                            "Return-Path: <{}>\nDelivered-To: {}\n",
                                            job.sender, target_addr
                                        ),
                                        size: job.size,
                                    }),
                                    RcptClass::System { user } => helped.push(Helped {
                                        job: j,
                                        idx,
                                        work: Work::Mailbox { user },
                                        meta: meta(target_addr, next_seq()),
                                        body,
                                    }),
                                    _ => subs.push(fail(
                                        j,
                                        idx,
                                        DeliveryError::permanent(format!(
                                            "{UNKNOWN_USER}: \"{n}\" (from alias {name})"
                                        )),
                                        "5.1.1",
                                    )),
                                }
                            }
                            Target::Remote(a) => remote_targets.push(a),
                            Target::Command { command, source } => {
                                if let Some(e) = restricted(&s.allow_mail_to_commands, &source, "command") {
                                    subs.push(fail(j, idx, e, "5.7.1"));
                                    continue;
                                }
                                helped.push(Helped {
                                    job: j,
                                    idx,
                                    work: Work::AliasCommand {
                                        alias: name.clone(),
                                        command,
                                    },
                                    meta: meta(addr.clone(), next_seq()),
                                    body,
                                });
                            }
                            Target::File { path, source } => {
                                if let Some(e) = restricted(&s.allow_mail_to_files, &source, "file") {
                                    subs.push(fail(j, idx, e, "5.7.1"));
                                    continue;
                                }
                                helped.push(Helped {
                                    job: j,
                                    idx,
                                    work: Work::AliasFile {
                                        alias: name.clone(),
                                        path: path.display().to_string(),
                                    },
                                    meta: meta(addr.clone(), next_seq()),
                                    body,
                                });
                            }
                        }
                    }
                    if !remote_targets.is_empty() {
                        forwards.push((j, idx, addr.clone(), remote_targets));
                    }
                }
                // No alias table could be loaded yet: the name may be an alias.
                RcptClass::UnknownLocal if policy.aliases_failed() => subs.push(fail(
                    j,
                    idx,
                    DeliveryError::temporary("alias_maps cannot be read; unknown local name deferred"),
                    "",
                )),
                RcptClass::UnknownLocal => subs.push(fail(j, idx, DeliveryError::permanent(UNKNOWN_USER), "5.1.1")),
                RcptClass::Remote => remote.push((j, idx, addr.clone())),
            }
        }
    }
    let relay_task = if remote.is_empty() {
        None
    } else {
        let c = ctx.clone();
        let p = policy.clone();
        let items: Vec<(usize, crate::queue::QueueId, String, u64)> = jobs
            .iter()
            .enumerate()
            .map(|(j, job)| (j, job.qid, job.sender.clone(), job.size))
            .collect();
        Some(ctx.ex.spawn(async move { relay_all(&c, &p, &items, remote).await }))
    };
    if !locals.is_empty() {
        let hostname = s.myhostname.clone();
        let results = smol::unblock(move || {
            let (secs, micros) = crate::time::now();
            let mut items: Vec<(MaildirDelivery<'_>, &mut dyn std::io::Read)> = locals
                .iter_mut()
                .map(|l| {
                    (
                        MaildirDelivery {
                            maildir: &l.maildir,
                            hostname: &hostname,
                            prepend: l.prepend.as_bytes(),
                            body_size: l.size,
                            now_secs: secs,
                            now_micros: micros,
                            seq: l.seq,
                        },
                        &mut l.body as &mut dyn std::io::Read,
                    )
                })
                .collect();
            let results = maildir::deliver_batch(&mut items);
            drop(items);
            locals.iter().map(|l| (l.job, l.idx)).zip(results).collect::<Vec<_>>()
        })
        .await;
        for ((j, idx), r) in results {
            subs.push(Sub {
                job: j,
                idx,
                r: r.map(|_| "delivered to maildir".to_string()),
                dsn: "",
            });
        }
    }
    if !helped.is_empty() {
        let cfg = LocalConfig::from_settings(s);
        let results = smol::unblock(move || {
            helped
                .iter_mut()
                .map(|h| (h.job, h.idx, run_helped(h, &cfg)))
                .collect::<Vec<_>>()
        })
        .await;
        for (j, idx, r) in results {
            subs.push(Sub {
                job: j,
                idx,
                r,
                dsn: "",
            });
        }
    }
    for (j, idx, alias_addr, targets) in forwards {
        let Some(job) = jobs.get(j) else { continue };
        let r = forward(ctx, job, &alias_addr, targets.clone())
            .await
            .map(|qid| format!("forwarded as {qid} to {}", targets.join(", ")))
            .map_err(|e| DeliveryError::temporary(format!("forwarding to {}: {e}", targets.join(", "))));
        subs.push(Sub {
            job: j,
            idx,
            r,
            dsn: "",
        });
    }
    // One outcome per recipient: any deferred part defers it (the delivered parts are
    // delivered again with it later, as Postfix's local(8) does), else any bounced part
    // bounces it, else it is delivered.
    let mut by_rcpt: Vec<((usize, usize), Vec<Sub>)> = Vec::new();
    for sub in subs {
        match by_rcpt.iter_mut().find(|(k, _)| *k == (sub.job, sub.idx)) {
            Some((_, v)) => v.push(sub),
            None => by_rcpt.push(((sub.job, sub.idx), vec![sub])),
        }
    }
    for ((j, idx), parts) in by_rcpt {
        let service = if parts.len() == 1 && parts[0].r.as_ref().is_ok_and(|d| d == "delivered to maildir") {
            "virtual"
        } else {
            "local"
        };
        let deferred: Vec<&str> = parts
            .iter()
            .filter_map(|p| p.r.as_ref().err().filter(|e| !e.permanent).map(|e| e.reason.as_str()))
            .collect();
        let bounced: Vec<&Sub> = parts
            .iter()
            .filter(|p| p.r.as_ref().is_err_and(|e| e.permanent))
            .collect();
        let mut r = res(idx, Outcome::Delivered, "local");
        r.service = service;
        if !deferred.is_empty() {
            r.outcome = Outcome::Deferred {
                reason: deferred.join("; "),
            };
        } else if !bounced.is_empty() {
            let reason: Vec<&str> = bounced
                .iter()
                .filter_map(|p| p.r.as_ref().err().map(|e| e.reason.as_str()))
                .collect();
            r.outcome = Outcome::Bounced {
                reason: reason.join("; "),
            };
            r.dsn = bounced
                .iter()
                .map(|p| p.dsn)
                .find(|d| !d.is_empty())
                .unwrap_or("")
                .to_string();
        } else {
            let details: Vec<&str> = parts
                .iter()
                .filter_map(|p| p.r.as_ref().ok().map(String::as_str))
                .collect();
            r.detail = details.join("; ");
        }
        if let Some(o) = outcomes.get_mut(j) {
            o.push(r);
        }
    }
    if let Some(task) = relay_task {
        for r in task.await {
            if let Some(o) = outcomes.get_mut(r.job) {
                o.push(Res {
                    idx: r.idx,
                    outcome: r.outcome,
                    relay: r.relay,
                    detail: r.detail,
                    dsn: r.dsn,
                    diagnostic: r.diagnostic,
                    remote_mta: r.remote_mta,
                    service: "",
                });
            }
        }
    }
    let now = crate::time::now_unix();
    let retry = RetryPolicy {
        minimal_backoff_secs: s.minimal_backoff_time_secs,
        maximal_backoff_secs: s.maximal_backoff_time_secs,
        maximal_queue_lifetime_secs: s.maximal_queue_lifetime_secs,
        bounce_queue_lifetime_secs: s.bounce_queue_lifetime_secs,
    };
    for (job, mut outs) in jobs.iter().zip(outcomes) {
        let delay = started.elapsed().as_secs_f64() + now.saturating_sub(job.arrival_unix) as f64;
        // Past maximal_queue_lifetime a temporary failure is final (Postfix qmgr).
        if retry_decision(job.arrival_unix, now, job.sender.is_empty(), &retry) == Retry::GiveUp {
            for r in outs.iter_mut() {
                if let Outcome::Deferred { reason } = &r.outcome {
                    r.outcome = Outcome::Bounced {
                        reason: format!(
                            "message expired after {}s in the queue: {reason}",
                            now.saturating_sub(job.arrival_unix)
                        ),
                    };
                }
            }
        }
        // RFC 3464: one notification per message listing every failed recipient; queued
        // before the failures are recorded, so a crash in between repeats the attempt
        // rather than losing the notice.
        if outs.iter().any(|r| matches!(r.outcome, Outcome::Bounced { .. })) && !is_null_sender(&job.sender) {
            if let Err(e) = notify_sender(ctx, &s.myhostname, job, &outs, now).await {
                crate::log::line(
                    "bounce",
                    format_args!(
                        "qid={} warning: sender non-delivery notification not queued: {e}",
                        job.qid
                    ),
                );
                // Keep the recipients for another attempt: the notice must not be lost.
                for r in outs.iter_mut() {
                    if let Outcome::Bounced { reason } = &r.outcome {
                        r.outcome = Outcome::Deferred {
                            reason: format!("{reason} (bounce notification not queued: {e})"),
                        };
                    }
                }
            }
        }
        for Res {
            idx,
            outcome,
            relay,
            detail,
            service: named,
            ..
        } in &outs
        {
            let addr = job
                .recipients
                .iter()
                .find(|(i, _)| i == idx)
                .map(|(_, a)| a.as_str())
                .unwrap_or("");
            let (status, detail) = match outcome {
                Outcome::Delivered => ("sent", detail.as_str()),
                Outcome::Deferred { reason } => ("deferred", reason.as_str()),
                Outcome::Bounced { reason } => ("bounced", reason.as_str()),
            };
            let service = match relay.as_str() {
                _ if !named.is_empty() => named,
                "local" => "virtual",
                "none" => "qmgr",
                _ => "smtp",
            };
            crate::log::line(
                service,
                format_args!(
                    "qid={} to=<{}>, relay={}, delay={:.2}, status={} ({})",
                    job.qid, addr, relay, delay, status, detail
                ),
            );
        }
        warn_delay(ctx, s, job, &outs, now).await;
        done.clear();
        done.extend(outs.into_iter().map(|r| (r.idx, r.outcome)));
        ctx.queue.finish(job.qid, &done, now);
    }
}

fn source_class(s: &Source) -> &'static str {
    match s {
        Source::Alias => "alias",
        Source::Include(_) => "include",
    }
}

/// Postfix's allow_mail_to_commands / allow_mail_to_files: the error when `allowed` does not
/// list the class of `source` (`what`: "command" or "file").
fn restricted(allowed: &[String], source: &Source, what: &str) -> Option<DeliveryError> {
    let class = source_class(source);
    (!allowed.iter().any(|c| c == class)).then(|| {
        DeliveryError::permanent(format!(
            "mail to {what} is restricted (allow_mail_to_{what}s does not list {class})"
        ))
    })
}

/// Header loop facts of each job (one blocking read of each header, off the event loop).
async fn loop_facts(ctx: &Rc<Ctx>, jobs: &[Job]) -> Vec<LoopFacts> {
    let bodies: Vec<Option<crate::queue::BodyReader>> = jobs.iter().map(|j| ctx.queue.body(j.qid).ok()).collect();
    smol::unblock(move || {
        bodies
            .into_iter()
            .map(|b| b.map(|mut b| scan_header(&mut b)).unwrap_or_default())
            .collect()
    })
    .await
}

/// Queue a copy of `job`'s message from the same sender to `targets` (an alias's remote
/// addresses), with `Delivered-To: alias_addr` on top (as Postfix forwards). Returns the
/// new queue id once it is durable.
async fn forward(ctx: &Rc<Ctx>, job: &Job, alias_addr: &str, targets: Vec<String>) -> Result<String, String> {
    use std::io::Read;
    let mut body = ctx.queue.body(job.qid).map_err(|e| format!("queue read: {e}"))?;
    let mut inc = ctx
        .queue
        .begin(crate::queue::Envelope {
            sender: job.sender.clone(),
            recipients: targets,
            arrival_unix: crate::time::now_unix(),
            client: "localhost[127.0.0.1]".into(),
        })
        .map_err(|e| e.to_string())?;
    let new_qid = inc.qid().to_string();
    if alias_addr.chars().any(|c| c.is_control()) {
        inc.abort();
        return Err("control character in the alias address".into());
    }
    if let Err(e) = inc.write(format!("Delivered-To: {alias_addr}\n").as_bytes()).await {
        return Err(e.to_string());
    }
    // The original, a chunk at a time (blocking reads off the event loop; bounded memory).
    loop {
        let (b, chunk) = smol::unblock(move || {
            let mut buf = vec![0u8; 64 * 1024];
            let r = body.read(&mut buf).map(|n| {
                buf.truncate(n);
                buf
            });
            (body, r)
        })
        .await;
        body = b;
        match chunk {
            Ok(c) if c.is_empty() => break,
            Ok(c) => inc.write(&c).await.map_err(|e| e.to_string())?,
            Err(e) => {
                inc.abort();
                return Err(format!("queue read: {e}"));
            }
        }
    }
    inc.commit().await.map_err(|e| e.to_string())?;
    crate::log::line(
        "local",
        format_args!("qid={} forwarded: {new_qid} to=<{alias_addr}>", job.qid),
    );
    Ok(new_qid)
}

/// Queue a delivery notice (bounce or delay) from the null sender (RFC 5321 §4.5.5) to
/// `to`; returns its queue id once it is durable.
async fn queue_notice_message(ctx: &Rc<Ctx>, to: &str, text: &[u8], now: u64) -> Result<String, String> {
    let mut inc = ctx
        .queue
        .begin(crate::queue::Envelope {
            sender: String::new(),
            recipients: vec![to.to_string()],
            arrival_unix: now,
            client: "localhost[127.0.0.1]".into(),
        })
        .map_err(|e| e.to_string())?;
    let new_qid = inc.qid().to_string();
    for chunk in text.chunks(64 * 1024) {
        inc.write(chunk).await.map_err(|e| e.to_string())?;
    }
    inc.commit().await.map_err(|e| e.to_string())?;
    Ok(new_qid)
}

/// A recipient's line in a delivery report: its address, the diagnostic text, and whether
/// that text is a remote SMTP reply (`smtp; <reply>`, RFC 3464 §2.3.6) rather than a local
/// reason (the bounce or deferral reason).
fn report_fields(job: &Job, r: &Res) -> (String, String, bool) {
    let addr = job
        .recipients
        .iter()
        .find(|(i, _)| *i == r.idx)
        .map(|(_, a)| a.clone())
        .unwrap_or_default();
    match r.diagnostic.strip_prefix("smtp; ") {
        Some(reply) => (addr, reply.to_string(), true),
        None => {
            let reason = match &r.outcome {
                Outcome::Bounced { reason } | Outcome::Deferred { reason } => reason.clone(),
                Outcome::Delivered => String::new(),
            };
            (addr, reason, false)
        }
    }
}

/// Build a bounce (RFC 3464 multipart/report) for the bounced recipients of `job` and queue
/// it from the null sender (RFC 5321 §4.5.5) to the original sender. Returns its queue id.
async fn notify_sender(ctx: &Rc<Ctx>, myhostname: &str, job: &Job, outs: &[Res], now: u64) -> Result<String, String> {
    let failed: Vec<(String, String, Option<String>, bool, String)> = outs
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Bounced { .. }))
        .map(|r| {
            let (addr, diag, is_smtp) = report_fields(job, r);
            // RFC 3463: an unknown local user is 5.1.1; other local failures 5.0.0.
            let status = match (r.dsn.is_empty(), reason_is_unknown_user(&r.outcome)) {
                (false, _) => r.dsn.clone(),
                (true, true) => "5.1.1".to_string(),
                (true, false) => "5.0.0".to_string(),
            };
            (addr, status, r.remote_mta.clone(), is_smtp, diag)
        })
        .collect();
    let seq = ctx.delivery_seq.get();
    ctx.delivery_seq.set(seq + 1);
    let qid = job.qid.to_string();
    let notice = OwnedNotice {
        myhostname: myhostname.to_string(),
        sender: job.sender.clone(),
        unique: format!("{now}.{qid}.{seq}"),
        queue_id: qid,
        arrival_secs: job.arrival_unix,
        now_secs: now,
        recipients: failed,
        size_limit: crate::limits::DSN_ORIGINAL_BYTES_MAX,
        retry_until: None,
    };
    let mut body = ctx.queue.body(job.qid).map_err(|e| format!("queue read: {e}"))?;
    // The original is read from the segments: at most DSN_ORIGINAL_BYTES_MAX are kept, but
    // the reader goes through the header; a blocking read, off the event loop.
    let text = smol::unblock(move || notice.build(&mut body))
        .await
        .map_err(|e| format!("queue read: {e}"))?;
    let Some(text) = text else {
        return Ok(String::new());
    };
    let new_qid = queue_notice_message(ctx, &job.sender, &text, now).await?;
    crate::log::line(
        "bounce",
        format_args!("qid={} sender non-delivery notification: {new_qid}", job.qid),
    );
    Ok(new_qid)
}

fn reason_is_unknown_user(o: &Outcome) -> bool {
    matches!(o, Outcome::Bounced { reason } if reason.starts_with(UNKNOWN_USER))
}

/// A [`Notice`] with owned fields, to build a DSN on the thread pool.
struct OwnedNotice {
    myhostname: String,
    sender: String,
    queue_id: String,
    arrival_secs: u64,
    now_secs: u64,
    unique: String,
    recipients: Vec<(String, String, Option<String>, bool, String)>,
    size_limit: usize,
    /// Some: a delay warning (retried until then), else a bounce.
    retry_until: Option<u64>,
}

impl OwnedNotice {
    fn build(&self, original: &mut dyn std::io::Read) -> std::io::Result<Option<Vec<u8>>> {
        let rs: Vec<RecipientStatus<'_>> = self
            .recipients
            .iter()
            .map(|(addr, status, mta, smtp, d)| RecipientStatus {
                final_recipient: addr,
                original_recipient: Some(addr),
                status,
                remote_mta: mta.as_deref(),
                diagnostic: if *smtp {
                    DiagnosticCode::Smtp(d)
                } else {
                    DiagnosticCode::Unix(d)
                },
            })
            .collect();
        let n = Notice {
            myhostname: &self.myhostname,
            sender: &self.sender,
            queue_id: &self.queue_id,
            arrival_secs: self.arrival_secs,
            now_secs: self.now_secs,
            unique: &self.unique,
            recipients: &rs,
            headers_only: false,
            size_limit: self.size_limit,
            retry_until_secs: self.retry_until,
        };
        match self.retry_until {
            Some(_) => dsn::delay_warning(&n, original),
            None => dsn::bounce(&n, original),
        }
    }
}

/// How long a loaded RelayConf is reused: changed map, hosts or CA files are picked up
/// within this time (and at once after a reload).
const RELAY_CONF_TTL: Duration = Duration::from_secs(10);

/// The routing maps, /etc/hosts, passwords and TLS roots, loaded off the event loop and
/// reused for RELAY_CONF_TTL (parsing a system CA bundle alone costs milliseconds: once per
/// batch added up under load).
pub(crate) async fn relay_conf(ctx: &Rc<Ctx>, policy: &Rc<super::Policy>) -> Rc<RelayConf> {
    if let Some((p, at, conf)) = ctx.relay_conf.borrow().as_ref() {
        if Rc::ptr_eq(p, policy) && at.elapsed() < RELAY_CONF_TTL {
            return conf.clone();
        }
    }
    let settings = policy.settings.clone();
    let conf = Rc::new(smol::unblock(move || RelayConf::load(&settings)).await);
    *ctx.relay_conf.borrow_mut() = Some((policy.clone(), Instant::now(), conf.clone()));
    conf
}

/// Route the batch's remote recipients and deliver them: one session per next hop, the
/// sessions running concurrently (each bounded by the per-destination limit).
async fn relay_all(
    ctx: &Rc<Ctx>,
    policy: &Rc<super::Policy>,
    jobs: &[(usize, crate::queue::QueueId, String, u64)],
    remote: Vec<(usize, usize, String)>,
) -> Vec<ItemResult> {
    let s = &policy.settings;
    let conf = relay_conf(ctx, policy).await;
    let mut out = Vec::new();
    // next hop -> items (per job: chunks of smtp_destination_recipient_limit recipients)
    let mut dests: Vec<(Dest, Vec<Item>)> = Vec::new();
    for (j, idx, addr) in remote {
        let fixed = |outcome: Outcome| ItemResult {
            job: j,
            idx,
            detail: match &outcome {
                Outcome::Deferred { reason } | Outcome::Bounced { reason } => reason.clone(),
                Outcome::Delivered => String::new(),
            },
            outcome,
            relay: "none".into(),
            dsn: String::new(),
            diagnostic: String::new(),
            remote_mta: None,
        };
        let dest = match route(&addr, &conf.route) {
            Route::Relay { host, port, mx_lookup } => Dest { host, port, mx_lookup },
            Route::Error(t) => {
                out.push(fixed(Outcome::Bounced { reason: t }));
                continue;
            }
            Route::Defer(t) => {
                out.push(fixed(Outcome::Deferred { reason: t }));
                continue;
            }
            // transport_maps sends a non-local domain to local delivery: no such mailbox.
            Route::Local => {
                out.push(fixed(Outcome::Bounced {
                    reason: UNKNOWN_USER.into(),
                }));
                continue;
            }
        };
        let Some(&(_, qid, ref sender, size)) = jobs.get(j) else {
            continue;
        };
        let limit = s.smtp_destination_recipient_limit.max(1);
        let pos = match dests.iter().position(|(d, _)| *d == dest) {
            Some(p) => p,
            None => {
                dests.push((dest, Vec::new()));
                dests.len() - 1
            }
        };
        let items = &mut dests[pos].1;
        match items.last_mut() {
            Some(it) if it.job == j && it.rcpts.len() < limit => it.rcpts.push((idx, addr)),
            _ => items.push(Item {
                job: j,
                qid,
                sender: sender.clone(),
                size,
                rcpts: vec![(idx, addr)],
            }),
        }
    }
    let tasks: Vec<_> = dests
        .into_iter()
        .map(|(dest, items)| {
            let c = ctx.clone();
            let s = s.clone();
            let conf = conf.clone();
            ctx.ex
                .spawn(async move { relay::deliver(&c, &s, &conf, &dest, items).await })
        })
        .collect();
    for t in tasks {
        out.extend(t.await);
    }
    out
}

/// delay_warning_time: once a message has waited that long and recipients are still
/// deferred, the sender gets one RFC 3464 delay notice (Action: delayed) listing them; the
/// `DelayWarned` log record makes it once per message, across restarts. The notice is queued
/// before the record is written: a crash in between sends it twice rather than never.
async fn warn_delay(ctx: &Rc<Ctx>, s: &crate::config::Settings, job: &Job, outs: &[Res], now: u64) {
    let deferred: Vec<&Res> = outs
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Deferred { .. }))
        .collect();
    if deferred.is_empty()
        || !crate::delivery::route::delay_warning_due(
            job.arrival_unix,
            now,
            s.delay_warning_time_secs,
            is_null_sender(&job.sender),
            job.delay_warned,
        )
    {
        return;
    }
    let recipients = deferred
        .iter()
        .map(|r| {
            let (addr, diag, is_smtp) = report_fields(job, r);
            // RFC 3464 §2.3.4: a delayed recipient's status is 4.x.x.
            let status = if r.dsn.starts_with('4') {
                r.dsn.clone()
            } else {
                "4.0.0".to_string()
            };
            (addr, status, r.remote_mta.clone(), is_smtp, diag)
        })
        .collect();
    let seq = ctx.delivery_seq.get();
    ctx.delivery_seq.set(seq + 1);
    let qid = job.qid.to_string();
    let notice = OwnedNotice {
        myhostname: s.myhostname.clone(),
        sender: job.sender.clone(),
        unique: format!("{now}.{qid}.{seq}.delay"),
        queue_id: qid,
        arrival_secs: job.arrival_unix,
        now_secs: now,
        recipients,
        size_limit: crate::limits::DSN_ORIGINAL_BYTES_MAX,
        retry_until: Some(job.arrival_unix.saturating_add(s.maximal_queue_lifetime_secs)),
    };
    match queue_notice(ctx, job, notice, now).await {
        Ok(Some(new_qid)) => {
            crate::log::line(
                "bounce",
                format_args!("qid={} sender delay notification: {new_qid}", job.qid),
            );
            if let Err(e) = ctx.queue.delay_warned(job.qid) {
                crate::log::line(
                    "bounce",
                    format_args!("qid={} warning: delay notice sent but not recorded: {e}", job.qid),
                );
            }
        }
        Ok(None) => {}
        Err(e) => crate::log::line(
            "bounce",
            format_args!("qid={} warning: sender delay notification not queued: {e}", job.qid),
        ),
    }
}

/// Build `notice` from the original on the thread pool and queue it from the null sender
/// to the original sender. Ok(None): nothing to send.
async fn queue_notice(ctx: &Rc<Ctx>, job: &Job, notice: OwnedNotice, now: u64) -> Result<Option<String>, String> {
    let mut body = ctx.queue.body(job.qid).map_err(|e| format!("queue read: {e}"))?;
    let text = smol::unblock(move || notice.build(&mut body))
        .await
        .map_err(|e| format!("queue read: {e}"))?;
    let Some(text) = text else {
        return Ok(None);
    };
    let new_qid = queue_notice_message(ctx, &job.sender, &text, now).await?;
    Ok(Some(new_qid))
}
