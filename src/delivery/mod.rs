//! Delivery agents.

pub mod maildir;

/// Why a delivery failed, and whether trying again could help
/// (an unclassified error is temporary).
#[derive(Debug)]
pub struct DeliveryError {
    pub permanent: bool,
    /// Logged cause (may name paths; never sent to an SMTP client).
    pub reason: String,
}

impl std::fmt::Display for DeliveryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}
