//! `ipam.resolvConf`: a resolv.conf file turned into the result's `dns` object.
//!
//! Parsing follows Go's `parseResolvConf` exactly, quirks included: a comment is only recognised
//! at the start of a line, so `search a b # c` yields the search list `a b # c`.

use std::path::Path;

use serde::Serialize;

use crate::error::IpamError;

/// The CNI result `dns` object.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Dns {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

/// Reads and parses a resolv.conf. A missing or unreadable file is an error, as in Go.
pub fn parse_resolv_conf(path: &Path) -> Result<Dns, IpamError> {
    let bytes = std::fs::read(path).map_err(|source| IpamError::ResolvConf {
        path: path.to_owned(),
        source,
    })?;
    Ok(parse_resolv_conf_text(&String::from_utf8_lossy(&bytes)))
}

pub fn parse_resolv_conf_text(text: &str) -> Dns {
    let mut dns = Dns::default();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 2 {
            continue;
        }
        let rest = fields[1..].iter().map(|s| (*s).to_owned());
        match fields[0] {
            "nameserver" => dns.nameservers.push(fields[1].to_owned()),
            "domain" => dns.domain = Some(fields[1].to_owned()),
            "search" => dns.search.extend(rest),
            "options" => dns.options.extend(rest),
            _ => {}
        }
    }
    dns
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_like_go() {
        let text =
            "# comment\n; other comment\n\n  nameserver 10.0.0.10  \nnameserver fd00::10 extra\n\
                    domain example.com\ndomain cluster.local\nsearch a.svc b.svc\nsearch c # d\n\
                    options ndots:5 timeout:1\nsortlist 1.2.3.4\nnameserver\n";
        let dns = parse_resolv_conf_text(text);
        assert_eq!(dns.nameservers, ["10.0.0.10", "fd00::10"]);
        assert_eq!(dns.domain.as_deref(), Some("cluster.local"));
        assert_eq!(dns.search, ["a.svc", "b.svc", "c", "#", "d"]);
        assert_eq!(dns.options, ["ndots:5", "timeout:1"]);
    }

    #[test]
    fn serializes_cni_shape() {
        let dns = Dns {
            nameservers: vec!["1.1.1.1".into()],
            ..Dns::default()
        };
        assert_eq!(
            serde_json::to_string(&dns).unwrap(),
            r#"{"nameservers":["1.1.1.1"]}"#
        );
    }

    #[test]
    fn missing_file_is_an_error() {
        let e = parse_resolv_conf(Path::new("/nonexistent/resolv.conf")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/resolv.conf"), "{e}");
    }
}
