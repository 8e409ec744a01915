//! Subnet leases in flanneld's exact wire format: the key
//! (`10.5.52.0-24[&fd00::-64]`) and the value JSON (`LeaseAttrs`), so that this agent
//! and real flanneld nodes read each other's leases from one etcd.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::SystemTime;

use ipnet::{Ipv4Net, Ipv6Net};
use kernel::netlink::MacAddr;
use serde_json::Value;

use crate::config::get_ci;

/// A lease's identity: its IPv4 subnet, plus the IPv6 one in dual stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubnetKey {
    pub v4: Ipv4Net,
    pub v6: Option<Ipv6Net>,
}

impl SubnetKey {
    pub fn v4(v4: Ipv4Net) -> Self {
        SubnetKey { v4, v6: None }
    }

    /// Parses the last path element of a lease key. Like flanneld's regex, the IPv4
    /// part is required and anything else is not a lease (None).
    pub fn parse(key: &str) -> Option<Self> {
        let (v4_text, v6_text) = match key.split_once('&') {
            Some((a, b)) => (a, Some(b)),
            None => (key, None),
        };
        let v4 = parse_part::<Ipv4Addr>(v4_text)
            .and_then(|(a, len)| Ipv4Net::new(a, len).ok())
            .filter(|n| n.trunc() == *n)?;
        let v6 = match v6_text {
            None => None,
            Some(t) => Some(
                parse_part::<Ipv6Addr>(t)
                    .and_then(|(a, len)| Ipv6Net::new(a, len).ok())
                    .filter(|n| n.trunc() == *n)?,
            ),
        };
        Some(SubnetKey { v4, v6 })
    }

    /// Whether two leases would give pods the same addresses: their IPv4 subnets
    /// overlap, or both have an IPv6 subnet and those overlap. Distinct keys can
    /// overlap in dual stack (`A&X` and `B&X`), so key uniqueness alone does not
    /// keep two nodes apart.
    pub fn overlaps(&self, other: &SubnetKey) -> bool {
        let v4 = self.v4.contains(&other.v4.network()) || other.v4.contains(&self.v4.network());
        let v6 = match (self.v6, other.v6) {
            (Some(a), Some(b)) => a.contains(&b.network()) || b.contains(&a.network()),
            _ => false,
        };
        v4 || v6
    }
}

fn parse_part<A: std::str::FromStr>(text: &str) -> Option<(A, u8)> {
    let (addr, len) = text.rsplit_once('-')?;
    // Go's regex accepts only digits for the length.
    if len.is_empty() || len.len() > 3 || !len.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((addr.parse().ok()?, len.parse().ok()?))
}

impl fmt::Display for SubnetKey {
    /// The key flanneld writes: `a.b.c.d-len`, then `&<v6>-len` in dual stack, with
    /// the v6 address in Go's canonical (RFC 5952) text, which std also produces.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.v4.network(), self.v4.prefix_len())?;
        if let Some(v6) = self.v6 {
            write!(f, "&{}-{}", v6.network(), v6.prefix_len())?;
        }
        Ok(())
    }
}

/// Why a lease value could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LeaseError {
    #[error("lease value is not valid JSON: {0}")]
    Json(String),
    #[error("lease value field {field}: {reason}")]
    Field { field: &'static str, reason: String },
}

/// flanneld's `LeaseAttrs`: what a node advertises with its subnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseAttrs {
    pub public_ip: Ipv4Addr,
    pub public_ipv6: Option<Ipv6Addr>,
    /// `"vxlan"`, `"host-gw"`, ...; empty for flanneld's udp backend.
    pub backend_type: String,
    /// Backend-specific JSON object (vxlan: `{"VNI":1,"VtepMAC":"..."}`).
    pub backend_data: Option<Value>,
    pub backend_v6_data: Option<Value>,
}

impl LeaseAttrs {
    /// The value JSON, byte for byte what flanneld writes: Go struct order, `PublicIPv6`
    /// always present (`null` when unset), `BackendType`/`BackendData`/`BackendV6Data`
    /// omitted when empty.
    pub fn to_json(&self) -> String {
        let mut out = format!("{{\"PublicIP\":\"{}\"", self.public_ip);
        match self.public_ipv6 {
            Some(v6) => out.push_str(&format!(",\"PublicIPv6\":\"{v6}\"")),
            None => out.push_str(",\"PublicIPv6\":null"),
        }
        if !self.backend_type.is_empty() {
            out.push_str(&format!(
                ",\"BackendType\":{}",
                Value::String(self.backend_type.clone())
            ));
        }
        // serde_json's default map is sorted, which for vxlan gives Go's field
        // order too ("VNI" < "VtepMAC").
        for (name, data) in [
            ("BackendData", &self.backend_data),
            ("BackendV6Data", &self.backend_v6_data),
        ] {
            if let Some(d) = data.as_ref().filter(|d| !d.is_null()) {
                out.push_str(&format!(",\"{name}\":{d}"));
            }
        }
        out.push('}');
        out
    }

    /// Reads a value the way Go's decoder does: field names case-insensitively,
    /// unknown fields ignored, a missing `PublicIP` as 0.0.0.0.
    pub fn from_json(text: &str) -> Result<Self, LeaseError> {
        let v: Value = serde_json::from_str(text).map_err(|e| LeaseError::Json(e.to_string()))?;
        let Value::Object(obj) = v else {
            return Err(LeaseError::Json("not an object".into()));
        };
        let text_field = |field: &'static str| -> Result<Option<&str>, LeaseError> {
            match get_ci(&obj, field) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.as_str())),
                Some(other) => Err(LeaseError::Field {
                    field,
                    reason: format!("expected a string, got {other}"),
                }),
            }
        };
        let public_ip = match text_field("PublicIP")? {
            None | Some("") => Ipv4Addr::UNSPECIFIED,
            Some(s) => s.parse().map_err(|_| LeaseError::Field {
                field: "PublicIP",
                reason: format!("{s:?} is not an IPv4 address"),
            })?,
        };
        let public_ipv6 = match text_field("PublicIPv6")? {
            None | Some("") => None,
            Some(s) => Some(s.parse().map_err(|_| LeaseError::Field {
                field: "PublicIPv6",
                reason: format!("{s:?} is not an IPv6 address"),
            })?),
        };
        let data = |field| get_ci(&obj, field).filter(|d| !d.is_null()).cloned();
        Ok(LeaseAttrs {
            public_ip,
            public_ipv6,
            backend_type: text_field("BackendType")?.unwrap_or_default().to_owned(),
            backend_data: data("BackendData"),
            backend_v6_data: data("BackendV6Data"),
        })
    }

    /// The VTEP MAC of a vxlan lease, if its BackendData carries a valid one.
    pub fn vtep_mac(&self) -> Option<MacAddr> {
        let Some(Value::Object(d)) = &self.backend_data else {
            return None;
        };
        get_ci(d, "VtepMAC")?.as_str()?.parse().ok()
    }

    /// The VTEP MAC of the peer's IPv6 vxlan device (`BackendV6Data.VtepMAC`).
    pub fn vtep_mac_v6(&self) -> Option<MacAddr> {
        let Some(Value::Object(d)) = &self.backend_v6_data else {
            return None;
        };
        get_ci(d, "VtepMAC")?.as_str()?.parse().ok()
    }
}

/// vxlan's BackendData.
pub fn vxlan_backend_data(vni: u32, mac: MacAddr) -> Value {
    serde_json::json!({"VNI": vni, "VtepMAC": mac.to_string()})
}

/// A lease as read from a store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub key: SubnetKey,
    pub attrs: LeaseAttrs,
    /// None: the key carries no TTL (a reservation, honoured as permanent).
    pub expiration: Option<SystemTime>,
    /// Store handle of the TTL (the etcd lease ID; 0 = none).
    pub ttl_handle: i64,
}

impl Lease {
    pub fn subnet(&self) -> Ipv4Net {
        self.key.v4
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLANNELD_VXLAN: &str = r#"{"PublicIP":"192.0.2.11","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"3e:41:9c:07:d2:10"}}"#;

    #[test]
    fn keys_round_trip_in_flanneld_format() {
        let k = SubnetKey::parse("10.5.52.0-24").unwrap();
        assert_eq!(k.v4.to_string(), "10.5.52.0/24");
        assert_eq!(k.v6, None);
        assert_eq!(k.to_string(), "10.5.52.0-24");
        let d = SubnetKey::parse("10.5.52.0-24&fd00:10:5:34::-64").unwrap();
        assert_eq!(d.v6.unwrap().to_string(), "fd00:10:5:34::/64");
        assert_eq!(d.to_string(), "10.5.52.0-24&fd00:10:5:34::-64");
        for bad in [
            "",
            "10.5.52.0",
            "10.5.52.0-",
            "10.5.52.1-24",
            "10.5.52.0-33",
            "10.5.52.0-+4",
            "fd00::-64",
            "10.5.52.0-24&fd00::",
            "10.5.52.0-24&10.0.0.0-8",
            "config",
        ] {
            assert_eq!(SubnetKey::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn keys_overlap_by_either_family() {
        let k = |s: &str| SubnetKey::parse(s).unwrap();
        let a = k("10.5.52.0-24&fd00:10:0:34::-64");
        assert!(a.overlaps(&k("10.5.53.0-24&fd00:10:0:34::-64")), "same v6");
        assert!(a.overlaps(&k("10.5.52.0-24&fd00:10:0:35::-64")), "same v4");
        assert!(a.overlaps(&k("10.5.0.0-16")), "v4 inside a wider one");
        assert!(
            a.overlaps(&k("10.5.53.0-24&fd00:10::-56")),
            "v6 inside a wider one"
        );
        assert!(!a.overlaps(&k("10.5.53.0-24&fd00:10:0:35::-64")));
        assert!(
            !a.overlaps(&k("10.5.53.0-24")),
            "a v4-only lease has no v6 to clash"
        );
    }

    #[test]
    fn value_json_is_byte_for_byte_flanneld() {
        let attrs = LeaseAttrs {
            public_ip: "192.0.2.11".parse().unwrap(),
            public_ipv6: None,
            backend_type: "vxlan".into(),
            backend_data: Some(vxlan_backend_data(1, "3e:41:9c:07:d2:10".parse().unwrap())),
            backend_v6_data: None,
        };
        assert_eq!(attrs.to_json(), FLANNELD_VXLAN);
        assert_eq!(LeaseAttrs::from_json(FLANNELD_VXLAN).unwrap(), attrs);
        assert_eq!(attrs.vtep_mac().unwrap().to_string(), "3e:41:9c:07:d2:10");

        let hostgw = LeaseAttrs {
            public_ip: "192.0.2.12".parse().unwrap(),
            public_ipv6: Some("2001:db8::12".parse().unwrap()),
            backend_type: "host-gw".into(),
            backend_data: None,
            backend_v6_data: None,
        };
        assert_eq!(
            hostgw.to_json(),
            r#"{"PublicIP":"192.0.2.12","PublicIPv6":"2001:db8::12","BackendType":"host-gw"}"#
        );
        assert_eq!(LeaseAttrs::from_json(&hostgw.to_json()).unwrap(), hostgw);
        assert_eq!(hostgw.vtep_mac(), None);
    }

    #[test]
    fn dual_stack_value_json_is_byte_for_byte_flanneld() {
        // What flanneld's vxlan backend writes with EnableIPv6 (key
        // `10.5.52.0-24&fd00:10:0:34::-64`).
        const DUAL: &str = r#"{"PublicIP":"192.0.2.11","PublicIPv6":"fd70::11","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"3e:41:9c:07:d2:10"},"BackendV6Data":{"VNI":1,"VtepMAC":"3e:41:9c:07:d2:11"}}"#;
        let attrs = LeaseAttrs {
            public_ip: "192.0.2.11".parse().unwrap(),
            public_ipv6: Some("fd70::11".parse().unwrap()),
            backend_type: "vxlan".into(),
            backend_data: Some(vxlan_backend_data(1, "3e:41:9c:07:d2:10".parse().unwrap())),
            backend_v6_data: Some(vxlan_backend_data(1, "3e:41:9c:07:d2:11".parse().unwrap())),
        };
        assert_eq!(attrs.to_json(), DUAL);
        let back = LeaseAttrs::from_json(DUAL).unwrap();
        assert_eq!(back, attrs);
        assert_eq!(back.vtep_mac().unwrap().to_string(), "3e:41:9c:07:d2:10");
        assert_eq!(back.vtep_mac_v6().unwrap().to_string(), "3e:41:9c:07:d2:11");
        let key = SubnetKey {
            v4: "10.5.52.0/24".parse().unwrap(),
            v6: Some("fd00:10:0:34::/64".parse().unwrap()),
        };
        assert_eq!(key.to_string(), "10.5.52.0-24&fd00:10:0:34::-64");
        // host-gw dual stack: no backend data at all.
        let hg = LeaseAttrs {
            backend_type: "host-gw".into(),
            backend_data: None,
            backend_v6_data: None,
            ..attrs
        };
        assert_eq!(
            hg.to_json(),
            r#"{"PublicIP":"192.0.2.11","PublicIPv6":"fd70::11","BackendType":"host-gw"}"#
        );
        assert_eq!(hg.vtep_mac_v6(), None);
    }

    #[test]
    fn values_are_read_like_go_does() {
        // udp backend: no BackendType; case-insensitive names; unknown fields ignored.
        let a = LeaseAttrs::from_json(r#"{"publicip":"10.0.0.1","Extra":3}"#).unwrap();
        assert_eq!(a.public_ip, Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(a.backend_type, "");
        assert_eq!(a.to_json(), r#"{"PublicIP":"10.0.0.1","PublicIPv6":null}"#);
        assert_eq!(
            LeaseAttrs::from_json("{}").unwrap().public_ip,
            Ipv4Addr::UNSPECIFIED
        );
        for bad in [r#"{"PublicIP":"x"}"#, r#"{"PublicIP":5}"#, "[]", "nope"] {
            assert!(LeaseAttrs::from_json(bad).is_err(), "{bad}");
        }
        let no_mac = LeaseAttrs::from_json(
            r#"{"PublicIP":"10.0.0.1","BackendType":"vxlan","BackendData":{"VNI":1}}"#,
        )
        .unwrap();
        assert_eq!(no_mac.vtep_mac(), None);
    }
}
