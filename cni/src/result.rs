//! The ADD result, held in one internal (1.1) model and converted to and from every
//! wire version.

use crate::error::{code, CniError};
use crate::version::Family;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::net::IpAddr;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    #[serde(
        default,
        rename = "socketPath",
        skip_serializing_if = "Option::is_none"
    )]
    pub socket_path: Option<String>,
    #[serde(default, rename = "pciID", skip_serializing_if = "Option::is_none")]
    pub pci_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// CIDR with host bits kept (`10.1.0.5/16`).
    #[serde(with = "ipnet_str")]
    pub address: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`; 0 is valid and must be printed (cni#434).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    #[serde(with = "ipnet_str")]
    pub dst: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advmss: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub domain: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_empty()
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

/// A result in the internal model (the 1.1 schema).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Dns,
}

mod ipnet_str {
    use ipnet::IpNet;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(n: &IpNet, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(n)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<IpNet, D::Error> {
        let s = String::deserialize(d)?;
        s.parse()
            .map_err(|_| serde::de::Error::custom(format!("invalid CIDR {s:?}")))
    }
}

/// 0.3.x/0.4.0 and 1.x share this shape; `version` is only read to be discarded.
#[derive(Deserialize)]
struct WireV1 {
    #[serde(default)]
    interfaces: Option<Vec<Interface>>,
    #[serde(default)]
    ips: Option<Vec<IpConfig>>,
    #[serde(default)]
    routes: Option<Vec<Route>>,
    #[serde(default)]
    dns: Option<Dns>,
}

#[derive(Deserialize, Serialize)]
struct Route02 {
    #[serde(with = "ipnet_str")]
    dst: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gw: Option<IpAddr>,
}

#[derive(Deserialize, Serialize)]
struct Ip02 {
    #[serde(with = "ipnet_str")]
    ip: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gateway: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    routes: Vec<Route02>,
}

#[derive(Deserialize)]
struct Wire02 {
    #[serde(default)]
    ip4: Option<Ip02>,
    #[serde(default)]
    ip6: Option<Ip02>,
    #[serde(default)]
    dns: Option<Dns>,
}

impl CniResult {
    /// Parses a result of any version. The result's own `cniVersion` decides the format;
    /// `fallback` is used when it has none (libcni does the same, cni#895). This is what
    /// Go's ParsePrevResult gets wrong (cni#862): it forces the config's version family.
    pub fn from_value(v: &Value, fallback: &str) -> Result<(CniResult, String), CniError> {
        let obj = v
            .as_object()
            .ok_or_else(|| CniError::new(code::DECODE_FAILURE, "result is not a JSON object"))?;
        let version = match obj.get("cniVersion") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::String(_)) | None | Some(Value::Null) => fallback.to_owned(),
            Some(other) => {
                return Err(CniError::new(
                    code::DECODE_FAILURE,
                    format!("result cniVersion must be a string, got {other}"),
                ))
            }
        };
        let parsed = crate::version::require_supported(&version)
            .map_err(|e| e.context("cannot read result"))?;
        let decode = |e: serde_json::Error| {
            CniError::new(
                code::DECODE_FAILURE,
                format!("failed to decode {version} result: {e}"),
            )
        };
        let result = match parsed.family() {
            Family::V02 => {
                let w: Wire02 = serde_json::from_value(v.clone()).map_err(decode)?;
                let mut r = CniResult {
                    dns: w.dns.unwrap_or_default(),
                    ..Default::default()
                };
                for ip in [w.ip4, w.ip6].into_iter().flatten() {
                    r.ips.push(IpConfig {
                        address: ip.ip,
                        gateway: ip.gateway,
                        interface: None,
                    });
                    r.routes.extend(ip.routes.into_iter().map(|rt| Route {
                        dst: rt.dst,
                        gw: rt.gw,
                        mtu: None,
                        advmss: None,
                        priority: None,
                        table: None,
                        scope: None,
                    }));
                }
                r
            }
            Family::V04 | Family::V1 => {
                let w: WireV1 = serde_json::from_value(v.clone()).map_err(decode)?;
                CniResult {
                    interfaces: w.interfaces.unwrap_or_default(),
                    ips: w.ips.unwrap_or_default(),
                    routes: w.routes.unwrap_or_default(),
                    dns: w.dns.unwrap_or_default(),
                }
            }
        };
        if let Some(bad) = result
            .ips
            .iter()
            .filter_map(|ip| ip.interface)
            .find(|&i| i as usize >= result.interfaces.len())
        {
            return Err(CniError::new(
                code::DECODE_FAILURE,
                format!(
                    "result ips[].interface {bad} is out of range ({} interfaces)",
                    result.interfaces.len()
                ),
            ));
        }
        Ok((result, version))
    }

    /// Renders the result in `version`'s wire format.
    pub fn to_value(&self, version: &str) -> Result<Value, CniError> {
        let parsed = crate::version::require_supported(version)?;
        let canon = if version.is_empty() { "0.1.0" } else { version };
        let mut out = Map::new();
        out.insert("cniVersion".into(), Value::String(canon.to_owned()));
        match parsed.family() {
            Family::V1 => {
                if !self.interfaces.is_empty() {
                    out.insert("interfaces".into(), to_json(&self.interfaces));
                }
                if !self.ips.is_empty() {
                    out.insert("ips".into(), to_json(&self.ips));
                }
            }
            Family::V04 => {
                if !self.interfaces.is_empty() {
                    // 0.3/0.4 interfaces have only name, mac and sandbox.
                    let ifs: Vec<Value> = self
                        .interfaces
                        .iter()
                        .map(|i| {
                            let mut m = Map::new();
                            m.insert("name".into(), Value::String(i.name.clone()));
                            if let Some(mac) = &i.mac {
                                m.insert("mac".into(), Value::String(mac.clone()));
                            }
                            if let Some(sb) = &i.sandbox {
                                m.insert("sandbox".into(), Value::String(sb.clone()));
                            }
                            Value::Object(m)
                        })
                        .collect();
                    out.insert("interfaces".into(), Value::Array(ifs));
                }
                if !self.ips.is_empty() {
                    let ips: Vec<Value> = self
                        .ips
                        .iter()
                        .map(|ip| {
                            let mut v = to_json(ip);
                            let fam = if ip.address.addr().is_ipv4() {
                                "4"
                            } else {
                                "6"
                            };
                            if let Value::Object(m) = &mut v {
                                m.insert("version".into(), Value::String(fam.into()));
                            }
                            v
                        })
                        .collect();
                    out.insert("ips".into(), Value::Array(ips));
                }
            }
            Family::V02 => {
                let v4 = self.ips.iter().find(|ip| ip.address.addr().is_ipv4());
                let v6 = self.ips.iter().find(|ip| ip.address.addr().is_ipv6());
                if v4.is_none() && v6.is_none() {
                    return Err(CniError::new(
                        code::INCOMPATIBLE_VERSION,
                        format!("cannot convert result to version {canon}: it has no IP address"),
                    ));
                }
                for (key, ip, want_v4) in [("ip4", v4, true), ("ip6", v6, false)] {
                    let Some(ip) = ip else { continue };
                    let routes = self
                        .routes
                        .iter()
                        .filter(|r| r.dst.addr().is_ipv4() == want_v4)
                        .map(|r| Route02 {
                            dst: r.dst,
                            gw: r.gw,
                        })
                        .collect();
                    let entry = Ip02 {
                        ip: ip.address,
                        gateway: ip.gateway,
                        routes,
                    };
                    out.insert(key.into(), to_json(&entry));
                }
                if !self.dns.is_empty() {
                    out.insert("dns".into(), to_json(&self.dns));
                }
                return Ok(Value::Object(out));
            }
        }
        if !self.routes.is_empty() {
            out.insert("routes".into(), to_json(&self.routes));
        }
        if !self.dns.is_empty() {
            out.insert("dns".into(), to_json(&self.dns));
        }
        Ok(Value::Object(out))
    }

    /// Index of the interface named `ifname` that lives in a sandbox, if any.
    pub fn sandbox_interface(&self, ifname: &str) -> Option<usize> {
        self.interfaces
            .iter()
            .position(|i| i.name == ifname && i.sandbox.as_deref().is_some_and(|s| !s.is_empty()))
    }
}

/// Serialising our own derive types cannot fail (string keys only, no floats), so this
/// keeps `to_value` free of impossible error paths.
fn to_json<T: Serialize>(t: &T) -> Value {
    serde_json::to_value(t).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "cni0".into(),
                    mac: Some("aa:bb:cc:dd:ee:ff".into()),
                    ..Default::default()
                },
                Interface {
                    name: "eth0".into(),
                    mac: Some("aa:bb:cc:dd:ee:00".into()),
                    mtu: Some(1450),
                    sandbox: Some("/proc/1/ns/net".into()),
                    ..Default::default()
                },
            ],
            ips: vec![
                IpConfig {
                    address: "10.1.0.5/16".parse().unwrap(),
                    gateway: Some("10.1.0.1".parse().unwrap()),
                    interface: Some(1),
                },
                IpConfig {
                    address: "fd00::5/64".parse().unwrap(),
                    gateway: None,
                    interface: Some(0),
                },
            ],
            routes: vec![
                Route {
                    dst: "0.0.0.0/0".parse().unwrap(),
                    gw: Some("10.1.0.1".parse().unwrap()),
                    mtu: None,
                    advmss: None,
                    priority: None,
                    table: Some(0),
                    scope: None,
                },
                Route {
                    dst: "::/0".parse().unwrap(),
                    gw: None,
                    mtu: None,
                    advmss: None,
                    priority: None,
                    table: None,
                    scope: None,
                },
            ],
            dns: Dns {
                nameservers: vec!["10.96.0.10".into()],
                ..Default::default()
            },
        }
    }

    #[test]
    fn v1_roundtrip_keeps_everything() {
        let r = sample();
        let v = r.to_value("1.1.0").unwrap();
        assert_eq!(v["ips"][1]["interface"], 0, "interface 0 must be printed");
        assert_eq!(v["ips"][0]["address"], "10.1.0.5/16", "host bits kept");
        assert_eq!(v["interfaces"][1]["mtu"], 1450);
        let (back, ver) = CniResult::from_value(&v, "0.1.0").unwrap();
        assert_eq!(ver, "1.1.0");
        assert_eq!(back, r);
    }

    #[test]
    fn v04_adds_version_and_drops_new_interface_fields() {
        let v = sample().to_value("0.4.0").unwrap();
        assert_eq!(v["ips"][0]["version"], "4");
        assert_eq!(v["ips"][1]["version"], "6");
        assert!(v["interfaces"][1].get("mtu").is_none());
        let (back, _) = CniResult::from_value(&v, "1.1.0").unwrap();
        assert_eq!(back.ips, sample().ips);
    }

    #[test]
    fn v02_takes_first_of_each_family_and_splits_routes() {
        let v = sample().to_value("0.2.0").unwrap();
        assert_eq!(v["ip4"]["ip"], "10.1.0.5/16");
        assert_eq!(v["ip4"]["routes"][0]["dst"], "0.0.0.0/0");
        assert_eq!(v["ip6"]["routes"][0]["dst"], "::/0");
        assert!(v.get("interfaces").is_none());
        let (back, ver) = CniResult::from_value(&v, "1.0.0").unwrap();
        assert_eq!(ver, "0.2.0");
        assert_eq!(back.ips.len(), 2);
        assert_eq!(back.routes.len(), 2);
    }

    #[test]
    fn v02_without_ip_is_an_error() {
        let e = CniResult::default().to_value("0.2.0").unwrap_err();
        assert_eq!(e.code, 1);
    }

    #[test]
    fn missing_version_uses_fallback() {
        let v = json!({"ips":[{"address":"10.0.0.2/24","version":"4"}]});
        let (r, ver) = CniResult::from_value(&v, "0.3.1").unwrap();
        assert_eq!(ver, "0.3.1");
        assert_eq!(r.ips.len(), 1);
    }

    #[test]
    fn bad_results_are_decode_errors() {
        for v in [
            json!([]),
            json!({"cniVersion": 3}),
            json!({"cniVersion": "1.0.0", "ips": [{"address": "nope"}]}),
            json!({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.1/24", "interface": 3}]}),
            json!({"cniVersion": "7.0.0"}),
        ] {
            assert!(CniResult::from_value(&v, "1.0.0").is_err(), "{v}");
        }
    }
}
