//! The delivery runner: takes due messages from the queue and delivers them, at most
//! limits::LOCAL_DELIVERY_CONCURRENCY_MAX at a time. Each delivery job runs its blocking
//! Maildir writes (with fsync) on the thread pool; concurrent jobs let the file system
//! batch their journal commits.
//!
//! Routing is decided here, at delivery time (Postfix's trivial-rewrite does the same): a
//! local mailbox user gets a Maildir copy; a remote recipient waits (deferred) until
//! outbound delivery exists; a local recipient that no longer exists bounces.

use std::rc::Rc;
use std::time::{Duration, Instant};

use smol::Timer;

use super::Ctx;
use crate::delivery::maildir::{self, MaildirDelivery};
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
            let room = crate::limits::LOCAL_DELIVERY_CONCURRENCY_MAX.saturating_sub(ctx.deliveries.get());
            if room > 0 {
                for job in ctx.queue.ready(crate::time::now_unix(), room) {
                    ctx.deliveries.set(ctx.deliveries.get() + 1);
                    let c = ctx.clone();
                    ctx.ex
                        .spawn(async move {
                            deliver_job(&c, job).await;
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

async fn deliver_job(ctx: &Rc<Ctx>, job: Job) {
    let policy = ctx.policy();
    let s = &policy.settings;
    let started = Instant::now();
    let mut outcomes: Vec<(usize, Outcome, String)> = Vec::new();
    struct Local {
        idx: usize,
        addr: String,
        maildir: std::path::PathBuf,
        body: crate::queue::BodyReader,
        seq: u64,
    }
    let mut locals = Vec::new();
    for (idx, addr) in &job.recipients {
        match policy.router.classify(addr) {
            RcptClass::Local { user } => match ctx.queue.body(job.qid) {
                Ok(body) => {
                    let seq = ctx.delivery_seq.get();
                    ctx.delivery_seq.set(seq + 1);
                    locals.push(Local {
                        idx: *idx,
                        addr: addr.clone(),
                        maildir: s.virtual_mailbox_base.join(&user),
                        body,
                        seq,
                    })
                }
                Err(e) => outcomes.push((
                    *idx,
                    Outcome::Deferred {
                        reason: format!("queue read: {e}"),
                    },
                    "local".into(),
                )),
            },
            RcptClass::UnknownLocal => outcomes.push((
                *idx,
                Outcome::Bounced {
                    reason: "unknown user (no such mailbox user)".into(),
                },
                "local".into(),
            )),
            RcptClass::Remote => outcomes.push((
                *idx,
                Outcome::Deferred {
                    reason: NO_RELAY_YET.into(),
                },
                "none".into(),
            )),
        }
    }
    if !locals.is_empty() {
        let hostname = s.myhostname.clone();
        let sender = job.sender.clone();
        let size = job.size;
        let results = smol::unblock(move || {
            let mut out = Vec::new();
            for mut l in locals {
                let (secs, micros) = crate::time::now();
                // RFC 5321 §4.4: the final delivery adds Return-Path:; Delivered-To: marks
                // the mailbox (loop detection, as Postfix's local/virtual do).
                let prepend = format!("Return-Path: <{}>\nDelivered-To: {}\n", sender, l.addr);
                let d = MaildirDelivery {
                    maildir: &l.maildir,
                    hostname: &hostname,
                    prepend: prepend.as_bytes(),
                    body_size: size,
                    now_secs: secs,
                    now_micros: micros,
                    seq: l.seq,
                };
                let r = maildir::deliver(&d, &mut l.body);
                out.push((l.idx, r));
            }
            out
        })
        .await;
        for (idx, r) in results {
            match r {
                Ok(_) => outcomes.push((idx, Outcome::Delivered, "local".into())),
                Err(e) if e.permanent => outcomes.push((idx, Outcome::Bounced { reason: e.reason }, "local".into())),
                Err(e) => outcomes.push((idx, Outcome::Deferred { reason: e.reason }, "local".into())),
            }
        }
    }
    let delay = started.elapsed().as_secs_f64() + crate::time::now_unix().saturating_sub(job.arrival_unix) as f64;
    for (idx, outcome, relay) in &outcomes {
        let addr = job
            .recipients
            .iter()
            .find(|(i, _)| i == idx)
            .map(|(_, a)| a.as_str())
            .unwrap_or("");
        let (status, detail) = match outcome {
            Outcome::Delivered => ("sent", "delivered to maildir".to_string()),
            Outcome::Deferred { reason } => ("deferred", reason.clone()),
            Outcome::Bounced { reason } => ("bounced", reason.clone()),
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
    let done: Vec<(usize, Outcome)> = outcomes.into_iter().map(|(i, o, _)| (i, o)).collect();
    ctx.queue.finish(job.qid, &done, crate::time::now_unix());
}
