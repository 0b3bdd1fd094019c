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
use crate::delivery::maildir::{self, MaildirDelivery};
use crate::delivery::route::{retry_decision, route, Retry, RetryPolicy, Route};
use crate::limits::{LOCAL_DELIVERY_BATCH_MESSAGES, LOCAL_DELIVERY_CONCURRENCY_MAX};
use crate::policy::RcptClass;
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
    }
}

pub async fn runner(ctx: Rc<Ctx>) {
    loop {
        if ctx.stopping.get() {
            return;
        }
        let paused = ctx.policy().settings.delivery_paused;
        if !paused {
            let room = LOCAL_DELIVERY_CONCURRENCY_MAX.saturating_sub(ctx.deliveries.get());
            if room > 0 {
                let jobs = ctx
                    .queue
                    .ready(crate::time::now_unix(), room * LOCAL_DELIVERY_BATCH_MESSAGES);
                for batch in jobs.chunks(LOCAL_DELIVERY_BATCH_MESSAGES) {
                    ctx.deliveries.set(ctx.deliveries.get() + 1);
                    let c = ctx.clone();
                    let batch = batch.to_vec();
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

async fn deliver_batch(ctx: &Rc<Ctx>, jobs: Vec<Job>) {
    let policy = ctx.policy();
    let s = &policy.settings;
    let started = Instant::now();
    // Per job: results in any order.
    let mut outcomes: Vec<Vec<Res>> = (0..jobs.len()).map(|_| Vec::new()).collect();
    let mut locals = Vec::new();
    // Remote recipients: (job, rcpt index, address), routed below.
    let mut remote: Vec<(usize, usize, String)> = Vec::new();
    for (j, job) in jobs.iter().enumerate() {
        for (idx, addr) in &job.recipients {
            match policy.router.classify(addr) {
                RcptClass::Local { user } => match ctx.queue.body(job.qid) {
                    Ok(body) => {
                        let seq = ctx.delivery_seq.get();
                        ctx.delivery_seq.set(seq + 1);
                        locals.push(Local {
                            job: j,
                            idx: *idx,
                            maildir: s.virtual_mailbox_base.join(&user),
                            body,
                            seq,
                            // RFC 5321 §4.4: the final delivery adds Return-Path:;
                            // Delivered-To: marks the mailbox (loop detection, as Postfix's
                            // local/virtual do).
                            prepend: format!("Return-Path: <{}>\nDelivered-To: {}\n", job.sender, addr),
                            size: job.size,
                        })
                    }
                    Err(e) => outcomes[j].push(res(
                        *idx,
                        Outcome::Deferred {
                            reason: format!("queue read: {e}"),
                        },
                        "local",
                    )),
                },
                RcptClass::UnknownLocal => outcomes[j].push(res(
                    *idx,
                    Outcome::Bounced {
                        reason: UNKNOWN_USER.into(),
                    },
                    "local",
                )),
                RcptClass::Remote => remote.push((j, *idx, addr.clone())),
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
            outcomes[j].push(match r {
                Ok(_) => res(idx, Outcome::Delivered, "local"),
                Err(e) if e.permanent => res(idx, Outcome::Bounced { reason: e.reason }, "local"),
                Err(e) => res(idx, Outcome::Deferred { reason: e.reason }, "local"),
            });
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
        let done: Vec<(usize, Outcome)> = outs.into_iter().map(|r| (r.idx, r.outcome)).collect();
        ctx.queue.finish(job.qid, &done, now);
    }
}

/// Build a bounce (RFC 3464 multipart/report) for the bounced recipients of `job` and queue
/// it from the null sender (RFC 5321 §4.5.5) to the original sender. Returns its queue id.
async fn notify_sender(ctx: &Rc<Ctx>, myhostname: &str, job: &Job, outs: &[Res], now: u64) -> Result<String, String> {
    let failed: Vec<(String, String, Option<String>, bool, String)> = outs
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Bounced { .. }))
        .map(|r| {
            let addr = job
                .recipients
                .iter()
                .find(|(i, _)| *i == r.idx)
                .map(|(_, a)| a.clone())
                .unwrap_or_default();
            let reason = match &r.outcome {
                Outcome::Bounced { reason } => reason.clone(),
                _ => String::new(),
            };
            // An SMTP reply goes in as `smtp; <reply>` (RFC 3464 §2.3.6); anything else is
            // a local text.
            let (diag, is_smtp) = match r.diagnostic.strip_prefix("smtp; ") {
                Some(reply) => (reply.to_string(), true),
                None => (reason, false),
            };
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
    let mut inc = ctx
        .queue
        .begin(crate::queue::Envelope {
            sender: String::new(),
            recipients: vec![job.sender.clone()],
            arrival_unix: now,
            client: "localhost[127.0.0.1]".into(),
        })
        .map_err(|e| e.to_string())?;
    let new_qid = inc.qid().to_string();
    for chunk in text.chunks(64 * 1024) {
        inc.write(chunk).await.map_err(|e| e.to_string())?;
    }
    inc.commit().await.map_err(|e| e.to_string())?;
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
async fn relay_conf(ctx: &Rc<Ctx>, policy: &Rc<super::Policy>) -> Rc<RelayConf> {
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
            let addr = job
                .recipients
                .iter()
                .find(|(i, _)| *i == r.idx)
                .map(|(_, a)| a.clone())
                .unwrap_or_default();
            let reason = match &r.outcome {
                Outcome::Deferred { reason } => reason.clone(),
                _ => String::new(),
            };
            let (diag, is_smtp) = match r.diagnostic.strip_prefix("smtp; ") {
                Some(reply) => (reply.to_string(), true),
                None => (reason, false),
            };
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
    let mut inc = ctx
        .queue
        .begin(crate::queue::Envelope {
            sender: String::new(),
            recipients: vec![job.sender.clone()],
            arrival_unix: now,
            client: "localhost[127.0.0.1]".into(),
        })
        .map_err(|e| e.to_string())?;
    let new_qid = inc.qid().to_string();
    for chunk in text.chunks(64 * 1024) {
        inc.write(chunk).await.map_err(|e| e.to_string())?;
    }
    inc.commit().await.map_err(|e| e.to_string())?;
    Ok(Some(new_qid))
}
