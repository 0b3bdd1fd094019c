//! The delivery runner: takes due messages from the queue and delivers them in batches of
//! up to limits::LOCAL_DELIVERY_BATCH_MESSAGES, at most limits::LOCAL_DELIVERY_CONCURRENCY_MAX
//! batches at a time. A batch is one blocking job on the thread pool: each message is
//! written to tmp/, fsynced and renamed into new/ (Maildir spec), and each Maildir's new/ is
//! fsynced once for the whole batch before any of its messages is recorded as delivered.
//! Batching keeps the per-message cost (thread hand-offs, directory flushes, lock contention
//! on one busy Maildir) low; under light load a batch is a single message.
//!
//! Routing is decided here, at delivery time (Postfix's trivial-rewrite does the same): a
//! local mailbox user gets a Maildir copy; a remote recipient waits (deferred) until
//! outbound delivery exists; a local recipient that no longer exists bounces.

use std::rc::Rc;
use std::time::{Duration, Instant};

use smol::Timer;

use super::Ctx;
use crate::delivery::maildir::{self, MaildirDelivery};
use crate::limits::{LOCAL_DELIVERY_BATCH_MESSAGES, LOCAL_DELIVERY_CONCURRENCY_MAX};
use crate::policy::RcptClass;
use crate::queue::{Job, Outcome};

/// Why a relayed message waits (shown in mailq).
pub const NO_RELAY_YET: &str = "delivery to remote domains is not available yet";

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
    // Per job: (rcpt index, outcome, relay) in any order.
    let mut outcomes: Vec<Vec<(usize, Outcome, &'static str)>> = vec![Vec::new(); jobs.len()];
    let mut locals = Vec::new();
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
                    Err(e) => outcomes[j].push((
                        *idx,
                        Outcome::Deferred {
                            reason: format!("queue read: {e}"),
                        },
                        "local",
                    )),
                },
                RcptClass::UnknownLocal => outcomes[j].push((
                    *idx,
                    Outcome::Bounced {
                        reason: "unknown user (no such mailbox user)".into(),
                    },
                    "local",
                )),
                RcptClass::Remote => outcomes[j].push((
                    *idx,
                    Outcome::Deferred {
                        reason: NO_RELAY_YET.into(),
                    },
                    "none",
                )),
            }
        }
    }
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
                Ok(_) => (idx, Outcome::Delivered, "local"),
                Err(e) if e.permanent => (idx, Outcome::Bounced { reason: e.reason }, "local"),
                Err(e) => (idx, Outcome::Deferred { reason: e.reason }, "local"),
            });
        }
    }
    let now = crate::time::now_unix();
    for (job, outs) in jobs.iter().zip(outcomes) {
        let delay = started.elapsed().as_secs_f64() + now.saturating_sub(job.arrival_unix) as f64;
        for (idx, outcome, relay) in &outs {
            let addr = job
                .recipients
                .iter()
                .find(|(i, _)| i == idx)
                .map(|(_, a)| a.as_str())
                .unwrap_or("");
            let (status, detail) = match outcome {
                Outcome::Delivered => ("sent", "delivered to maildir"),
                Outcome::Deferred { reason } => ("deferred", reason.as_str()),
                Outcome::Bounced { reason } => ("bounced", reason.as_str()),
            };
            let service = if *relay == "local" { "virtual" } else { "qmgr" };
            crate::log::line(
                service,
                format_args!(
                    "qid={} to=<{}>, relay={}, delay={:.2}, status={} ({})",
                    job.qid, addr, relay, delay, status, detail
                ),
            );
        }
        let done: Vec<(usize, Outcome)> = outs.into_iter().map(|(i, o, _)| (i, o)).collect();
        ctx.queue.finish(job.qid, &done, now);
    }
}
