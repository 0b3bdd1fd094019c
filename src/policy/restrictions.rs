//! SMTP restriction lists (Postfix smtpd_*_restrictions) and their evaluation.
//!
//! # Syntax
//!
//! A list is Postfix list syntax (comma and/or whitespace separated). `check_*_access`
//! takes the next entry as its table (`type:name`, see [`super::table`]). Known names:
//!
//! ```text
//! permit_mynetworks  permit_sasl_authenticated  reject_unauth_destination
//! defer_unauth_destination  check_client_access T  check_helo_access T
//! check_sender_access T  check_recipient_access T  reject_non_fqdn_sender
//! reject_non_fqdn_recipient  reject_unknown_sender_domain  reject_unlisted_recipient
//! permit  reject  defer  dunno
//! ```
//!
//! Names are case-insensitive. Anything else (including Postfix restriction classes) is
//! an error naming the key. As Postfix, smtpd_relay_restrictions and
//! smtpd_recipient_restrictions together must contain reject_unauth_destination,
//! defer_unauth_destination, reject or defer, or poshta would be an open relay: that is
//! an error too.
//!
//! # Evaluation (Postfix semantics)
//!
//! Each list is tried in order; the first decisive restriction ends that list: `permit`
//! (and OK from a table) ends the list and the next list is tried; a reject or defer ends
//! everything. DUNNO and restrictions that do not apply go on to the next entry; a list
//! that runs out is passed. With smtpd_delay_reject = yes (the default) the client, HELO
//! and sender lists run at RCPT time ([`RestrictionLists::check_rcpt`]) so the log shows
//! the whole envelope; then smtpd_relay_restrictions, then smtpd_recipient_restrictions.
//!
//! Table results (see [`super::access`]): DISCARD accepts and ends every list (the
//! message is to be dropped: [`Verdict::discard`]); HOLD marks the message held and goes
//! on ([`Verdict::hold`]); DEFER_IF_PERMIT turns a final accept into a 450;
//! DEFER_IF_REJECT turns a later reject into a 450; WARN/INFO only log. A table result
//! that is a restriction list is evaluated in place (at most
//! [`RESTRICTION_NESTING_DEPTH_MAX`] deep). A table that is not loaded, or a result that
//! is not a valid restriction, defers with `451 4.3.5 Server configuration error` and
//! logs the cause (as Postfix).
//!
//! Replies (Postfix's default codes):
//!
//! | restriction | reply |
//! | --- | --- |
//! | reject_unauth_destination | `554 5.7.1 <rcpt>: Relay access denied` |
//! | defer_unauth_destination | `450 4.7.1 <rcpt>: Relay access denied` |
//! | reject_non_fqdn_sender/recipient | `504 5.5.2 <addr>: Sender/Recipient address rejected: need fully-qualified address` |
//! | reject_unknown_sender_domain | `450 4.1.8 <addr>: Sender address rejected: Domain not found` |
//! | reject_unlisted_recipient | `550 5.1.1 <rcpt>: Recipient address rejected: User unknown in local recipient table` |
//! | reject | `554 5.7.1 <name>: Class rejected: Access denied` |
//! | defer | `450 4.3.2 <name>: Class rejected: Try again later` |
//!
//! where name/Class are those of the list being evaluated (client `name[addr]`/Client
//! host, HELO name/Helo command, sender/Sender address, recipient/Recipient address,
//! `DATA`/Data command).
//!
//! reject_unauth_destination permits only a recipient whose domain is local
//! ([`Facts::recipient_domain_is_local`], or a bare `postmaster`) and whose local part
//! has no `@`, `%` or `!` (Postfix: no sender-specified routing; poshta never resolves
//! the percent hack or bang paths, so such an address can only be refused).
//! reject_unknown_sender_domain needs DNS; with [`Facts::sender_domain_resolves`] None
//! (no DNS) it does nothing. reject_non_fqdn_recipient lets the bare `postmaster`
//! through (RFC 5321 §4.5.1 requires it to be accepted).

use super::access::{self, AccessOptions, Action, ReplyClass};
use super::table::TableSet;
use crate::limits::RESTRICTION_NESTING_DEPTH_MAX;
use crate::proto::reply::Reply;
use std::net::IpAddr;

/// One restriction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restriction {
    PermitMynetworks,
    PermitSaslAuthenticated,
    RejectUnauthDestination,
    DeferUnauthDestination,
    CheckClientAccess(String),
    CheckHeloAccess(String),
    CheckSenderAccess(String),
    CheckRecipientAccess(String),
    RejectNonFqdnSender,
    RejectNonFqdnRecipient,
    RejectUnknownSenderDomain,
    RejectUnlistedRecipient,
    Permit,
    Reject,
    Defer,
    Dunno,
}

/// Parse a restriction list; `key` names the parameter in errors.
pub fn parse_list(key: &str, value: &str) -> Result<Vec<Restriction>, String> {
    use Restriction::*;
    let words = crate::config::value::split_list(value);
    let mut out = Vec::with_capacity(words.len());
    let mut it = words.into_iter();
    while let Some(w) = it.next() {
        let lw = w.to_ascii_lowercase();
        let mut table = |name: &str| -> Result<String, String> {
            match it.next() {
                Some(t) if t.contains(':') => Ok(t),
                Some(t) => Err(format!("{key}: {name} expects a type:table argument, not \"{t}\"")),
                None => Err(format!("{key}: {name} expects a type:table argument")),
            }
        };
        out.push(match lw.as_str() {
            "permit_mynetworks" => PermitMynetworks,
            "permit_sasl_authenticated" => PermitSaslAuthenticated,
            "reject_unauth_destination" => RejectUnauthDestination,
            "defer_unauth_destination" => DeferUnauthDestination,
            "check_client_access" => CheckClientAccess(table(&lw)?),
            "check_helo_access" => CheckHeloAccess(table(&lw)?),
            "check_sender_access" => CheckSenderAccess(table(&lw)?),
            "check_recipient_access" => CheckRecipientAccess(table(&lw)?),
            "reject_non_fqdn_sender" => RejectNonFqdnSender,
            "reject_non_fqdn_recipient" => RejectNonFqdnRecipient,
            "reject_unknown_sender_domain" => RejectUnknownSenderDomain,
            "reject_unlisted_recipient" => RejectUnlistedRecipient,
            "permit" => Permit,
            "reject" => Reject,
            "defer" => Defer,
            "dunno" => Dunno,
            _ => return Err(format!("{key}: unknown restriction \"{w}\"")),
        });
    }
    Ok(out)
}

/// Where a list is evaluated (Postfix's smtpd_*_restrictions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Client,
    Helo,
    Sender,
    Relay,
    Recipient,
    Data,
}

/// What the server knows when it asks. The integrator fills it from the session.
#[derive(Debug, Clone)]
pub struct Facts<'a> {
    pub client_ip: IpAddr,
    /// Verified reverse name, or `unknown`.
    pub client_name: &'a str,
    pub helo: Option<&'a str>,
    /// None before MAIL FROM; Some("") for the null sender.
    pub sender: Option<&'a str>,
    pub recipient: Option<&'a str>,
    pub sasl_user: Option<&'a str>,
    /// The client is in mynetworks.
    pub trusted: bool,
    /// The recipient's domain is a final destination here (mydestination).
    pub recipient_domain_is_local: bool,
    /// The recipient is a known local user (the router's `Local`).
    pub recipient_is_local: bool,
    /// The sender's domain is a final destination here.
    pub sender_domain_is_local: bool,
    /// Whether the sender's domain has an A/AAAA/MX record; None: DNS not in use.
    pub sender_domain_resolves: Option<bool>,
}

impl<'a> Facts<'a> {
    /// A client with no name, no session state and nothing known.
    pub fn new(client_ip: IpAddr) -> Facts<'a> {
        Facts {
            client_ip,
            client_name: "unknown",
            helo: None,
            sender: None,
            recipient: None,
            sasl_user: None,
            trusted: false,
            recipient_domain_is_local: false,
            recipient_is_local: false,
            sender_domain_is_local: false,
            sender_domain_resolves: None,
        }
    }

    fn ip(&self) -> IpAddr {
        match self.client_ip {
            IpAddr::V6(a) => a.to_ipv4_mapped().map_or(self.client_ip, IpAddr::V4),
            v4 => v4,
        }
    }

    /// Postfix's namaddr: `name[address]`.
    pub fn namaddr(&self) -> String {
        format!("{}[{}]", self.client_name, self.ip())
    }
}

/// The outcome of one list or of all lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// A permit ended the list.
    Permit,
    /// The list ran out (for the whole check: accepted).
    Dunno,
    Reject(Reply),
    Defer(Reply),
}

impl Decision {
    /// The request goes ahead (Permit or Dunno).
    pub fn accepts(&self) -> bool {
        matches!(self, Decision::Permit | Decision::Dunno)
    }

    /// The reply to send instead of accepting.
    pub fn reply(&self) -> Option<&Reply> {
        match self {
            Decision::Reject(r) | Decision::Defer(r) => Some(r),
            _ => None,
        }
    }
}

/// A decision plus what the tables asked for on the side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub decision: Decision,
    /// DISCARD: accept but drop the message; the log text
    /// (`<a@b>: Sender address triggers DISCARD action`).
    pub discard: Option<String>,
    /// HOLD: keep the message on hold; the log text.
    pub hold: Option<String>,
    /// Lines for the log: WARN/INFO results and configuration problems (which table,
    /// which result), never shown to the client.
    pub log: Vec<String>,
}

/// The parsed lists and the options they are evaluated with.
#[derive(Debug, Clone, Default)]
pub struct RestrictionLists {
    pub client: Vec<Restriction>,
    pub helo: Vec<Restriction>,
    pub sender: Vec<Restriction>,
    pub relay: Vec<Restriction>,
    pub recipient: Vec<Restriction>,
    pub data: Vec<Restriction>,
    /// smtpd_delay_reject.
    pub delay_reject: bool,
    pub opts: AccessOptions,
}

/// Postfix's default smtpd_relay_restrictions as this issue specifies (Postfix ≥ 3.0
/// itself uses defer_unauth_destination).
pub const DEFAULT_RELAY_RESTRICTIONS: &str = "permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination";

impl RestrictionLists {
    /// Parse the six lists from main.cf values, `get(key)` giving the expanded value.
    pub fn parse(get: impl Fn(&str) -> String) -> Result<RestrictionLists, String> {
        let p = |k: &str| parse_list(k, &get(k));
        let l = RestrictionLists {
            client: p("smtpd_client_restrictions")?,
            helo: p("smtpd_helo_restrictions")?,
            sender: p("smtpd_sender_restrictions")?,
            relay: p("smtpd_relay_restrictions")?,
            recipient: p("smtpd_recipient_restrictions")?,
            data: p("smtpd_data_restrictions")?,
            delay_reject: !get("smtpd_delay_reject").trim().eq_ignore_ascii_case("no"),
            opts: AccessOptions {
                parent_domain_matches_subdomains: crate::config::value::split_list(&get(
                    "parent_domain_matches_subdomains",
                ))
                .iter()
                .any(|w| w == "smtpd_access_maps"),
                recipient_delimiter: get("recipient_delimiter"),
            },
        };
        let guards = |r: &Restriction| {
            matches!(
                r,
                Restriction::RejectUnauthDestination
                    | Restriction::DeferUnauthDestination
                    | Restriction::Reject
                    | Restriction::Defer
            )
        };
        if !l.relay.iter().chain(&l.recipient).any(guards) {
            return Err(
                "smtpd_relay_restrictions and smtpd_recipient_restrictions both specify a list \
                        without restrictions that restrict relaying (add reject_unauth_destination)"
                    .into(),
            );
        }
        Ok(l)
    }

    /// The lists from loaded settings.
    pub fn from_settings(s: &crate::config::Settings) -> Result<RestrictionLists, String> {
        RestrictionLists::parse(|k| match k {
            "smtpd_client_restrictions" => s.smtpd_client_restrictions.clone(),
            "smtpd_helo_restrictions" => s.smtpd_helo_restrictions.clone(),
            "smtpd_sender_restrictions" => s.smtpd_sender_restrictions.clone(),
            "smtpd_relay_restrictions" => s.smtpd_relay_restrictions.clone(),
            "smtpd_recipient_restrictions" => s.smtpd_recipient_restrictions.clone(),
            "smtpd_data_restrictions" => s.smtpd_data_restrictions.clone(),
            "smtpd_delay_reject" => if s.smtpd_delay_reject { "yes" } else { "no" }.into(),
            "parent_domain_matches_subdomains" => s.parent_domain_matches_subdomains.join(" "),
            "recipient_delimiter" => s.recipient_delimiter.clone(),
            _ => String::new(),
        })
    }

    /// Whether a list names reject_unknown_sender_domain (the session then looks the
    /// sender's domain up in DNS; a table result naming it is not seen here).
    pub fn checks_sender_domain(&self) -> bool {
        [
            &self.client,
            &self.helo,
            &self.sender,
            &self.relay,
            &self.recipient,
            &self.data,
        ]
        .iter()
        .any(|l| l.contains(&Restriction::RejectUnknownSenderDomain))
    }

    /// Every table the lists name (load them into the [`TableSet`] at start).
    pub fn table_specs(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for r in self
            .client
            .iter()
            .chain(&self.helo)
            .chain(&self.sender)
            .chain(&self.relay)
            .chain(&self.recipient)
            .chain(&self.data)
        {
            if let Restriction::CheckClientAccess(t)
            | Restriction::CheckHeloAccess(t)
            | Restriction::CheckSenderAccess(t)
            | Restriction::CheckRecipientAccess(t) = r
            {
                if !out.contains(t) {
                    out.push(t.clone());
                }
            }
        }
        out
    }

    fn list(&self, stage: Stage) -> &[Restriction] {
        match stage {
            Stage::Client => &self.client,
            Stage::Helo => &self.helo,
            Stage::Sender => &self.sender,
            Stage::Relay => &self.relay,
            Stage::Recipient => &self.recipient,
            Stage::Data => &self.data,
        }
    }

    /// Evaluate one stage's list alone (smtpd_delay_reject = no: client at connect, HELO
    /// at HELO, sender at MAIL; and DATA).
    pub fn check(&self, stage: Stage, facts: &Facts, tables: &TableSet) -> Verdict {
        self.run(&[stage], facts, tables)
    }

    /// RCPT TO: with delay_reject the client, HELO and sender lists first, then relay and
    /// recipient; without it only relay and recipient (the others ran earlier).
    pub fn check_rcpt(&self, facts: &Facts, tables: &TableSet) -> Verdict {
        if self.delay_reject {
            self.run(
                &[
                    Stage::Client,
                    Stage::Helo,
                    Stage::Sender,
                    Stage::Relay,
                    Stage::Recipient,
                ],
                facts,
                tables,
            )
        } else {
            self.run(&[Stage::Relay, Stage::Recipient], facts, tables)
        }
    }

    fn run(&self, stages: &[Stage], facts: &Facts, tables: &TableSet) -> Verdict {
        let mut st = State::default();
        let mut decision = Decision::Dunno;
        for &stage in stages {
            let mut ev = Eval {
                facts,
                tables,
                opts: &self.opts,
                stage,
                st: &mut st,
            };
            match ev.list(self.list(stage), 0) {
                Decision::Permit => decision = Decision::Permit,
                Decision::Dunno => {}
                d => {
                    decision = d;
                    break;
                }
            }
            if st.discard.is_some() {
                break;
            }
        }
        if decision.accepts() && st.discard.is_none() {
            if let Some(r) = st.defer_if_permit.take() {
                decision = Decision::Defer(r);
            }
        }
        Verdict {
            decision,
            discard: st.discard,
            hold: st.hold,
            log: st.log,
        }
    }
}

#[derive(Default)]
struct State {
    defer_if_permit: Option<Reply>,
    defer_if_reject: bool,
    discard: Option<String>,
    hold: Option<String>,
    log: Vec<String>,
}

struct Eval<'e, 'f> {
    facts: &'e Facts<'f>,
    tables: &'e TableSet,
    opts: &'e AccessOptions,
    stage: Stage,
    st: &'e mut State,
}

const CONFIG_ERROR: &str = "4.3.5 Server configuration error";

fn config_error() -> Decision {
    Decision::Defer(Reply::new(451, CONFIG_ERROR))
}

/// A fully-qualified domain: a domain literal, or a valid host name with a dot.
fn is_fqdn(domain: &str) -> bool {
    if domain.starts_with('[') && domain.ends_with(']') {
        return true;
    }
    let d = domain.strip_suffix('.').unwrap_or(domain);
    d.contains('.') && crate::config::value::check_hostname(d).is_ok()
}

impl Eval<'_, '_> {
    /// The name and class generic reject/defer use in this stage.
    fn subject(&self) -> (ReplyClass, String) {
        let f = self.facts;
        match self.stage {
            Stage::Client => (ReplyClass::Client, f.namaddr()),
            Stage::Helo => (ReplyClass::Helo, f.helo.unwrap_or("").to_string()),
            Stage::Sender => (ReplyClass::Sender, f.sender.unwrap_or("").to_string()),
            Stage::Relay | Stage::Recipient => (ReplyClass::Recipient, f.recipient.unwrap_or("").to_string()),
            Stage::Data => (ReplyClass::Data, "DATA".to_string()),
        }
    }

    /// A reject, unless DEFER_IF_REJECT asked for a defer instead.
    fn reject(&mut self, r: Reply) -> Decision {
        if self.st.defer_if_reject && r.code >= 500 {
            let text = r
                .text
                .strip_prefix('5')
                .map(|t| format!("4{t}"))
                .unwrap_or(r.text.to_string());
            return Decision::Defer(Reply::owned(450, text));
        }
        if r.code < 500 {
            Decision::Defer(r)
        } else {
            Decision::Reject(r)
        }
    }

    fn list(&mut self, list: &[Restriction], depth: usize) -> Decision {
        for r in list {
            match self.one(r, depth) {
                Decision::Dunno => {}
                d => return d,
            }
            if self.st.discard.is_some() {
                return Decision::Permit;
            }
        }
        Decision::Dunno
    }

    fn one(&mut self, r: &Restriction, depth: usize) -> Decision {
        use Restriction::*;
        let f = self.facts;
        match r {
            PermitMynetworks if f.trusted => Decision::Permit,
            PermitSaslAuthenticated if f.sasl_user.is_some() => Decision::Permit,
            RejectUnauthDestination | DeferUnauthDestination => {
                let Some(rcpt) = f.recipient else {
                    return Decision::Dunno;
                };
                if self.authorized_destination(rcpt) {
                    return Decision::Dunno;
                }
                // RFC 5321 §3.6.1 / §7.1: no relaying for unauthorized clients.
                if *r == RejectUnauthDestination {
                    self.reject(Reply::owned(554, format!("5.7.1 <{rcpt}>: Relay access denied")))
                } else {
                    Decision::Defer(Reply::owned(450, format!("4.7.1 <{rcpt}>: Relay access denied")))
                }
            }
            CheckClientAccess(spec) => {
                let ip = f.ip().to_string();
                let mut wholes: Vec<(String, Vec<String>)> = Vec::new();
                if !f.client_name.is_empty() && !f.client_name.eq_ignore_ascii_case("unknown") {
                    wholes.push((f.client_name.to_string(), access::domain_keys(f.client_name, self.opts)));
                }
                wholes.push((ip.clone(), access::ip_keys(&ip)));
                self.check_access(spec, &wholes, ReplyClass::Client, &f.namaddr(), depth)
            }
            CheckHeloAccess(spec) => match f.helo {
                Some(h) if !h.is_empty() => {
                    let keys = access::domain_keys(h, self.opts);
                    self.check_access(spec, &[(h.to_string(), keys)], ReplyClass::Helo, h, depth)
                }
                _ => Decision::Dunno,
            },
            CheckSenderAccess(spec) => match f.sender {
                Some(s) => {
                    let whole = if s.is_empty() { "<>" } else { s };
                    let keys = access::address_keys(s, self.opts);
                    self.check_access(spec, &[(whole.to_string(), keys)], ReplyClass::Sender, s, depth)
                }
                None => Decision::Dunno,
            },
            CheckRecipientAccess(spec) => match f.recipient {
                Some(rc) => {
                    let keys = access::address_keys(rc, self.opts);
                    self.check_access(spec, &[(rc.to_string(), keys)], ReplyClass::Recipient, rc, depth)
                }
                None => Decision::Dunno,
            },
            RejectNonFqdnSender => match f.sender {
                Some(s) if !s.is_empty() && !is_fqdn(s.rsplit_once('@').map_or("", |(_, d)| d)) => {
                    self.reject(Reply::owned(
                        504,
                        format!("5.5.2 <{s}>: Sender address rejected: need fully-qualified address"),
                    ))
                }
                _ => Decision::Dunno,
            },
            RejectNonFqdnRecipient => match f.recipient {
                // RFC 5321 §4.5.1: <Postmaster> without a domain must be accepted.
                Some(rc) if rc.eq_ignore_ascii_case("postmaster") => Decision::Dunno,
                Some(rc) if !is_fqdn(rc.rsplit_once('@').map_or("", |(_, d)| d)) => self.reject(Reply::owned(
                    504,
                    format!("5.5.2 <{rc}>: Recipient address rejected: need fully-qualified address"),
                )),
                _ => Decision::Dunno,
            },
            RejectUnknownSenderDomain => match (f.sender, f.sender_domain_resolves) {
                (Some(s), Some(false)) if !s.is_empty() && !f.sender_domain_is_local => Decision::Defer(Reply::owned(
                    450,
                    format!("4.1.8 <{s}>: Sender address rejected: Domain not found"),
                )),
                _ => Decision::Dunno,
            },
            RejectUnlistedRecipient => match f.recipient {
                Some(rc) if f.recipient_domain_is_local && !f.recipient_is_local => self.reject(Reply::owned(
                    550,
                    format!("5.1.1 <{rc}>: Recipient address rejected: User unknown in local recipient table"),
                )),
                _ => Decision::Dunno,
            },
            Permit => Decision::Permit,
            Reject => {
                let (class, name) = self.subject();
                let r = access::reject_reply(554, "5.7.1", None, class, &name);
                self.reject(r)
            }
            Defer => {
                let (class, name) = self.subject();
                Decision::Defer(access::reject_reply(
                    450,
                    "4.3.2",
                    Some("Try again later"),
                    class,
                    &name,
                ))
            }
            PermitMynetworks | PermitSaslAuthenticated | Dunno => Decision::Dunno,
        }
    }

    /// reject_unauth_destination's test: a local domain and no sender-specified routing.
    fn authorized_destination(&self, rcpt: &str) -> bool {
        match rcpt.rsplit_once('@') {
            // A bare local part (postmaster) is local; the router decides the rest.
            None => !rcpt.contains(['%', '!']),
            Some((local, _)) => self.facts.recipient_domain_is_local && !local.contains(['@', '%', '!']),
        }
    }

    fn check_access(
        &mut self,
        spec: &str,
        wholes: &[(String, Vec<String>)],
        class: ReplyClass,
        name: &str,
        depth: usize,
    ) -> Decision {
        let tables = self.tables;
        let Some(table) = tables.get(spec) else {
            self.st
                .log
                .push(format!("warning: {spec} is unavailable (not loaded); {CONFIG_ERROR}"));
            return config_error();
        };
        let found = wholes
            .iter()
            .find_map(|(whole, keys)| access::lookup(table, whole, keys));
        let Some((_key, value)) = found else {
            return Decision::Dunno;
        };
        self.apply(spec, &value, class, name, depth)
    }

    fn apply(&mut self, spec: &str, value: &str, class: ReplyClass, name: &str, depth: usize) -> Decision {
        let text = |t: &Option<String>| t.clone();
        match access::parse_action(value) {
            Action::Ok => Decision::Permit,
            Action::Dunno => Decision::Dunno,
            Action::Reject(t) => {
                let r = access::reject_reply(554, "5.7.1", text(&t).as_deref(), class, name);
                self.reject(r)
            }
            Action::Defer(t) => Decision::Defer(access::reject_reply(450, "4.7.1", t.as_deref(), class, name)),
            Action::Code(code, t) => {
                let dsn = if code < 500 { "4.7.1" } else { "5.7.1" };
                let r = access::reject_reply(code, dsn, t.as_deref(), class, name);
                self.reject(r)
            }
            Action::DeferIfPermit(t) => {
                let shown = t.as_deref().or(Some("Service unavailable"));
                if self.st.defer_if_permit.is_none() {
                    self.st.defer_if_permit = Some(access::reject_reply(450, "4.7.1", shown, class, name));
                }
                Decision::Dunno
            }
            Action::DeferIfReject(_) => {
                self.st.defer_if_reject = true;
                Decision::Dunno
            }
            Action::Discard(t) => {
                self.st.discard = Some(access::action_log_text("DISCARD", t.as_deref(), class, name));
                Decision::Permit
            }
            Action::Hold(t) => {
                self.st.hold = Some(access::action_log_text("HOLD", t.as_deref(), class, name));
                Decision::Dunno
            }
            Action::Warn(t) | Action::Info(t) => {
                self.st
                    .log
                    .push(access::action_log_text("WARN", t.as_deref(), class, name));
                Decision::Dunno
            }
            Action::Restrictions(list) => {
                if depth + 1 > RESTRICTION_NESTING_DEPTH_MAX {
                    self.st.log.push(format!(
                        "warning: {spec}: restrictions nested deeper than {RESTRICTION_NESTING_DEPTH_MAX}; {CONFIG_ERROR}"
                    ));
                    return config_error();
                }
                match parse_list(spec, &list) {
                    Ok(rs) if !rs.is_empty() => self.list(&rs, depth + 1),
                    Ok(_) => Decision::Dunno,
                    Err(e) => {
                        self.st
                            .log
                            .push(format!("warning: {e} (in the result for <{name}>); {CONFIG_ERROR}"));
                        config_error()
                    }
                }
            }
        }
    }
}
