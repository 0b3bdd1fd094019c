//! Recipient classification (policy helper implements).

use super::RcptClass;
use crate::auth::users::Users;

/// Classifies recipient addresses against mydestination and the mailbox users.
#[derive(Debug, Clone)]
pub struct Router {
    _p: (),
}

impl Router {
    /// `mydestination`: lowercased domains; `recipient_delimiter`: "" or e.g. "+".
    pub fn new(mydestination: Vec<String>, recipient_delimiter: String, users: Users) -> Router {
        let _ = (mydestination, recipient_delimiter, users);
        todo!("policy helper")
    }

    /// `addr` is `local@domain` or the bare `postmaster`.
    pub fn classify(&self, addr: &str) -> RcptClass {
        let _ = addr;
        todo!()
    }

    pub fn is_local_domain(&self, domain: &str) -> bool {
        let _ = domain;
        todo!()
    }
}
