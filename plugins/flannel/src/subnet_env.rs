//! `subnet.env`, the file flanneld writes once it holds a subnet lease for this node:
//!
//! ```text
//! FLANNEL_NETWORK=10.244.0.0/16
//! FLANNEL_SUBNET=10.244.1.1/24
//! FLANNEL_IPV6_NETWORK=fd00::/56
//! FLANNEL_IPV6_SUBNET=fd00:0:0:1::1/64
//! FLANNEL_MTU=1450
//! FLANNEL_IPMASQ=true
//! ```
//!
//! Read the way the Go plugin reads it (split at the first `=`, exact key match, no
//! trimming, unknown lines ignored, a later duplicate wins, CIDRs reduced to their
//! network, network lists deduplicated), except that every defect is an error naming the
//! file, the line and the key instead of a Go panic (a known key without `=` indexes out of
//! range there).

use crate::fs::Fs;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::io;
use std::path::{Path, PathBuf};

/// flanneld writes about 150 bytes. Go's line scanner gives up at 64 KiB per line; a file
/// this large is not flanneld's and must not cost us more than a bounded read.
pub const MAX_SUBNET_ENV_BYTES: usize = 64 * 1024;

pub const FLANNEL_NETWORK: &str = "FLANNEL_NETWORK";
pub const FLANNEL_SUBNET: &str = "FLANNEL_SUBNET";
pub const FLANNEL_IPV6_NETWORK: &str = "FLANNEL_IPV6_NETWORK";
pub const FLANNEL_IPV6_SUBNET: &str = "FLANNEL_IPV6_SUBNET";
pub const FLANNEL_MTU: &str = "FLANNEL_MTU";
pub const FLANNEL_IPMASQ: &str = "FLANNEL_IPMASQ";

const KEYS: [&str; 6] = [
    FLANNEL_NETWORK,
    FLANNEL_SUBNET,
    FLANNEL_IPV6_NETWORK,
    FLANNEL_IPV6_SUBNET,
    FLANNEL_MTU,
    FLANNEL_IPMASQ,
];

/// A complete subnet.env: at least one network, at least one node subnet, MTU and IPMASQ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetEnv {
    /// Cluster networks (`FLANNEL_NETWORK`, comma-separated), reduced, deduplicated, in
    /// file order.
    pub networks: Vec<Ipv4Net>,
    /// This node's IPv4 pod subnet, reduced to the network (`10.244.1.1/24` ->
    /// `10.244.1.0/24`).
    pub subnet: Option<Ipv4Net>,
    pub ipv6_networks: Vec<Ipv6Net>,
    pub ipv6_subnet: Option<Ipv6Net>,
    pub mtu: u32,
    /// True only for the exact value `true`, as Go compares it.
    pub ipmasq: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SubnetEnvError {
    #[error(
        "{} does not exist: the flannel agent (flanneld) has not written it yet; it writes \
         it once it holds a subnet lease for this node. Try again later; if flanneld writes \
         the file elsewhere, set the \"subnetFile\" key of the flannel CNI config to that path",
        path.display()
    )]
    NotFound { path: PathBuf },
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error(
        "{} is larger than {MAX_SUBNET_ENV_BYTES} bytes, so it is not the file flanneld writes; \
         check the \"subnetFile\" key of the flannel CNI config",
        path.display()
    )]
    TooLarge { path: PathBuf },
    #[error("{}: line {line}: {key}: {reason}", path.display())]
    Malformed {
        path: PathBuf,
        line: usize,
        key: &'static str,
        reason: String,
    },
    /// The message is the Go plugin's, word for word: scripts grep for it.
    #[error("{} is missing {missing}", path.display())]
    Incomplete { path: PathBuf, missing: String },
}

impl SubnetEnvError {
    pub fn path(&self) -> &Path {
        match self {
            SubnetEnvError::NotFound { path }
            | SubnetEnvError::Read { path, .. }
            | SubnetEnvError::TooLarge { path }
            | SubnetEnvError::Malformed { path, .. }
            | SubnetEnvError::Incomplete { path, .. } => path,
        }
    }
}

/// Reads and parses `path` through `fs`.
pub fn load(fs: &dyn Fs, path: &Path) -> Result<SubnetEnv, SubnetEnvError> {
    let bytes = fs
        .read_limited(path, MAX_SUBNET_ENV_BYTES + 1)
        .map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => SubnetEnvError::NotFound {
                path: path.to_owned(),
            },
            _ => SubnetEnvError::Read {
                path: path.to_owned(),
                source,
            },
        })?;
    if bytes.len() > MAX_SUBNET_ENV_BYTES {
        return Err(SubnetEnvError::TooLarge {
            path: path.to_owned(),
        });
    }
    parse(path, &bytes)
}

#[derive(Default)]
struct Partial {
    networks: Vec<Ipv4Net>,
    subnet: Option<Ipv4Net>,
    ipv6_networks: Vec<Ipv6Net>,
    ipv6_subnet: Option<Ipv6Net>,
    mtu: Option<u32>,
    ipmasq: Option<bool>,
}

/// Parses the text of a subnet.env; `path` only names the file in errors.
pub fn parse(path: &Path, text: &[u8]) -> Result<SubnetEnv, SubnetEnvError> {
    let mut p = Partial::default();
    for (idx, raw) in text.split(|&b| b == b'\n').enumerate() {
        // Go's bufio.ScanLines drops one trailing CR, so CRLF files work there.
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        let (key, value) = match line.iter().position(|&b| b == b'=') {
            Some(i) => (&line[..i], Some(&line[i + 1..])),
            None => (line, None),
        };
        let Some(key) = KEYS.iter().copied().find(|k| k.as_bytes() == key) else {
            continue;
        };
        let bad = |reason: String| SubnetEnvError::Malformed {
            path: path.to_owned(),
            line: idx + 1,
            key,
            reason,
        };
        let Some(value) = value else {
            return Err(bad(format!(
                "no '=' after the key (expected {key}=<value>)"
            )));
        };
        let value = std::str::from_utf8(value)
            .map_err(|_| bad("the value is not valid UTF-8".to_owned()))?;
        match key {
            FLANNEL_NETWORK => p.networks = network_list(value, v4).map_err(bad)?,
            FLANNEL_IPV6_NETWORK => p.ipv6_networks = network_list(value, v6).map_err(bad)?,
            FLANNEL_SUBNET => p.subnet = Some(v4(value).map_err(bad)?),
            FLANNEL_IPV6_SUBNET => p.ipv6_subnet = Some(v6(value).map_err(bad)?),
            FLANNEL_MTU => p.mtu = Some(mtu(value).map_err(bad)?),
            // Go: anything but exactly "true" is false, including "True" and "true ".
            _ => p.ipmasq = Some(value == "true"),
        }
    }
    let mut missing: Vec<&str> = Vec::new();
    if p.networks.is_empty() && p.ipv6_networks.is_empty() {
        missing.extend([FLANNEL_NETWORK, FLANNEL_IPV6_NETWORK]);
    }
    if p.subnet.is_none() && p.ipv6_subnet.is_none() {
        missing.extend([FLANNEL_SUBNET, FLANNEL_IPV6_SUBNET]);
    }
    if p.mtu.is_none() {
        missing.push(FLANNEL_MTU);
    }
    if p.ipmasq.is_none() {
        missing.push(FLANNEL_IPMASQ);
    }
    match (p.mtu, p.ipmasq) {
        (Some(mtu), Some(ipmasq)) if missing.is_empty() => Ok(SubnetEnv {
            networks: p.networks,
            subnet: p.subnet,
            ipv6_networks: p.ipv6_networks,
            ipv6_subnet: p.ipv6_subnet,
            mtu,
            ipmasq,
        }),
        _ => Err(SubnetEnvError::Incomplete {
            path: path.to_owned(),
            missing: missing.join(", "),
        }),
    }
}

fn network_list<N: PartialEq>(
    value: &str,
    parse_one: fn(&str) -> Result<N, String>,
) -> Result<Vec<N>, String> {
    let mut out: Vec<N> = Vec::new();
    for item in value.split(',') {
        let net = parse_one(item)?;
        if !out.contains(&net) {
            out.push(net);
        }
    }
    Ok(out)
}

fn cidr(value: &str) -> Result<IpNet, String> {
    if value.is_empty() {
        return Err("the value is empty (expected a CIDR such as 10.244.0.0/16)".to_owned());
    }
    value.parse::<IpNet>().map(|n| n.trunc()).map_err(|_| {
        format!(
            "{:?} is not a CIDR (expected e.g. 10.244.0.0/16)",
            clip(value)
        )
    })
}

// Unlike Go, a CIDR of the wrong family is refused: Go would put an IPv6 FLANNEL_SUBNET
// into the IPv4 range slot and let host-local fail later with a less useful message.
fn v4(value: &str) -> Result<Ipv4Net, String> {
    match cidr(value)? {
        IpNet::V4(n) => Ok(n),
        IpNet::V6(_) => Err(format!(
            "{:?} is an IPv6 CIDR; IPv6 belongs in the FLANNEL_IPV6_* keys",
            clip(value)
        )),
    }
}

fn v6(value: &str) -> Result<Ipv6Net, String> {
    match cidr(value)? {
        IpNet::V6(n) => Ok(n),
        IpNet::V4(_) => Err(format!(
            "{:?} is an IPv4 CIDR; IPv4 belongs in FLANNEL_NETWORK/FLANNEL_SUBNET",
            clip(value)
        )),
    }
}

/// Go's `strconv.ParseUint(v, 10, 32)`: decimal digits only (no sign, no spaces).
fn mtu(value: &str) -> Result<u32, String> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "{:?} is not an unsigned decimal number",
            clip(value)
        ));
    }
    value
        .parse::<u32>()
        .map_err(|_| format!("{:?} does not fit in 32 bits", clip(value)))
}

/// Error messages quote values; a garbage file must not turn into a 64 KiB message.
fn clip(s: &str) -> &str {
    let mut end = s.len().min(64);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "/run/flannel/subnet.env";

    fn ok(text: &str) -> SubnetEnv {
        parse(Path::new(P), text.as_bytes()).unwrap_or_else(|e| panic!("{text:?}: {e}"))
    }

    fn err(text: &str) -> String {
        parse(Path::new(P), text.as_bytes())
            .expect_err(text)
            .to_string()
    }

    fn n4(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn n6(s: &str) -> Ipv6Net {
        s.parse().unwrap()
    }

    #[test]
    fn ipv4_only_as_flanneld_writes_it() {
        let e = ok("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n");
        assert_eq!(
            e,
            SubnetEnv {
                networks: vec![n4("10.244.0.0/16")],
                subnet: Some(n4("10.244.1.0/24")),
                ipv6_networks: vec![],
                ipv6_subnet: None,
                mtu: 1450,
                ipmasq: true,
            }
        );
    }

    #[test]
    fn ipv6_only_and_dual_stack() {
        let e = ok("FLANNEL_IPV6_NETWORK=fd00::/56\nFLANNEL_IPV6_SUBNET=fd00:0:0:1::1/64\nFLANNEL_MTU=1430\nFLANNEL_IPMASQ=false");
        assert!(e.networks.is_empty() && e.subnet.is_none());
        assert_eq!(e.ipv6_networks, vec![n6("fd00::/56")]);
        assert_eq!(e.ipv6_subnet, Some(n6("fd00:0:0:1::/64")));
        assert_eq!((e.mtu, e.ipmasq), (1430, false));

        let e = ok("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_IPV6_NETWORK=fd00::/56\nFLANNEL_IPV6_SUBNET=fd00:0:0:1::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n");
        assert_eq!(e.subnet, Some(n4("10.244.1.0/24")));
        assert_eq!(
            e.ipv6_subnet.map(|n| n.to_string()).as_deref(),
            Some("fd00:0:0:1::/64")
        );
    }

    #[test]
    fn lists_are_reduced_and_deduplicated_in_order() {
        let e = ok("FLANNEL_NETWORK=10.244.0.0/16,10.245.3.4/16,10.244.9.9/16,10.245.0.0/16\nFLANNEL_IPV6_NETWORK=fd00::1/56,fd01::/56,fd00::/56\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true");
        assert_eq!(e.networks, vec![n4("10.244.0.0/16"), n4("10.245.0.0/16")]);
        assert_eq!(e.ipv6_networks, vec![n6("fd00::/56"), n6("fd01::/56")]);
    }

    #[test]
    fn later_duplicates_win_and_unknown_lines_are_ignored() {
        let e = ok("# comment\nFOO=bar\n\nFLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_NETWORK=10.2.0.0/16\nFLANNEL_SUBNET=10.2.1.1/24\nFLANNEL_MTU=1\nFLANNEL_MTU=9000\nFLANNEL_IPMASQ=true\nFLANNEL_IPMASQ=yes\nflannel_mtu=x\n FLANNEL_MTU=x\nFLANNEL_MTUX=1\n");
        assert_eq!(e.networks, vec![n4("10.2.0.0/16")]);
        assert_eq!((e.mtu, e.ipmasq), (9000, false));
    }

    #[test]
    fn crlf_lines_and_exact_ipmasq() {
        let e = ok("FLANNEL_NETWORK=10.244.0.0/16\r\nFLANNEL_SUBNET=10.244.1.1/24\r\nFLANNEL_MTU=1450\r\nFLANNEL_IPMASQ=true\r\n");
        assert!(e.ipmasq);
        let e = ok("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true ");
        assert!(!e.ipmasq, "no trimming, as in Go");
    }

    #[test]
    fn missing_groups_are_listed_exactly() {
        assert_eq!(
            err(""),
            format!("{P} is missing FLANNEL_NETWORK, FLANNEL_IPV6_NETWORK, FLANNEL_SUBNET, FLANNEL_IPV6_SUBNET, FLANNEL_MTU, FLANNEL_IPMASQ")
        );
        assert_eq!(
            err("FLANNEL_IPV6_NETWORK=fd00::/56\nFLANNEL_MTU=1450\n"),
            format!("{P} is missing FLANNEL_SUBNET, FLANNEL_IPV6_SUBNET, FLANNEL_IPMASQ")
        );
        assert_eq!(
            err("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_IPV6_SUBNET=fd00::1/64\nFLANNEL_IPMASQ=true"),
            format!("{P} is missing FLANNEL_MTU")
        );
        assert_eq!(
            err("FLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false"),
            format!("{P} is missing FLANNEL_NETWORK, FLANNEL_IPV6_NETWORK")
        );
    }

    #[test]
    fn malformed_values_name_line_and_key() {
        let base =
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\n";
        let cases = [
            (
                "FLANNEL_IPMASQ=true\nFLANNEL_MTU=abc",
                5,
                "FLANNEL_MTU",
                "not an unsigned decimal",
            ),
            (
                "FLANNEL_MTU=+1450",
                4,
                "FLANNEL_MTU",
                "not an unsigned decimal",
            ),
            (
                "FLANNEL_MTU=-1",
                4,
                "FLANNEL_MTU",
                "not an unsigned decimal",
            ),
            ("FLANNEL_MTU=4294967296", 4, "FLANNEL_MTU", "32 bits"),
            ("FLANNEL_MTU=", 4, "FLANNEL_MTU", "not an unsigned decimal"),
            (
                "FLANNEL_SUBNET=10.244.1.1",
                4,
                "FLANNEL_SUBNET",
                "not a CIDR",
            ),
            (
                "FLANNEL_SUBNET=10.244.1.1/33",
                4,
                "FLANNEL_SUBNET",
                "not a CIDR",
            ),
            (
                "FLANNEL_SUBNET=fd00::1/64",
                4,
                "FLANNEL_SUBNET",
                "IPv6 CIDR",
            ),
            (
                "FLANNEL_IPV6_SUBNET=10.0.0.1/24",
                4,
                "FLANNEL_IPV6_SUBNET",
                "IPv4 CIDR",
            ),
            (
                "FLANNEL_NETWORK=10.244.0.0/16,",
                4,
                "FLANNEL_NETWORK",
                "empty",
            ),
            (
                "FLANNEL_NETWORK= 10.244.0.0/16",
                4,
                "FLANNEL_NETWORK",
                "not a CIDR",
            ),
            (
                "FLANNEL_IPV6_NETWORK=fd00::/56,nope",
                4,
                "FLANNEL_IPV6_NETWORK",
                "\"nope\" is not a CIDR",
            ),
            ("FLANNEL_IPMASQ", 4, "FLANNEL_IPMASQ", "no '='"),
            ("FLANNEL_NETWORK", 4, "FLANNEL_NETWORK", "no '='"),
            ("FLANNEL_MTU\r", 4, "FLANNEL_MTU", "no '='"),
        ];
        for (extra, line, key, reason) in cases {
            let text = format!("{base}{extra}");
            let msg = err(&text);
            let want = format!("{P}: line {line}: {key}: ");
            assert!(msg.starts_with(&want), "{text:?}: {msg}");
            assert!(msg.contains(reason), "{text:?}: {msg}");
        }
        let msg = parse(Path::new(P), b"FLANNEL_MTU=\xff\xfe\n")
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("line 1: FLANNEL_MTU: the value is not valid UTF-8"),
            "{msg}"
        );
    }

    #[test]
    fn long_values_are_clipped_in_messages() {
        let text = format!("FLANNEL_SUBNET={}", "9".repeat(10_000));
        assert!(err(&text).len() < 300);
    }
}
