//! The IPAM configuration, read from the *whole* network config like Go's `LoadIPAMConfig`.
//!
//! Go decodes with `encoding/json`, which matches keys case-insensitively and treats `null` as
//! "absent"; the private `field` helper reproduces both, so configs that work with the Go plugin
//! work here. Unknown keys are ignored. Wrong JSON types become [`IpamError::InvalidField`],
//! never a panic.

use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;

use ipnet::IpNet;
use serde_json::{Map, Value};

use crate::error::IpamError;
use crate::ids;
use crate::range::{canonical_ip, RangeSet, RawRange};

/// Where Go's host-local keeps its state unless `ipam.dataDir` says otherwise.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";

#[derive(Clone, Debug, PartialEq)]
pub struct IpamConfig {
    /// Network name: the directory `<data_dir>/<name>`.
    pub name: String,
    pub cni_version: String,
    /// Final order: `runtimeConfig.ipRanges`, the legacy flat range, `ipam.ranges`. The index is
    /// the `N` of `last_reserved_ip.N`.
    pub range_sets: Vec<RangeSet>,
    /// `ipam.routes`, verbatim (validated to have a CIDR `dst` and an IP `gw` if present).
    pub routes: Vec<Value>,
    pub data_dir: PathBuf,
    /// Parsed at ADD only (Go does not read it for DEL/CHECK, so a vanished file cannot block
    /// a DEL).
    pub resolv_conf: Option<PathBuf>,
    /// CNI_ARGS `IP=`, then `args.cni.ips`, then `runtimeConfig.ips`; canonical, no duplicates.
    pub requested_ips: Vec<IpAddr>,
}

impl IpamConfig {
    /// Parses and validates the IPAM part of `net_conf` (the full network config JSON).
    /// `cni_version` gates multiple range sets per family; `env_ip` is the CNI_ARGS `IP=` value.
    pub fn parse(
        net_conf: &Value,
        cni_version: &str,
        env_ip: Option<&str>,
    ) -> Result<IpamConfig, IpamError> {
        let top = as_object(net_conf, "network config")?;
        let name = opt_str(top, "name", "name")?.unwrap_or_default();
        ids::validate_network_name(name)?;

        let ipam = match field(top, "ipam") {
            None => return Err(IpamError::MissingIpam),
            Some(v) => as_object(v, "ipam")?,
        };

        let legacy = match field(ipam, "subnet") {
            Some(_) => Some(parse_raw_range(ipam, "ipam")?),
            None => None,
        };
        let ranges = match field(ipam, "ranges") {
            Some(v) => parse_range_sets(v, "ipam.ranges")?,
            None => Vec::new(),
        };
        let routes = match field(ipam, "routes") {
            Some(v) => parse_routes(v)?,
            None => Vec::new(),
        };
        let data_dir = match opt_str(ipam, "dataDir", "ipam.dataDir")? {
            Some(d) if !d.is_empty() => PathBuf::from(d),
            _ => PathBuf::from(DEFAULT_DATA_DIR),
        };
        let resolv_conf = opt_str(ipam, "resolvConf", "ipam.resolvConf")?
            .filter(|p| !p.is_empty())
            .map(PathBuf::from);

        let runtime = match field(top, "runtimeConfig") {
            Some(v) => Some(as_object(v, "runtimeConfig")?),
            None => None,
        };
        let runtime_ranges = match runtime.and_then(|rt| field(rt, "ipRanges")) {
            Some(v) => parse_range_sets(v, "runtimeConfig.ipRanges")?,
            None => Vec::new(),
        };

        let mut requested = Vec::new();
        if let Some(ip) = env_ip.filter(|s| !s.is_empty()) {
            requested.push(parse_requested_ip(ip, "CNI_ARGS IP")?);
        }
        if let Some(args) = field(top, "args") {
            let args = as_object(args, "args")?;
            if let Some(cni) = field(args, "cni") {
                let cni = as_object(cni, "args.cni")?;
                if let Some(ips) = field(cni, "ips") {
                    requested.extend(parse_ip_list(ips, "args.cni.ips")?);
                }
            }
        }
        if let Some(ips) = runtime.and_then(|rt| field(rt, "ips")) {
            requested.extend(parse_ip_list(ips, "runtimeConfig.ips")?);
        }
        let mut requested_ips: Vec<IpAddr> = Vec::with_capacity(requested.len());
        for ip in requested {
            if !requested_ips.contains(&ip) {
                requested_ips.push(ip);
            }
        }

        let mut raw_sets = runtime_ranges;
        raw_sets.extend(legacy.map(|r| vec![r]));
        raw_sets.extend(ranges);
        if raw_sets.is_empty() {
            return Err(IpamError::NoRanges);
        }

        let mut range_sets = Vec::with_capacity(raw_sets.len());
        for (index, raw) in raw_sets.iter().enumerate() {
            let set = RangeSet::canonicalize(raw)
                .map_err(|reason| IpamError::InvalidRangeSet { index, reason })?;
            range_sets.push(set);
        }

        let v4 = range_sets.iter().filter(|s| s.is_ipv4()).count();
        let v6 = range_sets.len() - v4;
        if (v4 > 1 || v6 > 1) && !version_at_least(cni_version, (0, 3, 0)) {
            return Err(IpamError::TooManyAddressesPerFamily {
                version: cni_version.to_owned(),
            });
        }

        for (first, a) in range_sets.iter().enumerate() {
            for (offset, b) in range_sets[first + 1..].iter().enumerate() {
                if a.overlaps(b) {
                    return Err(IpamError::RangeSetsOverlap {
                        first,
                        second: first + 1 + offset,
                    });
                }
            }
        }

        Ok(IpamConfig {
            name: name.to_owned(),
            cni_version: cni_version.to_owned(),
            range_sets,
            routes,
            data_dir,
            resolv_conf,
            requested_ips,
        })
    }
}

/// `encoding/json` semantics: exact key first, else a case-insensitive match; `null` = absent.
fn field<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    let value = match obj.get(key) {
        Some(v) => v,
        None => obj.iter().find(|(k, _)| k.eq_ignore_ascii_case(key))?.1,
    };
    (!value.is_null()).then_some(value)
}

fn invalid(field: &str, reason: impl Into<String>) -> IpamError {
    IpamError::InvalidField {
        field: field.to_owned(),
        reason: reason.into(),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn as_object<'a>(v: &'a Value, path: &str) -> Result<&'a Map<String, Value>, IpamError> {
    v.as_object()
        .ok_or_else(|| invalid(path, format!("expected an object, got {}", type_name(v))))
}

fn as_array<'a>(v: &'a Value, path: &str) -> Result<&'a Vec<Value>, IpamError> {
    v.as_array()
        .ok_or_else(|| invalid(path, format!("expected an array, got {}", type_name(v))))
}

fn as_str<'a>(v: &'a Value, path: &str) -> Result<&'a str, IpamError> {
    v.as_str()
        .ok_or_else(|| invalid(path, format!("expected a string, got {}", type_name(v))))
}

fn opt_str<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Option<&'a str>, IpamError> {
    field(obj, key).map(|v| as_str(v, path)).transpose()
}

/// An optional IP: Go's `net.IP` decodes `""` as nil, i.e. "use the default".
fn opt_ip(obj: &Map<String, Value>, key: &str, path: &str) -> Result<Option<IpAddr>, IpamError> {
    match opt_str(obj, key, path)? {
        None | Some("") => Ok(None),
        Some(s) => IpAddr::from_str(s)
            .map(|ip| Some(canonical_ip(ip)))
            .map_err(|_| invalid(path, format!("invalid IP address: {s}"))),
    }
}

fn parse_cidr(s: &str, path: &str) -> Result<IpNet, IpamError> {
    IpNet::from_str(s).map_err(|_| invalid(path, format!("invalid CIDR address: {s}")))
}

fn parse_raw_range(obj: &Map<String, Value>, path: &str) -> Result<RawRange, IpamError> {
    let subnet_path = format!("{path}.subnet");
    let subnet = match field(obj, "subnet") {
        Some(v) => parse_cidr(as_str(v, &subnet_path)?, &subnet_path)?,
        None => return Err(invalid(&subnet_path, "missing")),
    };
    Ok(RawRange {
        subnet,
        range_start: opt_ip(obj, "rangeStart", &format!("{path}.rangeStart"))?,
        range_end: opt_ip(obj, "rangeEnd", &format!("{path}.rangeEnd"))?,
        gateway: opt_ip(obj, "gateway", &format!("{path}.gateway"))?,
    })
}

fn parse_range_sets(v: &Value, path: &str) -> Result<Vec<Vec<RawRange>>, IpamError> {
    let mut sets = Vec::new();
    for (i, set) in as_array(v, path)?.iter().enumerate() {
        let set_path = format!("{path}[{i}]");
        // A null set decodes to an empty Go slice and then fails as "empty range set".
        let items: &[Value] = match set {
            Value::Null => &[],
            other => as_array(other, &set_path)?,
        };
        let mut ranges = Vec::with_capacity(items.len());
        for (j, r) in items.iter().enumerate() {
            let range_path = format!("{set_path}[{j}]");
            ranges.push(parse_raw_range(as_object(r, &range_path)?, &range_path)?);
        }
        sets.push(ranges);
    }
    Ok(sets)
}

fn parse_routes(v: &Value) -> Result<Vec<Value>, IpamError> {
    let routes = as_array(v, "ipam.routes")?;
    for (i, route) in routes.iter().enumerate() {
        let path = format!("ipam.routes[{i}]");
        let obj = as_object(route, &path)?;
        let dst_path = format!("{path}.dst");
        match opt_str(obj, "dst", &dst_path)? {
            Some(dst) => parse_cidr(dst, &dst_path)?,
            None => return Err(invalid(&dst_path, "missing")),
        };
        opt_ip(obj, "gw", &format!("{path}.gw"))?;
    }
    Ok(routes.clone())
}

/// `a.b.c.d` or `a.b.c.d/nn` (prefix ignored), as Go's `ip.ParseIP`.
fn parse_requested_ip(s: &str, path: &str) -> Result<IpAddr, IpamError> {
    let ip = if s.contains('/') {
        IpNet::from_str(s).map(|n| n.addr()).ok()
    } else {
        IpAddr::from_str(s).ok()
    };
    ip.map(canonical_ip)
        .ok_or_else(|| invalid(path, format!("invalid IP address: {s}")))
}

fn parse_ip_list(v: &Value, path: &str) -> Result<Vec<IpAddr>, IpamError> {
    as_array(v, path)?
        .iter()
        .enumerate()
        .map(|(i, ip)| {
            let item = format!("{path}[{i}]");
            parse_requested_ip(as_str(ip, &item)?, &item)
        })
        .collect()
}

/// libcni's `version.GreaterThanOrEqualTo`: `""` means 0.1.0, up to three numeric parts, an
/// unparsable version compares as "not greater".
fn version_at_least(version: &str, min: (i64, i64, i64)) -> bool {
    parse_version(version).is_some_and(|v| v >= min)
}

fn parse_version(version: &str) -> Option<(i64, i64, i64)> {
    if version.is_empty() {
        return Some((0, 1, 0));
    }
    let parts: Vec<&str> = version.split('.').collect();
    if parts.len() > 3 {
        return None;
    }
    let mut nums = [0i64; 3];
    for (n, part) in nums.iter_mut().zip(&parts) {
        *n = part.parse().ok()?;
    }
    Some((nums[0], nums[1], nums[2]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<IpamConfig, IpamError> {
        IpamConfig::parse(&v, "1.0.0", None)
    }

    fn err(v: Value) -> String {
        parse(v).unwrap_err().to_string()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn minimal_flannel_style() {
        let cfg = parse(json!({
            "cniVersion": "1.0.0", "name": "cbr0", "type": "bridge",
            "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.1.0/24"}]],
                     "routes": [{"dst": "10.244.0.0/16"}], "unknownKey": {"x": 1}},
            "whatever": true
        }))
        .unwrap();
        assert_eq!(cfg.name, "cbr0");
        assert_eq!(cfg.data_dir, PathBuf::from("/var/lib/cni/networks"));
        assert_eq!(cfg.range_sets.len(), 1);
        assert_eq!(cfg.range_sets[0].to_string(), "10.244.1.1-10.244.1.254");
        assert_eq!(cfg.routes, vec![json!({"dst": "10.244.0.0/16"})]);
        assert!(cfg.resolv_conf.is_none());
        assert!(cfg.requested_ips.is_empty());
    }

    #[test]
    fn range_set_order_runtime_legacy_ranges() {
        let cfg = parse(json!({
            "name": "n",
            "ipam": {"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.10", "gateway": "10.1.0.254",
                     "ranges": [[{"subnet": "10.2.0.0/24"}], [{"subnet": "fd00::/64"}]],
                     "dataDir": "/tmp/x", "resolvConf": "/etc/resolv.conf"},
            "runtimeConfig": {"ipRanges": [[{"subnet": "10.3.0.0/24"}]]}
        }))
        .unwrap();
        let sets: Vec<String> = cfg.range_sets.iter().map(|s| s.to_string()).collect();
        assert_eq!(
            sets,
            [
                "10.3.0.1-10.3.0.254",
                "10.1.0.10-10.1.0.254",
                "10.2.0.1-10.2.0.254",
                "fd00::1-fd00::ffff:ffff:ffff:ffff"
            ]
        );
        assert_eq!(cfg.range_sets[1].ranges()[0].gateway, ip("10.1.0.254"));
        assert_eq!(cfg.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(cfg.resolv_conf, Some(PathBuf::from("/etc/resolv.conf")));
    }

    #[test]
    fn legacy_range_needs_subnet() {
        // Go prepends the flat range only when a subnet is present.
        let cfg = parse(json!({"name": "n", "ipam": {"rangeStart": "10.9.9.9",
            "ranges": [[{"subnet": "10.2.0.0/24"}]]}}))
        .unwrap();
        assert_eq!(cfg.range_sets.len(), 1);
    }

    #[test]
    fn requested_ips_in_order_with_prefix_ignored() {
        let v = json!({
            "name": "n",
            "ipam": {"ranges": [[{"subnet": "10.2.0.0/24"}], [{"subnet": "fd00::/64"}]]},
            "args": {"cni": {"ips": ["10.2.0.7/24", "fd00::7"]}},
            "runtimeConfig": {"ips": ["::ffff:10.2.0.8", "10.2.0.5"]}
        });
        let cfg = IpamConfig::parse(&v, "1.1.0", Some("10.2.0.5")).unwrap();
        assert_eq!(
            cfg.requested_ips,
            [
                ip("10.2.0.5"),
                ip("10.2.0.7"),
                ip("fd00::7"),
                ip("10.2.0.8")
            ]
        );
        let e = IpamConfig::parse(&v, "1.1.0", Some("10.2.0.300")).unwrap_err();
        assert_eq!(e.code(), 7);
        assert_eq!(
            e.to_string(),
            "invalid IPAM config: CNI_ARGS IP: invalid IP address: 10.2.0.300"
        );
    }

    #[test]
    fn go_error_texts() {
        let cases = [
            (json!({"name": "n"}), "IPAM config missing 'ipam' key"),
            (json!({"name": "n", "ipam": null}), "IPAM config missing 'ipam' key"),
            (json!({"name": "n", "ipam": {}}), "no IP ranges specified"),
            (json!({"name": "n", "ipam": {"ranges": []}}), "no IP ranges specified"),
            (
                json!({"name": "n", "ipam": {"ranges": [[]]}}),
                "invalid range set 0: empty range set",
            ),
            (
                json!({"name": "n", "ipam": {"ranges": [[{"subnet": "10.0.0.0/24"}], null]}}),
                "invalid range set 1: empty range set",
            ),
            (
                json!({"name": "n", "ipam": {"ranges": [[{"subnet": "10.0.0.5/24"}]]}}),
                "invalid range set 0: Network has host bits set. For a subnet mask of length 24 the network address is 10.0.0.0",
            ),
            (
                json!({"name": "n", "ipam": {"ranges": [[{"subnet": "10.0.0.0/31"}]]}}),
                "invalid range set 0: Network 10.0.0.0/31 too small to allocate from",
            ),
            (
                json!({"name": "n", "ipam": {"ranges": [[{"subnet": "10.0.0.0/32"}]]}}),
                "invalid range set 0: Network 10.0.0.0/32 too small to allocate from",
            ),
            (
                json!({"name": "n", "ipam": {"ranges": [[{"subnet": "fd00::/127"}]]}}),
                "invalid range set 0: Network fd00::/127 too small to allocate from",
            ),
            (
                json!({"name": "n", "ipam": {"ranges": [[{"subnet": "fd00::/128"}]]}}),
                "invalid range set 0: Network fd00::/128 too small to allocate from",
            ),
            (
                json!({"name": "n", "ipam": {"subnet": "10.0.0.0/24", "rangeStart": "10.0.1.1"}}),
                "invalid range set 0: RangeStart 10.0.1.1 not in network 10.0.0.0/24",
            ),
            (
                json!({"name": "n", "ipam": {"subnet": "10.0.0.0/24", "rangeEnd": "10.0.1.1"}}),
                "invalid range set 0: RangeEnd 10.0.1.1 not in network 10.0.0.0/24",
            ),
            (
                json!({"name": "n", "ipam": {"ranges": [[{"subnet": "10.0.0.0/24"}, {"subnet": "fd00::/64"}]]}}),
                "invalid range set 0: mixed address families",
            ),
            (
                json!({"name": "n", "ipam": {"ranges": [[{"subnet": "10.0.0.0/24"}],
                    [{"subnet": "10.1.0.0/24"}, {"subnet": "10.1.0.0/16"}]]}}),
                "invalid range set 1: subnets 10.1.0.1-10.1.0.254 and 10.1.0.1-10.1.255.254 overlap",
            ),
            (
                json!({"name": "n", "ipam": {"subnet": "10.0.0.0/16",
                    "ranges": [[{"subnet": "10.1.0.0/24"}], [{"subnet": "10.0.5.0/24"}]]}}),
                "range set 0 overlaps with 2",
            ),
        ];
        for (conf, msg) in cases {
            let e = parse(conf.clone()).unwrap_err();
            assert_eq!(e.to_string(), msg, "{conf}");
            assert_eq!(e.code(), 7, "{conf}");
        }
    }

    #[test]
    fn old_versions_allow_one_set_per_family() {
        let two_v4 = json!({"name": "n", "ipam": {"ranges": [
            [{"subnet": "10.0.0.0/24"}], [{"subnet": "10.1.0.0/24"}]]}});
        for v in ["0.2.0", "0.1.0", "", "bogus"] {
            assert_eq!(
                IpamConfig::parse(&two_v4, v, None).unwrap_err().to_string(),
                format!("CNI version {v} does not support more than 1 address per family")
            );
        }
        for v in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0", "1.0"] {
            assert!(IpamConfig::parse(&two_v4, v, None).is_ok(), "{v}");
        }
        let dual = json!({"name": "n", "ipam": {"ranges": [
            [{"subnet": "10.0.0.0/24"}], [{"subnet": "fd00::/64"}]]}});
        assert!(IpamConfig::parse(&dual, "0.2.0", None).is_ok());
    }

    #[test]
    fn wrong_types_are_typed_errors() {
        let cases = [
            json!(null),
            json!([1, 2]),
            json!({"name": 5, "ipam": {}}),
            json!({"name": "n", "ipam": "host-local"}),
            json!({"name": "n", "ipam": {"ranges": "10.0.0.0/24"}}),
            json!({"name": "n", "ipam": {"ranges": [{"subnet": "10.0.0.0/24"}]}}),
            json!({"name": "n", "ipam": {"ranges": [["10.0.0.0/24"]]}}),
            json!({"name": "n", "ipam": {"ranges": [[{"subnet": 10}]]}}),
            json!({"name": "n", "ipam": {"ranges": [[{"rangeStart": "10.0.0.1"}]]}}),
            json!({"name": "n", "ipam": {"ranges": [[{"subnet": "10.0.0.0"}]]}}),
            json!({"name": "n", "ipam": {"ranges": [[{"subnet": "10.0.0.0/24", "gateway": "x"}]]}}),
            json!({"name": "n", "ipam": {"ranges": [[{"subnet": "10.0.0.0/24", "rangeEnd": []}]]}}),
            json!({"name": "n", "ipam": {"subnet": "10.0.0.0/24", "routes": {}}}),
            json!({"name": "n", "ipam": {"subnet": "10.0.0.0/24", "routes": [{"gw": "10.0.0.1"}]}}),
            json!({"name": "n", "ipam": {"subnet": "10.0.0.0/24", "routes": [{"dst": "0.0.0.0"}]}}),
            json!({"name": "n", "ipam": {"subnet": "10.0.0.0/24", "routes": [{"dst": "0.0.0.0/0", "gw": "nope"}]}}),
            json!({"name": "n", "ipam": {"subnet": "10.0.0.0/24", "dataDir": 1}}),
            json!({"name": "n", "ipam": {"subnet": "10.0.0.0/24", "resolvConf": false}}),
            json!({"name": "n", "ipam": {"subnet": "10.0.0.0/24"}, "runtimeConfig": []}),
            json!({"name": "n", "ipam": {"subnet": "10.0.0.0/24"}, "runtimeConfig": {"ips": "10.0.0.2"}}),
            json!({"name": "n", "ipam": {"subnet": "10.0.0.0/24"}, "runtimeConfig": {"ips": [7]}}),
            json!({"name": "n", "ipam": {"subnet": "10.0.0.0/24"}, "args": {"cni": {"ips": ["x"]}}}),
            json!({"name": "n", "ipam": {"subnet": "10.0.0.0/24"}, "args": {"cni": "x"}}),
            json!({"name": "n", "ipam": {"subnet": "10.0.0.0/24"}, "runtimeConfig": {"ipRanges": [[{}]]}}),
        ];
        for conf in cases {
            let e = parse(conf.clone()).unwrap_err();
            assert_eq!(e.code(), 7, "{conf}: {e}");
        }
        assert_eq!(
            err(
                json!({"name": "n", "ipam": {"ranges": [[{"subnet": "10.0.0.0/24", "gateway": "x"}]]}})
            ),
            "invalid IPAM config: ipam.ranges[0][0].gateway: invalid IP address: x"
        );
    }

    #[test]
    fn network_name_is_validated() {
        for name in ["", "../etc", ".host-local", "a/b"] {
            let e = parse(json!({"name": name, "ipam": {"subnet": "10.0.0.0/24"}})).unwrap_err();
            assert!(
                matches!(e, IpamError::InvalidNetworkName { .. }),
                "{name}: {e}"
            );
        }
    }

    #[test]
    fn keys_match_case_insensitively_and_null_is_absent() {
        let cfg = parse(
            json!({"Name": "n", "IPAM": {"Ranges": [[{"SUBNET": "10.0.0.0/24",
            "rangestart": "10.0.0.9", "gateway": null, "rangeEnd": ""}]], "dataDir": null,
            "routes": null}, "runtimeConfig": null, "args": null}),
        )
        .unwrap();
        assert_eq!(cfg.range_sets[0].to_string(), "10.0.0.9-10.0.0.254");
        assert_eq!(cfg.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
    }

    #[test]
    fn versions() {
        assert_eq!(parse_version(""), Some((0, 1, 0)));
        assert_eq!(parse_version("1.1"), Some((1, 1, 0)));
        assert_eq!(parse_version("1.2.3.4"), None);
        assert_eq!(parse_version("x"), None);
    }

    proptest::proptest! {
        // Arbitrary JSON must never panic the parser.
        #[test]
        fn parse_never_panics(v in arb_json(), ip in proptest::option::of(".{0,20}")) {
            let _ = IpamConfig::parse(&v, "1.0.0", ip.as_deref());
            let wrapped = json!({"name": "n", "ipam": v.clone(), "runtimeConfig": {"ipRanges": v.clone()}});
            let _ = IpamConfig::parse(&wrapped, "0.2.0", ip.as_deref());
            let ranged = json!({"name": "n", "ipam": {"ranges": [[v.clone()]], "routes": [v]}});
            let _ = IpamConfig::parse(&ranged, "1.1.0", None);
        }
    }

    fn arb_json() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            prop_oneof![
                Just("10.0.0.0/24".to_owned()),
                Just("fd00::/120".to_owned()),
                Just("10.0.0.5".to_owned()),
                Just("::ffff:10.0.0.0/120".to_owned()),
                ".{0,12}",
            ]
            .prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            let key = prop_oneof![
                Just("subnet".to_owned()),
                Just("ranges".to_owned()),
                Just("rangeStart".to_owned()),
                Just("rangeEnd".to_owned()),
                Just("gateway".to_owned()),
                Just("routes".to_owned()),
                Just("dst".to_owned()),
                Just("ips".to_owned()),
                "[a-z]{1,6}",
            ];
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map(key, inner, 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }
}
