//! `/healthz` (200 while the process runs) and `/readyz` (503 until the lease is held,
//! rules installed and subnet.env written; 503 again while a lost lease is being
//! re-acquired), served on a loopback address by one thread.

use std::io::{BufRead, BufReader, Read as _, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::log;

/// Readiness shared between the agent loop and the endpoint.
#[derive(Debug, Default)]
pub struct Status {
    inner: Mutex<(bool, String)>,
}

impl Status {
    pub fn new() -> Arc<Self> {
        Arc::new(Status {
            inner: Mutex::new((false, "starting".into())),
        })
    }

    pub fn set(&self, ready: bool, detail: impl Into<String>) {
        if let Ok(mut g) = self.inner.lock() {
            *g = (ready, detail.into());
        }
    }

    pub fn get(&self) -> (bool, String) {
        self.inner
            .lock()
            .map(|g| g.clone())
            .unwrap_or((false, "status poisoned".into()))
    }
}

/// Binds `addr` and serves in a background thread; returns the bound address.
pub fn serve(addr: SocketAddr, status: Arc<Status>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    std::thread::Builder::new()
        .name("healthz".into())
        .spawn(move || {
            for conn in listener.incoming().flatten() {
                if let Err(e) = answer(conn, &status) {
                    log::debug(&format!("healthz: {e}"));
                }
            }
        })?;
    Ok(bound)
}

fn answer(conn: TcpStream, status: &Status) -> std::io::Result<()> {
    // A slow or silent client must not wedge the endpoint.
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    conn.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut reader = BufReader::new(conn.try_clone()?).take(8192);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
    // Read the headers up to the blank line before answering: closing a socket with
    // unread request bytes makes the kernel send RST, and clients then lose the answer.
    let mut header = String::new();
    loop {
        header.clear();
        if reader.read_line(&mut header)? == 0 || header.trim_end().is_empty() {
            break;
        }
    }
    let (code, body) = match path.as_str() {
        "/healthz" => (200, "ok\n".to_owned()),
        "/readyz" => match status.get() {
            (true, detail) => (200, format!("ready: {detail}\n")),
            (false, detail) => (503, format!("not ready: {detail}\n")),
        },
        _ => (404, "not found\n".to_owned()),
    };
    let reason = match code {
        200 => "OK",
        503 => "Service Unavailable",
        _ => "Not Found",
    };
    let mut w = conn;
    write!(
        w,
        "HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn endpoints() {
        let status = Status::new();
        let addr = serve("127.0.0.1:0".parse().unwrap(), status.clone()).unwrap();
        assert!(get(addr, "/healthz").starts_with("HTTP/1.1 200"));
        let r = get(addr, "/readyz");
        assert!(
            r.starts_with("HTTP/1.1 503") && r.contains("starting"),
            "{r}"
        );
        status.set(true, "lease 10.1.2.0/24");
        let r = get(addr, "/readyz");
        assert!(
            r.starts_with("HTTP/1.1 200") && r.contains("10.1.2.0/24"),
            "{r}"
        );
        assert!(get(addr, "/x").starts_with("HTTP/1.1 404"));
    }
}
