//! A tiny blocking HTTP/1.1 client for etcd's JSON gateway: POST a JSON body, read a
//! JSON answer (Content-Length, chunked or until close), or keep a chunked stream
//! open for `/v3/watch`. One TCP connection per request keeps it stateless.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::time::Duration;

use serde_json::Value;

/// Why an HTTP exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("malformed HTTP answer: {0}")]
    Protocol(String),
    #[error("HTTP status {status}: {body}")]
    Status { status: u16, body: String },
}

/// `http://host:port` of one etcd member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

impl Endpoint {
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("{url:?}: only http:// endpoints are supported (no TLS)"))?;
        let hostport = rest.trim_end_matches('/');
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                (h, p.parse().map_err(|_| format!("{url:?}: bad port"))?)
            }
            _ => (hostport, 2379),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("{url:?}: no host"));
        }
        Ok(Endpoint {
            host: host.to_owned(),
            port,
        })
    }

    fn connect(&self, timeout: Duration) -> io::Result<TcpStream> {
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
        for addr in (self.host.as_str(), self.port).to_socket_addrs()? {
            match TcpStream::connect_timeout(&addr, timeout) {
                Ok(s) => {
                    s.set_nodelay(true)?;
                    return Ok(s);
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn send(
        &self,
        stream: &mut TcpStream,
        path: &str,
        body: &Value,
        close: bool,
    ) -> io::Result<()> {
        let body = body.to_string();
        let host = if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        };
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: {}\r\n\r\n{body}",
            body.len(),
            if close { "close" } else { "keep-alive" }
        );
        stream.write_all(req.as_bytes())
    }

    /// POSTs `body` to `path` and returns the decoded JSON answer.
    pub fn post(&self, path: &str, body: &Value, timeout: Duration) -> Result<Value, HttpError> {
        let mut stream = self.connect(timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        self.send(&mut stream, path, body, true)?;
        let mut reader = BufReader::new(stream);
        let (status, body_reader) = read_head(&mut reader)?;
        let mut text = String::new();
        body_reader.into_reader(reader).read_to_string(&mut text)?;
        if status != 200 {
            return Err(HttpError::Status {
                status,
                body: text.trim().to_owned(),
            });
        }
        serde_json::from_str(&text)
            .map_err(|e| HttpError::Protocol(format!("body is not JSON ({e}): {text:?}")))
    }

    /// POSTs `body` and returns the streaming answer body plus a handle that can
    /// shut the connection down from another thread.
    pub fn post_stream(
        &self,
        path: &str,
        body: &Value,
        timeout: Duration,
    ) -> Result<(Box<dyn Read + Send>, TcpStream), HttpError> {
        let mut stream = self.connect(timeout)?;
        stream.set_write_timeout(Some(timeout))?;
        // The head must come quickly; the body may then be silent for hours.
        stream.set_read_timeout(Some(timeout))?;
        let handle = stream.try_clone()?;
        self.send(&mut stream, path, body, false)?;
        let mut reader = BufReader::new(stream);
        let (status, body_reader) = read_head(&mut reader)?;
        reader.get_ref().set_read_timeout(None)?;
        if status != 200 {
            let mut text = String::new();
            let _ = body_reader
                .into_reader(reader)
                .take(64 * 1024)
                .read_to_string(&mut text);
            return Err(HttpError::Status {
                status,
                body: text.trim().to_owned(),
            });
        }
        Ok((body_reader.into_reader(reader), handle))
    }
}

/// Closes a streaming connection so its reader thread returns.
pub fn shutdown(handle: &TcpStream) {
    let _ = handle.shutdown(Shutdown::Both);
}

enum Framing {
    Length(u64),
    Chunked,
    UntilClose,
}

impl Framing {
    fn into_reader<R: BufRead + Send + 'static>(self, r: R) -> Box<dyn Read + Send> {
        match self {
            Framing::Length(n) => Box::new(r.take(n)),
            Framing::Chunked => Box::new(Chunked::new(r)),
            Framing::UntilClose => Box::new(r),
        }
    }
}

fn read_line<R: BufRead>(r: &mut R) -> Result<String, HttpError> {
    let mut line = String::new();
    // Bounded: a peer sending an endless header line must not eat memory.
    let n = r.take(16 * 1024).read_line(&mut line)?;
    if n == 0 {
        return Err(HttpError::Protocol("connection closed".into()));
    }
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

fn read_head<R: BufRead>(r: &mut R) -> Result<(u16, Framing), HttpError> {
    let status_line = read_line(r)?;
    let mut parts = status_line.split_whitespace();
    let status = match (parts.next(), parts.next()) {
        (Some(v), Some(code)) if v.starts_with("HTTP/1.") => code
            .parse()
            .map_err(|_| HttpError::Protocol(format!("status line {status_line:?}")))?,
        _ => return Err(HttpError::Protocol(format!("status line {status_line:?}"))),
    };
    let mut framing = Framing::UntilClose;
    for _ in 0..100 {
        let line = read_line(r)?;
        if line.is_empty() {
            return Ok((status, framing));
        }
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") && value.eq_ignore_ascii_case("chunked") {
            framing = Framing::Chunked;
        } else if name.eq_ignore_ascii_case("content-length")
            && !matches!(framing, Framing::Chunked)
        {
            framing = Framing::Length(
                value
                    .parse()
                    .map_err(|_| HttpError::Protocol(format!("content-length {value:?}")))?,
            );
        }
    }
    Err(HttpError::Protocol("too many header lines".into()))
}

/// Decodes `Transfer-Encoding: chunked`.
struct Chunked<R> {
    inner: R,
    left: u64,
    done: bool,
}

impl<R: BufRead> Chunked<R> {
    fn new(inner: R) -> Self {
        Chunked {
            inner,
            left: 0,
            done: false,
        }
    }

    fn bad(msg: String) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, msg)
    }

    fn line(&mut self) -> io::Result<String> {
        read_line(&mut self.inner).map_err(|e| match e {
            HttpError::Io(e) => e,
            other => io::Error::new(io::ErrorKind::UnexpectedEof, other.to_string()),
        })
    }
}

impl<R: BufRead> Read for Chunked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            let line = self.line()?;
            let size_text = line.split(';').next().unwrap_or("").trim();
            let size = u64::from_str_radix(size_text, 16)
                .map_err(|_| Self::bad(format!("chunk size {line:?}")))?;
            if size == 0 {
                // Trailers, then the final empty line.
                while !self.line()?.is_empty() {}
                self.done = true;
                return Ok(0);
            }
            self.left = size;
        }
        let want = buf.len().min(self.left as usize);
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed inside a chunk",
            ));
        }
        self.left -= n as u64;
        if self.left == 0 {
            let crlf = self.line()?;
            if !crlf.is_empty() {
                return Err(Self::bad(format!("missing CRLF after chunk, got {crlf:?}")));
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            Endpoint::parse("http://10.0.0.1:2379").unwrap(),
            Endpoint {
                host: "10.0.0.1".into(),
                port: 2379
            }
        );
        assert_eq!(Endpoint::parse("http://etcd/").unwrap().port, 2379);
        assert_eq!(
            Endpoint::parse("http://[::1]:4001").unwrap(),
            Endpoint {
                host: "::1".into(),
                port: 4001
            }
        );
        assert!(Endpoint::parse("https://10.0.0.1:2379").is_err());
        assert!(Endpoint::parse("http://:1").is_err());
        assert!(Endpoint::parse("http://h:x").is_err());
    }

    #[test]
    fn chunked_bodies_and_heads() {
        let raw = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX: y\r\n\r\n5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nTrailer: t\r\n\r\n";
        let mut r = io::Cursor::new(raw.as_bytes().to_vec());
        let (status, framing) = read_head(&mut r).unwrap();
        assert_eq!(status, 200);
        let mut body = String::new();
        framing.into_reader(r).read_to_string(&mut body).unwrap();
        assert_eq!(body, "hello, world");

        let raw = "HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\nabcdef";
        let mut r = io::Cursor::new(raw.as_bytes().to_vec());
        let (status, framing) = read_head(&mut r).unwrap();
        assert_eq!(status, 404);
        let mut body = String::new();
        framing.into_reader(r).read_to_string(&mut body).unwrap();
        assert_eq!(body, "abc");

        for bad in ["garbage\r\n\r\n", "HTTP/1.1 abc\r\n\r\n", ""] {
            let mut r = io::Cursor::new(bad.as_bytes().to_vec());
            assert!(read_head(&mut r).is_err(), "{bad:?}");
        }
        let mut bad = Chunked::new(io::Cursor::new(b"zz\r\n".to_vec()));
        assert!(bad.read(&mut [0; 8]).is_err());
        let mut cut = Chunked::new(io::Cursor::new(b"10\r\nabc".to_vec()));
        let mut s = String::new();
        assert!(cut.read_to_string(&mut s).is_err());
    }
}
