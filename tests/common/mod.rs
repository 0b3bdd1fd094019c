//! Shared by the transcript runners (tests/transcripts.rs for SMTP,
//! tests/pop3_transcripts.rs for POP3): escapes, globbing and reply-line checks.
#![allow(dead_code)]

/// Decode `\r \n \t \0 \\ \xNN`.
pub fn unescape(s: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            out.push(b[i]);
            i += 1;
            continue;
        }
        let e = *b.get(i + 1).ok_or("trailing backslash")?;
        i += 2;
        match e {
            b'r' => out.push(b'\r'),
            b'n' => out.push(b'\n'),
            b't' => out.push(b'\t'),
            b'0' => out.push(0),
            b'\\' => out.push(b'\\'),
            b'x' => {
                let hex = s.get(i..i + 2).ok_or("short \\x escape")?;
                out.push(u8::from_str_radix(hex, 16).map_err(|e| format!("bad \\x{hex}: {e}"))?);
                i += 2;
            }
            other => return Err(format!("unknown escape \\{}", other as char)),
        }
    }
    Ok(out)
}

/// `*` matches any run of characters.
pub fn glob(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    for (i, p) in parts.iter().enumerate() {
        if i == parts.len() - 1 {
            return rest.ends_with(p);
        }
        match rest.find(p) {
            Some(at) => rest = &rest[at + p.len()..],
            None => return false,
        }
    }
    rest.is_empty()
}

pub fn output_lines(out: &[u8]) -> Result<Vec<String>, String> {
    let text = String::from_utf8(out.to_vec()).map_err(|e| format!("output not UTF-8: {e}"))?;
    if !text.is_empty() && !text.ends_with("\r\n") {
        return Err(format!("output does not end with CRLF: {text:?}"));
    }
    Ok(text.split_terminator("\r\n").map(str::to_string).collect())
}

pub fn check_lines(got: &[String], want: &[&str]) -> Result<(), String> {
    for (i, w) in want.iter().enumerate() {
        match got.get(i) {
            Some(g) if glob(w, g) => {}
            Some(g) => {
                return Err(format!(
                    "reply line {}: want {w:?}, got {g:?}\nall output: {got:#?}",
                    i + 1
                ))
            }
            None => {
                return Err(format!(
                    "reply line {}: want {w:?}, got nothing\nall output: {got:#?}",
                    i + 1
                ))
            }
        }
    }
    if got.len() > want.len() {
        return Err(format!("unexpected reply lines: {:#?}", &got[want.len()..]));
    }
    Ok(())
}

/// A free TCP port on 127.0.0.1 (bound and released: the caller binds it next).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// Connect to 127.0.0.1:`port` from the address `from` (any 127/8 address works on Linux:
/// loopback stands in for clients inside and outside mynetworks).
pub fn connect_from(from: std::net::IpAddr, port: u16) -> std::io::Result<std::net::TcpStream> {
    use rustix::net::{AddressFamily, SocketType};
    use std::net::SocketAddr;
    let family = if from.is_ipv4() {
        AddressFamily::INET
    } else {
        AddressFamily::INET6
    };
    let fd = rustix::net::socket(family, SocketType::STREAM, None)?;
    rustix::net::bind(&fd, &SocketAddr::new(from, 0))?;
    rustix::net::connect(&fd, &SocketAddr::from(([127, 0, 0, 1], port)))?;
    Ok(std::net::TcpStream::from(fd))
}
