//! The network configuration (`<prefix>/config` in etcd, `config` in the embedded
//! store): flanneld's keys, defaults and validation (`pkg/subnet/config.go`).
//!
//! flanneld decodes this JSON with Go's `encoding/json`, so keys match
//! case-insensitively and unknown keys are ignored; [`NetworkConfig::parse`] does the
//! same so that one config text means the same thing to both agents.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};
use serde_json::{Map, Value};

/// Why a network config was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("network config is not valid JSON: {0}")]
    Json(String),
    #[error("network config must be a JSON object")]
    NotAnObject,
    #[error("network config: {field} = {value}: {reason}")]
    Field {
        field: &'static str,
        value: String,
        reason: String,
    },
    #[error("network config: {0}")]
    Invalid(String),
}

fn field_err(field: &'static str, value: impl ToString, reason: impl Into<String>) -> ConfigError {
    ConfigError::Field {
        field,
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// Case-insensitive lookup, as Go's decoder matches struct fields. Go prefers an
/// exact-case match when both exist; so do we.
pub(crate) fn get_ci<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).or_else(|| {
        obj.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    })
}

/// `Backend` object: its `Type` plus the keys the vxlan and host-gw backends read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    /// Lower-cased `Type`; `udp` when the `Backend` key is absent (flanneld's code,
    /// not its docs).
    pub kind: String,
    /// vxlan `VNI`, default 1.
    pub vni: u32,
    /// vxlan `Port`; None = kernel default 8472.
    pub port: Option<u16>,
    /// vxlan `MTU`: the outgoing packet MTU (device gets MTU - 50); None = underlay's.
    pub mtu: Option<u32>,
    pub gbp: bool,
    pub learning: bool,
    /// vxlan `DirectRouting`: plain routes to peers on the same L2 segment.
    pub direct_routing: bool,
}

impl Default for BackendConfig {
    fn default() -> Self {
        BackendConfig {
            kind: "udp".into(),
            vni: 1,
            port: None,
            mtu: None,
            gbp: false,
            learning: false,
            direct_routing: false,
        }
    }
}

/// IPv6 half of the config, present when `EnableIPv6` is true.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipv6Config {
    pub network: Ipv6Net,
    pub subnet_len: u8,
    pub subnet_min: Ipv6Addr,
    pub subnet_max: Ipv6Addr,
}

/// A validated, defaulted network config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    pub enable_ipv4: bool,
    pub enable_ipv6: bool,
    pub enable_nftables: bool,
    /// The cluster network (`Network`); set whenever `enable_ipv4`.
    pub network: Ipv4Net,
    pub subnet_len: u8,
    pub subnet_min: Ipv4Addr,
    pub subnet_max: Ipv4Addr,
    pub ipv6: Option<Ipv6Config>,
    pub backend: BackendConfig,
}

fn opt_str<'a>(
    obj: &'a Map<String, Value>,
    field: &'static str,
) -> Result<Option<&'a str>, ConfigError> {
    match get_ci(obj, field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(v) => Err(field_err(field, v, "must be a string")),
    }
}

fn opt_bool(obj: &Map<String, Value>, field: &'static str) -> Result<Option<bool>, ConfigError> {
    match get_ci(obj, field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => Err(field_err(field, v, "must be true or false")),
    }
}

fn opt_uint(
    obj: &Map<String, Value>,
    field: &'static str,
    max: u64,
) -> Result<Option<u64>, ConfigError> {
    match get_ci(obj, field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if n <= max => Ok(Some(n)),
            _ => Err(field_err(
                field,
                v,
                format!("must be an integer in 0..={max}"),
            )),
        },
    }
}

fn parse_backend(obj: &Map<String, Value>) -> Result<BackendConfig, ConfigError> {
    let Some(backend) = get_ci(obj, "Backend") else {
        return Ok(BackendConfig::default());
    };
    let Value::Object(b) = backend else {
        return Err(field_err("Backend", backend, "must be an object"));
    };
    let kind = opt_str(b, "Type")?.unwrap_or("udp").to_ascii_lowercase();
    let vni = opt_uint(b, "VNI", u64::from(u32::MAX))?.unwrap_or(1);
    let port = opt_uint(b, "Port", u64::from(u16::MAX))?.filter(|p| *p != 0);
    let mtu = opt_uint(b, "MTU", u64::from(u32::MAX))?.filter(|m| *m != 0);
    // vxlan refuses VNI 0 when creating the device; say so before touching the kernel.
    if kind == "vxlan" && vni == 0 {
        return Err(field_err("Backend.VNI", 0, "must be at least 1"));
    }
    Ok(BackendConfig {
        kind,
        vni: vni as u32,
        port: port.map(|p| p as u16),
        mtu: mtu.map(|m| m as u32),
        gbp: opt_bool(b, "GBP")?.unwrap_or(false),
        learning: opt_bool(b, "Learning")?.unwrap_or(false),
        direct_routing: opt_bool(b, "DirectRouting")?.unwrap_or(false),
    })
}

/// Size of one subnet of prefix `len` in a family of `bits` bits, as a u128.
fn block(bits: u8, len: u8) -> u128 {
    1u128 << (bits - len)
}

/// Shared defaulting/validation of SubnetLen/Min/Max for both families, on u128.
struct Range {
    subnet_len: u8,
    min: u128,
    max: u128,
}

#[allow(clippy::too_many_arguments)]
fn range(
    bits: u8,
    base: u128,
    prefix: u8,
    given_len: Option<u64>,
    given_min: Option<u128>,
    given_max: Option<u128>,
    names: [&'static str; 3],
    limits: (u8, u8, u8),
) -> Result<Range, ConfigError> {
    // limits: (default len, longest network with a default, longest allowed len)
    let (default_len, longest_net, longest_len) = limits;
    let subnet_len = match given_len {
        None | Some(0) => {
            if prefix <= default_len - 2 {
                default_len
            } else if prefix <= longest_net {
                prefix + 2
            } else {
                return Err(field_err(
                    names[0],
                    "(default)",
                    format!("network /{prefix} is too small for a default subnet length (longest /{longest_net})"),
                ));
            }
        }
        Some(n) => {
            let n = n as u8;
            if n > longest_len {
                return Err(field_err(
                    names[0],
                    n,
                    format!("must be at most {longest_len}"),
                ));
            }
            if n < prefix + 2 {
                return Err(field_err(
                    names[0],
                    n,
                    format!(
                        "network /{prefix} must hold at least four subnets (length >= {})",
                        prefix + 2
                    ),
                ));
            }
            n
        }
    };
    let size = block(bits, subnet_len);
    let net_size = block(bits, prefix);
    let min = given_min.unwrap_or(base + size);
    let max = given_max.unwrap_or(base + net_size - size);
    for (name, v) in [(names[1], min), (names[2], max)] {
        if v < base || v > base + (net_size - 1) {
            return Err(field_err(name, v, "must lie inside the network"));
        }
        if !(v - base).is_multiple_of(size) {
            return Err(field_err(
                name,
                v,
                format!("must be aligned to /{subnet_len}"),
            ));
        }
    }
    if min > max {
        return Err(ConfigError::Invalid(format!(
            "{} is above {}",
            names[1], names[2]
        )));
    }
    Ok(Range {
        subnet_len,
        min,
        max,
    })
}

fn parse_v4(
    obj: &Map<String, Value>,
    field: &'static str,
) -> Result<Option<Ipv4Addr>, ConfigError> {
    opt_str(obj, field)?
        .map(|s| {
            s.parse()
                .map_err(|_| field_err(field, s, "not an IPv4 address"))
        })
        .transpose()
}

fn parse_v6(
    obj: &Map<String, Value>,
    field: &'static str,
) -> Result<Option<Ipv6Addr>, ConfigError> {
    opt_str(obj, field)?
        .map(|s| {
            s.parse()
                .map_err(|_| field_err(field, s, "not an IPv6 address"))
        })
        .transpose()
}

impl NetworkConfig {
    /// Parses, defaults and validates config JSON text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let value: Value =
            serde_json::from_str(text).map_err(|e| ConfigError::Json(e.to_string()))?;
        let Value::Object(obj) = value else {
            return Err(ConfigError::NotAnObject);
        };
        let enable_ipv4 = opt_bool(&obj, "EnableIPv4")?.unwrap_or(true);
        let enable_ipv6 = opt_bool(&obj, "EnableIPv6")?.unwrap_or(false);
        let enable_nftables = opt_bool(&obj, "EnableNFTables")?.unwrap_or(false);
        if !enable_ipv4 && !enable_ipv6 {
            return Err(ConfigError::Invalid(
                "EnableIPv4 and EnableIPv6 are both false".into(),
            ));
        }
        if !enable_ipv4 {
            // The etcd key format cannot express a v6-only lease (§1.2), so neither
            // flanneld's etcd mode nor this agent can run without IPv4.
            return Err(field_err(
                "EnableIPv4",
                false,
                "IPv6-only networks are not supported with a subnet store (lease keys need an IPv4 part)",
            ));
        }

        let net_text = opt_str(&obj, "Network")?
            .ok_or_else(|| field_err("Network", "(missing)", "required when EnableIPv4 is true"))?;
        let network: Ipv4Net = net_text
            .parse()
            .map_err(|_| field_err("Network", net_text, "not an IPv4 CIDR"))?;
        let network = network.trunc();
        let r4 = range(
            32,
            u128::from(u32::from(network.network())),
            network.prefix_len(),
            opt_uint(&obj, "SubnetLen", 255)?,
            parse_v4(&obj, "SubnetMin")?.map(|a| u128::from(u32::from(a))),
            parse_v4(&obj, "SubnetMax")?.map(|a| u128::from(u32::from(a))),
            ["SubnetLen", "SubnetMin", "SubnetMax"],
            (24, 28, 30),
        )?;

        let ipv6 = if enable_ipv6 {
            let text = opt_str(&obj, "IPv6Network")?.ok_or_else(|| {
                field_err(
                    "IPv6Network",
                    "(missing)",
                    "required when EnableIPv6 is true",
                )
            })?;
            let net: Ipv6Net = text
                .parse()
                .map_err(|_| field_err("IPv6Network", text, "not an IPv6 CIDR"))?;
            let net = net.trunc();
            let r6 = range(
                128,
                u128::from(net.network()),
                net.prefix_len(),
                opt_uint(&obj, "IPv6SubnetLen", 255)?,
                parse_v6(&obj, "IPv6SubnetMin")?.map(u128::from),
                parse_v6(&obj, "IPv6SubnetMax")?.map(u128::from),
                ["IPv6SubnetLen", "IPv6SubnetMin", "IPv6SubnetMax"],
                (64, 124, 126),
            )?;
            Some(Ipv6Config {
                network: net,
                subnet_len: r6.subnet_len,
                subnet_min: Ipv6Addr::from(r6.min),
                subnet_max: Ipv6Addr::from(r6.max),
            })
        } else {
            None
        };

        Ok(NetworkConfig {
            enable_ipv4,
            enable_ipv6,
            enable_nftables,
            network,
            subnet_len: r4.subnet_len,
            subnet_min: Ipv4Addr::from(r4.min as u32),
            subnet_max: Ipv4Addr::from(r4.max as u32),
            ipv6,
            backend: parse_backend(&obj)?,
        })
    }

    /// Whether `subnet` is a lease this config could have handed out: right length,
    /// aligned, between SubnetMin and SubnetMax.
    pub fn is_compatible(&self, subnet: Ipv4Net) -> bool {
        subnet.prefix_len() == self.subnet_len
            && subnet.trunc() == subnet
            && self.network.contains(&subnet)
            && subnet.network() >= self.subnet_min
            && subnet.network() <= self.subnet_max
    }

    /// The IPv6 counterpart of [`Self::is_compatible`]; false when IPv6 is off.
    pub fn is_compatible_v6(&self, subnet: Ipv6Net) -> bool {
        self.ipv6.as_ref().is_some_and(|v6| {
            subnet.prefix_len() == v6.subnet_len
                && subnet.trunc() == subnet
                && v6.network.contains(&subnet)
                && subnet.network() >= v6.subnet_min
                && subnet.network() <= v6.subnet_max
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> NetworkConfig {
        NetworkConfig::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn defaults_for_a_slash_16() {
        let c = parse(r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}"#);
        assert!(c.enable_ipv4 && !c.enable_ipv6 && !c.enable_nftables);
        assert_eq!(c.network.to_string(), "10.244.0.0/16");
        assert_eq!(c.subnet_len, 24);
        assert_eq!(c.subnet_min, Ipv4Addr::new(10, 244, 1, 0));
        assert_eq!(c.subnet_max, Ipv4Addr::new(10, 244, 255, 0));
        assert_eq!(c.backend.kind, "vxlan");
        assert_eq!(c.backend.vni, 1);
        assert_eq!(c.backend.port, None);
        assert!(!c.backend.learning && !c.backend.direct_routing);
    }

    #[test]
    fn subnet_len_default_for_small_networks() {
        // ≤ /22 → 24; longer → prefix + 2; longer than /28 → error.
        assert_eq!(parse(r#"{"Network":"10.0.0.0/22"}"#).subnet_len, 24);
        let c = parse(r#"{"Network":"10.0.0.0/24"}"#);
        assert_eq!(c.subnet_len, 26);
        assert_eq!(c.subnet_min, Ipv4Addr::new(10, 0, 0, 64));
        assert_eq!(c.subnet_max, Ipv4Addr::new(10, 0, 0, 192));
        assert_eq!(parse(r#"{"Network":"10.0.0.0/28"}"#).subnet_len, 30);
        assert!(NetworkConfig::parse(r#"{"Network":"10.0.0.0/29"}"#).is_err());
    }

    #[test]
    fn keys_match_case_insensitively_and_unknown_keys_are_ignored() {
        let c = parse(
            r#"{"network":"10.5.0.0/16","SUBNETLEN":20,"backend":{"type":"VXLAN","vni":4,"port":4789,"directrouting":true},"Whatever":1}"#,
        );
        assert_eq!(c.subnet_len, 20);
        assert_eq!(c.subnet_min, Ipv4Addr::new(10, 5, 16, 0));
        assert_eq!(c.subnet_max, Ipv4Addr::new(10, 5, 240, 0));
        assert_eq!(c.backend.kind, "vxlan");
        assert_eq!(c.backend.vni, 4);
        assert_eq!(c.backend.port, Some(4789));
        assert!(c.backend.direct_routing);
    }

    #[test]
    fn missing_backend_means_udp_like_flanneld() {
        assert_eq!(parse(r#"{"Network":"10.0.0.0/8"}"#).backend.kind, "udp");
    }

    #[test]
    fn explicit_min_max_are_validated() {
        let c =
            parse(r#"{"Network":"10.0.0.0/16","SubnetMin":"10.0.10.0","SubnetMax":"10.0.20.0"}"#);
        assert_eq!(c.subnet_min, Ipv4Addr::new(10, 0, 10, 0));
        assert_eq!(c.subnet_max, Ipv4Addr::new(10, 0, 20, 0));
        for bad in [
            r#"{"Network":"10.0.0.0/16","SubnetMin":"10.1.0.0"}"#,
            r#"{"Network":"10.0.0.0/16","SubnetMax":"10.0.20.1"}"#,
            r#"{"Network":"10.0.0.0/16","SubnetMin":"10.0.30.0","SubnetMax":"10.0.20.0"}"#,
            r#"{"Network":"10.0.0.0/16","SubnetLen":31}"#,
            r#"{"Network":"10.0.0.0/16","SubnetLen":17}"#,
            r#"{"Network":"10.0.0.0/16","SubnetLen":"24"}"#,
            r#"{"Network":"10.0.0.0/33"}"#,
            r#"{"Network":"nope"}"#,
            r#"{"SubnetLen":24}"#,
            r#"{"Network":"10.0.0.0/16","EnableIPv4":false,"EnableIPv6":false}"#,
            r#"{"Network":"10.0.0.0/16","Backend":{"Type":"vxlan","VNI":0}}"#,
            r#"{"Network":"10.0.0.0/16","Backend":"vxlan"}"#,
            r#"[1]"#,
            r#"{"#,
        ] {
            assert!(NetworkConfig::parse(bad).is_err(), "{bad} accepted");
        }
        let e = NetworkConfig::parse(r#"{"Network":"10.0.0.0/16","SubnetLen":17}"#).unwrap_err();
        assert!(e.to_string().contains("SubnetLen"), "{e}");
    }

    #[test]
    fn ipv6_defaults() {
        let c = parse(
            r#"{"Network":"10.0.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10::/56","Backend":{"Type":"vxlan"}}"#,
        );
        let v6 = c.ipv6.unwrap();
        assert_eq!(v6.subnet_len, 64);
        assert_eq!(v6.subnet_min, "fd00:10:0:1::".parse::<Ipv6Addr>().unwrap());
        assert_eq!(v6.subnet_max, "fd00:10:0:ff::".parse::<Ipv6Addr>().unwrap());
        let c = parse(r#"{"Network":"10.0.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/120"}"#);
        assert_eq!(c.ipv6.unwrap().subnet_len, 122);
        assert!(NetworkConfig::parse(r#"{"Network":"10.0.0.0/16","EnableIPv6":true}"#).is_err());
        assert!(NetworkConfig::parse(
            r#"{"Network":"10.0.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/125"}"#
        )
        .is_err());
    }

    #[test]
    fn compatibility() {
        let c = parse(r#"{"Network":"10.244.0.0/16","SubnetMax":"10.244.100.0"}"#);
        assert!(c.is_compatible("10.244.5.0/24".parse().unwrap()));
        assert!(
            !c.is_compatible("10.244.0.0/24".parse().unwrap()),
            "below SubnetMin"
        );
        assert!(
            !c.is_compatible("10.244.101.0/24".parse().unwrap()),
            "above SubnetMax"
        );
        assert!(
            !c.is_compatible("10.244.5.0/25".parse().unwrap()),
            "wrong length"
        );
        assert!(
            !c.is_compatible("10.245.5.0/24".parse().unwrap()),
            "outside Network"
        );
        assert!(
            !c.is_compatible_v6("fd00:10:0:5::/64".parse().unwrap()),
            "v6 off"
        );
    }

    #[test]
    fn ipv6_compatibility_and_explicit_range() {
        let c = parse(
            r#"{"Network":"10.0.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10::/48","IPv6SubnetLen":64,"IPv6SubnetMin":"fd00:10:0:10::","IPv6SubnetMax":"fd00:10:0:20::"}"#,
        );
        assert!(c.enable_ipv4 && c.enable_ipv6);
        assert!(c.is_compatible_v6("fd00:10:0:10::/64".parse().unwrap()));
        assert!(c.is_compatible_v6("fd00:10:0:20::/64".parse().unwrap()));
        assert!(
            !c.is_compatible_v6("fd00:10:0:f::/64".parse().unwrap()),
            "below min"
        );
        assert!(
            !c.is_compatible_v6("fd00:10:0:21::/64".parse().unwrap()),
            "above max"
        );
        assert!(
            !c.is_compatible_v6("fd00:10:0:10::/80".parse().unwrap()),
            "length"
        );
        assert!(
            !c.is_compatible_v6("fd00:11:0:10::/64".parse().unwrap()),
            "outside"
        );
        // Unaligned or outside bounds are refused, as for IPv4.
        for bad in [
            r#"{"Network":"10.0.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10::/48","IPv6SubnetMin":"fd00:10:0:10::1"}"#,
            r#"{"Network":"10.0.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10::/48","IPv6SubnetMax":"fd00:11::"}"#,
            r#"{"Network":"10.0.0.0/16","EnableIPv6":true,"IPv6Network":"10.0.0.0/8"}"#,
        ] {
            assert!(NetworkConfig::parse(bad).is_err(), "{bad} accepted");
        }
    }
}
