//! SASL server exchanges (RFC 4422), sans-IO, for the two mechanisms mail programs use over
//! TLS: PLAIN (RFC 4616) and LOGIN (draft-murchison-sasl-login). Shared by SMTP AUTH
//! (RFC 4954) and POP3 AUTH (RFC 5034): the protocol core frames challenges (`334 ` or
//! `+ `) and passes each client line here.
//!
//! ```text
//! let (mut ex, step) = Exchange::start(Mechanism::Plain, initial_response);
//! loop { match step { Challenge(b64) => send it, read a line, step = ex.step(line),
//!                     Done(creds) => verify, Failed(e) => reply with an error } }
//! ```

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

/// RFC 4616 §2: authzid, authcid and passwd are each at most 255 octets.
pub const FIELD_BYTES_MAX: usize = 255;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    Plain,
    Login,
}

impl Mechanism {
    /// Mechanism names are case-insensitive (RFC 4422 §3.1).
    pub fn parse(name: &str) -> Option<Mechanism> {
        if name.eq_ignore_ascii_case("PLAIN") {
            Some(Mechanism::Plain)
        } else if name.eq_ignore_ascii_case("LOGIN") {
            Some(Mechanism::Login)
        } else {
            None
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Login => "LOGIN",
        }
    }
}

/// What the client proved it knows. The password is never logged.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub authzid: String,
    pub authcid: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("authzid", &self.authzid)
            .field("authcid", &self.authcid)
            .field("password", &"<hidden>")
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslError {
    /// The client sent `*` (RFC 4954 §4, RFC 5034 §4).
    Cancelled,
    /// Not base64.
    BadBase64,
    /// Decoded, but not a valid message for the mechanism.
    Malformed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Send this base64 challenge (may be empty) and pass the client's next line to `step`.
    Challenge(String),
    Done(Credentials),
    Failed(SaslError),
}

#[derive(Debug, Clone)]
enum State {
    Plain,
    LoginUser,
    LoginPassword { user: String },
    Finished,
}

/// One SASL exchange.
#[derive(Debug, Clone)]
pub struct Exchange {
    state: State,
}

/// Decode a client response; `=` is the empty initial response (RFC 4954 §4).
fn decode(line: &str) -> Result<Vec<u8>, SaslError> {
    let line = line.trim_end_matches(['\r', '\n']);
    if line == "*" {
        return Err(SaslError::Cancelled);
    }
    if line == "=" {
        return Ok(Vec::new());
    }
    STANDARD.decode(line.trim()).map_err(|_| SaslError::BadBase64)
}

fn field(bytes: &[u8]) -> Result<String, SaslError> {
    if bytes.len() > FIELD_BYTES_MAX || bytes.contains(&0) {
        return Err(SaslError::Malformed);
    }
    String::from_utf8(bytes.to_vec()).map_err(|_| SaslError::Malformed)
}

/// RFC 4616 §2: message = [authzid] UTF8NUL authcid UTF8NUL passwd
fn plain(msg: &[u8]) -> Result<Credentials, SaslError> {
    let mut parts = msg.splitn(3, |b| *b == 0);
    let (Some(z), Some(c), Some(p)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(SaslError::Malformed);
    };
    let creds = Credentials {
        authzid: field(z)?,
        authcid: field(c)?,
        password: field(p)?,
    };
    if creds.authcid.is_empty() || creds.password.is_empty() {
        return Err(SaslError::Malformed);
    }
    Ok(creds)
}

impl Exchange {
    /// Begin; `initial` is the initial response from the AUTH command line, if any.
    pub fn start(mech: Mechanism, initial: Option<&str>) -> (Exchange, Step) {
        let mut ex = Exchange {
            state: match mech {
                Mechanism::Plain => State::Plain,
                Mechanism::Login => State::LoginUser,
            },
        };
        let step = match (mech, initial) {
            (_, Some(line)) => ex.step(line),
            // RFC 4616 §2: the server sends an empty challenge when no initial response.
            (Mechanism::Plain, None) => Step::Challenge(String::new()),
            (Mechanism::Login, None) => Step::Challenge(STANDARD.encode("Username:")),
        };
        (ex, step)
    }

    /// The client's response line (base64, without CRLF).
    pub fn step(&mut self, line: &str) -> Step {
        let state = std::mem::replace(&mut self.state, State::Finished);
        let data = match decode(line) {
            Ok(d) => d,
            Err(e) => return Step::Failed(e),
        };
        match state {
            State::Plain => match plain(&data) {
                Ok(c) => Step::Done(c),
                Err(e) => Step::Failed(e),
            },
            State::LoginUser => match field(&data) {
                Ok(user) if !user.is_empty() => {
                    self.state = State::LoginPassword { user };
                    Step::Challenge(STANDARD.encode("Password:"))
                }
                _ => Step::Failed(SaslError::Malformed),
            },
            State::LoginPassword { user } => match field(&data) {
                Ok(password) if !password.is_empty() => Step::Done(Credentials {
                    authzid: String::new(),
                    authcid: user,
                    password,
                }),
                _ => Step::Failed(SaslError::Malformed),
            },
            State::Finished => Step::Failed(SaslError::Malformed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &[u8]) -> String {
        STANDARD.encode(s)
    }

    #[test]
    fn plain_with_initial_response() {
        let (_, step) = Exchange::start(Mechanism::Plain, Some(&b64(b"\0alice\0secret")));
        assert_eq!(
            step,
            Step::Done(Credentials {
                authzid: String::new(),
                authcid: "alice".into(),
                password: "secret".into()
            })
        );
    }

    #[test]
    fn plain_with_challenge_and_authzid() {
        let (mut ex, step) = Exchange::start(Mechanism::Plain, None);
        assert_eq!(step, Step::Challenge(String::new()));
        match ex.step(&b64(b"admin\0alice\0pw")) {
            Step::Done(c) => assert_eq!((c.authzid.as_str(), c.authcid.as_str()), ("admin", "alice")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn login_two_steps() {
        let (mut ex, step) = Exchange::start(Mechanism::Login, None);
        assert_eq!(step, Step::Challenge("VXNlcm5hbWU6".into()));
        assert_eq!(ex.step(&b64(b"alice")), Step::Challenge("UGFzc3dvcmQ6".into()));
        match ex.step(&b64(b"pw")) {
            Step::Done(c) => assert_eq!((c.authcid.as_str(), c.password.as_str()), ("alice", "pw")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn login_with_initial_username() {
        let (mut ex, step) = Exchange::start(Mechanism::Login, Some(&b64(b"alice")));
        assert_eq!(step, Step::Challenge("UGFzc3dvcmQ6".into()));
        assert!(matches!(ex.step(&b64(b"pw")), Step::Done(_)));
    }

    #[test]
    fn hostile_responses() {
        let cases: [(&str, SaslError); 6] = [
            ("*", SaslError::Cancelled),
            ("not base64!!", SaslError::BadBase64),
            ("=", SaslError::Malformed),
            (&b64(b"alice\0secret"), SaslError::Malformed),
            (&b64(b"\0\0secret"), SaslError::Malformed),
            (&b64(b"\0alice\0\xff\xfe"), SaslError::Malformed),
        ];
        for (line, want) in cases {
            let (_, step) = Exchange::start(Mechanism::Plain, None);
            assert_eq!(step, Step::Challenge(String::new()));
            let (mut ex, _) = Exchange::start(Mechanism::Plain, None);
            assert_eq!(ex.step(line), Step::Failed(want), "{line}");
        }
        let long = vec![b'a'; 300];
        let mut msg = b"\0".to_vec();
        msg.extend_from_slice(&long);
        msg.extend_from_slice(b"\0pw");
        let (_, step) = Exchange::start(Mechanism::Plain, Some(&b64(&msg)));
        assert_eq!(step, Step::Failed(SaslError::Malformed));
        // A finished exchange accepts nothing more.
        let (mut ex, _) = Exchange::start(Mechanism::Plain, Some(&b64(b"\0a\0b")));
        assert_eq!(ex.step(&b64(b"\0a\0b")), Step::Failed(SaslError::Malformed));
    }

    #[test]
    fn mechanism_names() {
        assert_eq!(Mechanism::parse("plain"), Some(Mechanism::Plain));
        assert_eq!(Mechanism::parse("LoGiN"), Some(Mechanism::Login));
        assert_eq!(Mechanism::parse("CRAM-MD5"), None);
    }
}
