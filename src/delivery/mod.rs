//! Delivery agents.

pub mod dsn;
pub mod local;
pub mod maildir;
pub mod mbox;
pub mod route;

/// Why a delivery failed, and whether trying again could help
/// (an unclassified error is temporary).
#[derive(Debug)]
pub struct DeliveryError {
    pub permanent: bool,
    /// Logged cause (may name paths; never sent to an SMTP client).
    pub reason: String,
}

impl DeliveryError {
    /// Trying again later may succeed (the default for anything unclassified: mail
    /// stays queued rather than bouncing on a local fault).
    pub fn temporary(reason: impl Into<String>) -> DeliveryError {
        DeliveryError {
            permanent: false,
            reason: reason.into(),
        }
    }

    /// Trying again cannot help: bounce.
    pub fn permanent(reason: impl Into<String>) -> DeliveryError {
        DeliveryError {
            permanent: true,
            reason: reason.into(),
        }
    }
}

impl std::fmt::Display for DeliveryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for DeliveryError {}
