//! The bridge plugin's own configuration keys: parsing, defaults and validation. Pure: no
//! kernel access, so every rule and every error text is unit-tested.

use cni::env::CniArgs;
use cni::{Dns, NetConf};
use kernel::netlink::MacAddr;
use serde::Deserialize;
use serde_json::Value;

/// The Go plugin's default bridge name (kube-flannel's configs rely on it).
pub const DEFAULT_BRIDGE: &str = "cni0";

/// Highest VLAN id a bridge port accepts (4095 is reserved by 802.1Q).
pub const MAX_VLAN: i64 = 4094;

/// A bad config. The texts up to the first `;` are the Go plugin's, so alerts and
/// documentation written against it keep matching.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("failed to load netconf: {0}")]
    Parse(String),
    #[error("invalid bridge name {name:?}: {reason}; set \"bridge\" to a valid interface name (at most 15 bytes, no '/', ':' or whitespace)")]
    BridgeName { name: String, reason: &'static str },
    #[error("invalid mtu {0}: must be between 0 (kernel default) and 65535")]
    Mtu(i64),
    #[error("invalid VLAN ID {0} (must be between 0 and 4094)")]
    Vlan(i64),
    #[error("incorrect trunk minID parameter")]
    TrunkMinId,
    #[error("incorrect trunk maxID parameter")]
    TrunkMaxId,
    #[error("incorrect trunk id parameter")]
    TrunkId,
    #[error("minID is greater than maxID in trunk parameter")]
    TrunkOrder,
    #[error("minID and maxID should be configured simultaneously, minID is missing")]
    TrunkMinMissing,
    #[error("minID and maxID should be configured simultaneously, maxID is missing")]
    TrunkMaxMissing,
    #[error("cannot set vlan and vlanTrunk at the same time")]
    VlanAndTrunk,
    #[error("unknown ipmasq backend {0:?}")]
    MasqBackend(String),
    #[error("invalid MAC address {value:?} in {origin}: {reason}")]
    Mac {
        value: String,
        origin: &'static str,
        reason: String,
    },
    #[error("cannot set hairpin mode and promiscuous mode at the same time")]
    HairpinAndPromisc,
    #[error("cannot use IPAM when DisableContainerInterface flag is set")]
    IpamWithoutInterface,
}

/// Where the container MAC came from (for error messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MacSource {
    RuntimeConfig,
    ArgsCni,
    CniArgs,
}

impl MacSource {
    fn key(self) -> &'static str {
        match self {
            MacSource::RuntimeConfig => "runtimeConfig.mac",
            MacSource::ArgsCni => "args.cni.mac",
            MacSource::CniArgs => "CNI_ARGS MAC",
        }
    }
}

/// `ipMasqBackend`. Accepted for compatibility; masquerading is always done with
/// nftables (the iptables chains of the Go plugin are still removed on DEL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MasqBackend {
    Iptables,
    Nftables,
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeConf {
    pub bridge: String,
    /// `isGateway`, forced on by `isDefaultGateway` as the Go plugin does.
    pub is_gateway: bool,
    pub is_default_gateway: bool,
    pub force_address: bool,
    pub ip_masq: bool,
    pub ip_masq_backend: Option<MasqBackend>,
    /// None: leave the kernel default.
    pub mtu: Option<u32>,
    pub hairpin: bool,
    pub promisc: bool,
    /// Access VLAN (PVID, untagged); 0 = none.
    pub vlan: u16,
    /// Tagged VLANs, deduplicated and sorted.
    pub trunk: Vec<u16>,
    pub preserve_default_vlan: bool,
    pub macspoofchk: bool,
    pub enable_dad: bool,
    pub disable_container_interface: bool,
    pub port_isolation: bool,
    pub mac: Option<MacAddr>,
    /// `ipam.type`; None is the L2-only mode.
    pub ipam_type: Option<String>,
    /// The config's `dns`, when it sets anything (overrides what IPAM returned).
    pub dns: Option<Dns>,
}

impl BridgeConf {
    /// Whether the bridge needs VLAN filtering (and ports need VLAN setup).
    pub fn uses_vlans(&self) -> bool {
        self.vlan != 0 || !self.trunk.is_empty()
    }

    pub fn is_layer3(&self) -> bool {
        self.ipam_type.is_some()
    }

    /// Parses and validates what every command reads. The MAC sources are read in
    /// ascending precedence: CNI_ARGS `MAC`, then `args.cni.mac`, then `runtimeConfig.mac`.
    pub fn parse(conf: &NetConf, args: &CniArgs) -> Result<BridgeConf, ConfigError> {
        let raw: Raw = serde_json::from_value(Value::Object(conf.raw.clone()))
            .map_err(|e| ConfigError::Parse(e.to_string()))?;
        let bridge = raw
            .bridge
            .clone()
            .unwrap_or_else(|| DEFAULT_BRIDGE.to_owned());
        validate_ifname(&bridge)?;
        let mtu = match raw.mtu.unwrap_or(0) {
            0 => None,
            m if (1..=65535).contains(&m) => Some(m as u32),
            m => return Err(ConfigError::Mtu(m)),
        };
        let vlan = raw.vlan.unwrap_or(0);
        if !(0..=MAX_VLAN).contains(&vlan) {
            return Err(ConfigError::Vlan(vlan));
        }
        let trunk = collect_trunk(raw.vlan_trunk.as_deref())?;
        if vlan > 0 && !trunk.is_empty() {
            return Err(ConfigError::VlanAndTrunk);
        }
        let ip_masq_backend = match raw.ip_masq_backend.as_deref() {
            None => None,
            Some("iptables") => Some(MasqBackend::Iptables),
            Some("nftables") => Some(MasqBackend::Nftables),
            Some(other) => return Err(ConfigError::MasqBackend(other.to_owned())),
        };
        let mac = pick_mac(&raw, args)?;
        let ipam_type = conf
            .ipam_type()
            .map_err(|e| ConfigError::Parse(e.msg))?
            .map(str::to_owned);
        let dns = conf.dns().map_err(|e| ConfigError::Parse(e.msg))?;
        let is_default_gateway = raw.is_default_gateway.unwrap_or(false);
        Ok(BridgeConf {
            bridge,
            is_gateway: raw.is_gateway.unwrap_or(false) || is_default_gateway,
            is_default_gateway,
            force_address: raw.force_address.unwrap_or(false),
            ip_masq: raw.ip_masq.unwrap_or(false),
            ip_masq_backend,
            mtu,
            hairpin: raw.hairpin_mode.unwrap_or(false),
            promisc: raw.promisc_mode.unwrap_or(false),
            vlan: vlan as u16,
            trunk,
            // Default false since the Go plugin's v1.8.0.
            preserve_default_vlan: raw.preserve_default_vlan.unwrap_or(false),
            macspoofchk: raw.macspoofchk.unwrap_or(false),
            enable_dad: raw.enabledad.unwrap_or(false),
            disable_container_interface: raw.disable_container_interface.unwrap_or(false),
            port_isolation: raw.port_isolation.unwrap_or(false),
            mac,
            ipam_type,
            dns,
        })
    }

    /// The checks the Go plugin makes only on ADD (a DEL must never fail on them).
    pub fn validate_for_add(&self) -> Result<(), ConfigError> {
        if self.is_layer3() && self.disable_container_interface {
            return Err(ConfigError::IpamWithoutInterface);
        }
        if self.hairpin && self.promisc {
            return Err(ConfigError::HairpinAndPromisc);
        }
        Ok(())
    }

    /// DEL must tear down whatever it can even when the config no longer validates (a
    /// rejected key would otherwise make every retried DEL fail and leak the IP): keys
    /// are read one by one, and a flag that cannot be read counts as set, so its
    /// teardown (which finds its state by name) is attempted anyway.
    pub fn lenient(conf: &NetConf, args: &CniArgs) -> (BridgeConf, Option<ConfigError>) {
        match BridgeConf::parse(conf, args) {
            Ok(c) => (c, None),
            Err(e) => {
                let flag = |k: &str| match conf.get(k) {
                    None => false,
                    Some(v) => v.as_bool().unwrap_or(true),
                };
                let bridge = conf
                    .get("bridge")
                    .and_then(Value::as_str)
                    .filter(|b| validate_ifname(b).is_ok())
                    .unwrap_or(DEFAULT_BRIDGE)
                    .to_owned();
                let ipam_type = match conf.ipam_type() {
                    Ok(t) => t.map(str::to_owned),
                    Err(_) => None,
                };
                let c = BridgeConf {
                    bridge,
                    is_gateway: flag("isGateway") || flag("isDefaultGateway"),
                    is_default_gateway: flag("isDefaultGateway"),
                    force_address: false,
                    ip_masq: flag("ipMasq"),
                    ip_masq_backend: None,
                    mtu: None,
                    hairpin: false,
                    promisc: false,
                    vlan: 0,
                    trunk: Vec::new(),
                    preserve_default_vlan: false,
                    macspoofchk: flag("macspoofchk"),
                    enable_dad: false,
                    disable_container_interface: false,
                    port_isolation: false,
                    mac: None,
                    ipam_type,
                    dns: None,
                };
                (c, Some(e))
            }
        }
    }
}

#[derive(Deserialize)]
struct Raw {
    bridge: Option<String>,
    #[serde(rename = "isGateway")]
    is_gateway: Option<bool>,
    #[serde(rename = "isDefaultGateway")]
    is_default_gateway: Option<bool>,
    #[serde(rename = "forceAddress")]
    force_address: Option<bool>,
    #[serde(rename = "ipMasq")]
    ip_masq: Option<bool>,
    #[serde(rename = "ipMasqBackend")]
    ip_masq_backend: Option<String>,
    mtu: Option<i64>,
    #[serde(rename = "hairpinMode")]
    hairpin_mode: Option<bool>,
    #[serde(rename = "promiscMode")]
    promisc_mode: Option<bool>,
    vlan: Option<i64>,
    #[serde(rename = "vlanTrunk")]
    vlan_trunk: Option<Vec<Trunk>>,
    #[serde(rename = "preserveDefaultVlan")]
    preserve_default_vlan: Option<bool>,
    macspoofchk: Option<bool>,
    enabledad: Option<bool>,
    #[serde(rename = "disableContainerInterface")]
    disable_container_interface: Option<bool>,
    #[serde(rename = "portIsolation")]
    port_isolation: Option<bool>,
    args: Option<ArgsKey>,
    #[serde(rename = "runtimeConfig")]
    runtime_config: Option<MacHolder>,
}

#[derive(Deserialize)]
struct ArgsKey {
    cni: Option<MacHolder>,
}

#[derive(Deserialize)]
struct MacHolder {
    mac: Option<String>,
}

#[derive(Deserialize)]
struct Trunk {
    #[serde(rename = "minID")]
    min_id: Option<i64>,
    #[serde(rename = "maxID")]
    max_id: Option<i64>,
    id: Option<i64>,
}

fn validate_ifname(name: &str) -> Result<(), ConfigError> {
    let reason = if name.is_empty() {
        "empty"
    } else if name.len() > 15 {
        "longer than 15 bytes"
    } else if name == "." || name == ".." {
        "reserved name"
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        "contains '/', ':' or whitespace"
    } else {
        return Ok(());
    };
    Err(ConfigError::BridgeName {
        name: name.chars().take(64).collect(),
        reason,
    })
}

/// `vlanTrunk` entries (`{id}` and/or `{minID,maxID}`) as a sorted set, with the Go
/// plugin's checks in its order.
fn collect_trunk(items: Option<&[Trunk]>) -> Result<Vec<u16>, ConfigError> {
    let valid = 1..=MAX_VLAN;
    let mut set = std::collections::BTreeSet::new();
    for item in items.unwrap_or_default() {
        match (item.min_id, item.max_id) {
            (Some(min), Some(max)) => {
                if !valid.contains(&min) {
                    return Err(ConfigError::TrunkMinId);
                }
                if !valid.contains(&max) {
                    return Err(ConfigError::TrunkMaxId);
                }
                if max < min {
                    return Err(ConfigError::TrunkOrder);
                }
                set.extend((min..=max).map(|v| v as u16));
            }
            (None, Some(_)) => return Err(ConfigError::TrunkMinMissing),
            (Some(_), None) => return Err(ConfigError::TrunkMaxMissing),
            (None, None) => {}
        }
        if let Some(id) = item.id {
            if !valid.contains(&id) {
                return Err(ConfigError::TrunkId);
            }
            set.insert(id as u16);
        }
    }
    Ok(set.into_iter().collect())
}

fn pick_mac(raw: &Raw, args: &CniArgs) -> Result<Option<MacAddr>, ConfigError> {
    let from_runtime = raw.runtime_config.as_ref().and_then(|r| r.mac.as_deref());
    let from_args = raw
        .args
        .as_ref()
        .and_then(|a| a.cni.as_ref())
        .and_then(|c| c.mac.as_deref());
    let candidates = [
        (from_runtime, MacSource::RuntimeConfig),
        (from_args, MacSource::ArgsCni),
        (args.get("MAC"), MacSource::CniArgs),
    ];
    let Some((value, source)) = candidates
        .into_iter()
        .find_map(|(v, s)| v.filter(|v| !v.is_empty()).map(|v| (v, s)))
    else {
        return Ok(None);
    };
    let bad = |reason: String| ConfigError::Mac {
        value: value.chars().take(64).collect(),
        origin: source.key(),
        reason,
    };
    let mac: MacAddr = value.parse().map_err(|e: kernel::Error| {
        bad(match e {
            kernel::Error::Invalid { reason, .. } => reason,
            other => other.to_string(),
        })
    })?;
    // The kernel refuses these for a veth with a bare EADDRNOTAVAIL; say why up front.
    if mac.0[0] & 1 != 0 {
        return Err(bad(
            "a multicast address cannot be an interface address".into()
        ));
    }
    if mac.0 == [0; 6] {
        return Err(bad(
            "the all-zero address cannot be an interface address".into()
        ));
    }
    Ok(Some(mac))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn conf(v: Value) -> NetConf {
        let mut v = v;
        v["cniVersion"] = json!("1.0.0");
        v["name"] = json!("net");
        NetConf::parse(v.to_string().as_bytes()).unwrap()
    }

    fn parse(v: Value) -> Result<BridgeConf, ConfigError> {
        BridgeConf::parse(&conf(v), &CniArgs::default())
    }

    fn err(v: Value) -> String {
        parse(v).unwrap_err().to_string()
    }

    #[test]
    fn defaults_match_the_go_plugin() {
        let c = parse(json!({"type": "bridge"})).unwrap();
        assert_eq!(c.bridge, "cni0");
        assert!(!c.is_gateway && !c.is_default_gateway && !c.force_address && !c.ip_masq);
        assert!(!c.hairpin && !c.promisc && !c.macspoofchk && !c.enable_dad);
        assert!(!c.preserve_default_vlan && !c.port_isolation && !c.disable_container_interface);
        assert_eq!((c.mtu, c.vlan, c.trunk.len()), (None, 0, 0));
        assert_eq!(
            (c.mac, c.ipam_type.as_deref(), c.dns.as_ref()),
            (None, None, None)
        );
        assert!(!c.uses_vlans() && !c.is_layer3());
    }

    #[test]
    fn every_key_is_read() {
        let c = parse(json!({
            "bridge": "br-x", "isDefaultGateway": true, "forceAddress": true, "ipMasq": true,
            "ipMasqBackend": "nftables", "mtu": 1450, "hairpinMode": true, "vlan": 100,
            "preserveDefaultVlan": true, "macspoofchk": true, "enabledad": true,
            "portIsolation": true, "disableContainerInterface": false,
            "ipam": {"type": "host-local"}, "dns": {"nameservers": ["10.96.0.10"]},
        }))
        .unwrap();
        assert_eq!(c.bridge, "br-x");
        assert!(c.is_gateway, "isDefaultGateway implies isGateway");
        assert!(c.is_default_gateway && c.force_address && c.ip_masq && c.hairpin);
        assert_eq!(c.ip_masq_backend, Some(MasqBackend::Nftables));
        assert_eq!((c.mtu, c.vlan), (Some(1450), 100));
        assert!(c.preserve_default_vlan && c.macspoofchk && c.enable_dad && c.port_isolation);
        assert_eq!(c.ipam_type.as_deref(), Some("host-local"));
        assert_eq!(c.dns.unwrap().nameservers, vec!["10.96.0.10"]);
        let c = parse(json!({"ipMasqBackend": "iptables", "promiscMode": true})).unwrap();
        assert_eq!(c.ip_masq_backend, Some(MasqBackend::Iptables));
        assert!(c.promisc);
        // An empty ipam.type is the L2 mode; an empty dns sets nothing.
        let c = parse(json!({"ipam": {"type": ""}, "dns": {}})).unwrap();
        assert!(!c.is_layer3() && c.dns.is_none());
    }

    #[test]
    fn vlan_errors_have_go_texts() {
        assert_eq!(
            err(json!({"vlan": 4095})),
            "invalid VLAN ID 4095 (must be between 0 and 4094)"
        );
        assert_eq!(
            err(json!({"vlan": -1})),
            "invalid VLAN ID -1 (must be between 0 and 4094)"
        );
        let cases = [
            (
                json!([{"minID": 0, "maxID": 5}]),
                "incorrect trunk minID parameter",
            ),
            (
                json!([{"minID": 4095, "maxID": 5}]),
                "incorrect trunk minID parameter",
            ),
            (
                json!([{"minID": 1, "maxID": 4095}]),
                "incorrect trunk maxID parameter",
            ),
            (
                json!([{"minID": 1, "maxID": 0}]),
                "incorrect trunk maxID parameter",
            ),
            (json!([{"id": 0}]), "incorrect trunk id parameter"),
            (json!([{"id": 5000}]), "incorrect trunk id parameter"),
            (
                json!([{"minID": 9, "maxID": 5}]),
                "minID is greater than maxID in trunk parameter",
            ),
            (
                json!([{"maxID": 5}]),
                "minID and maxID should be configured simultaneously, minID is missing",
            ),
            (
                json!([{"minID": 5}]),
                "minID and maxID should be configured simultaneously, maxID is missing",
            ),
        ];
        for (trunk, want) in cases {
            assert_eq!(err(json!({ "vlanTrunk": trunk })), want, "{trunk}");
        }
        assert_eq!(
            err(json!({"vlan": 5, "vlanTrunk": [{"id": 6}]})),
            "cannot set vlan and vlanTrunk at the same time"
        );
    }

    #[test]
    fn trunk_is_deduplicated_and_sorted() {
        let c = parse(json!({"vlanTrunk": [{"id": 7}, {"minID": 3, "maxID": 5}, {"id": 4}, {"minID": 6, "maxID": 7, "id": 1}]}))
            .unwrap();
        assert_eq!(c.trunk, vec![1, 3, 4, 5, 6, 7]);
        assert!(c.uses_vlans());
        // An empty list is no trunk at all.
        assert!(!parse(json!({"vlanTrunk": [{}]})).unwrap().uses_vlans());
    }

    #[test]
    fn other_errors() {
        assert_eq!(
            err(json!({"ipMasqBackend": "bpf"})),
            r#"unknown ipmasq backend "bpf""#
        );
        assert_eq!(
            err(json!({"ipMasqBackend": ""})),
            r#"unknown ipmasq backend """#
        );
        assert!(err(json!({"mtu": "1500"})).starts_with("failed to load netconf: "));
        assert!(err(json!({"ipMasq": "yes"})).starts_with("failed to load netconf: "));
        assert!(err(json!({"ipam": "host-local"})).starts_with("failed to load netconf: "));
        assert!(err(json!({"dns": {"nameservers": "x"}})).starts_with("failed to load netconf: "));
        assert!(err(json!({"mtu": -5})).starts_with("invalid mtu -5"));
        assert!(err(json!({"mtu": 70000})).starts_with("invalid mtu 70000"));
        for bad in ["", "a/b", "a b", "0123456789abcdef", "x:y"] {
            assert!(
                err(json!({ "bridge": bad })).starts_with("invalid bridge name"),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn add_only_checks() {
        let c = parse(json!({"hairpinMode": true, "promiscMode": true})).unwrap();
        assert_eq!(
            c.validate_for_add().unwrap_err().to_string(),
            "cannot set hairpin mode and promiscuous mode at the same time"
        );
        let c = parse(json!({"disableContainerInterface": true, "ipam": {"type": "host-local"}}))
            .unwrap();
        assert_eq!(
            c.validate_for_add().unwrap_err().to_string(),
            "cannot use IPAM when DisableContainerInterface flag is set"
        );
        let c = parse(json!({"disableContainerInterface": true})).unwrap();
        assert!(c.validate_for_add().is_ok());
    }

    #[test]
    fn mac_precedence_runtime_config_then_args_then_cni_args() {
        let args = CniArgs::parse("IgnoreUnknown=1;MAC=02:00:00:00:00:03").unwrap();
        let all = conf(json!({
            "runtimeConfig": {"mac": "02:00:00:00:00:01"},
            "args": {"cni": {"mac": "02:00:00:00:00:02"}},
        }));
        let mac = |c: &NetConf| {
            BridgeConf::parse(c, &args)
                .unwrap()
                .mac
                .unwrap()
                .to_string()
        };
        assert_eq!(mac(&all), "02:00:00:00:00:01");
        let no_rc = conf(json!({"args": {"cni": {"mac": "02:00:00:00:00:02"}}}));
        assert_eq!(mac(&no_rc), "02:00:00:00:00:02");
        let empty = conf(json!({"runtimeConfig": {"mac": ""}, "args": {"cni": {}}}));
        assert_eq!(mac(&empty), "02:00:00:00:00:03");
        let e = BridgeConf::parse(&conf(json!({"runtimeConfig": {"mac": "zz"}})), &args)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(r#"invalid MAC address "zz" in runtimeConfig.mac"#),
            "{e}"
        );
        let bad = CniArgs::parse("MAC=01:00:5e:00:00:01").unwrap();
        let e = BridgeConf::parse(&conf(json!({})), &bad)
            .unwrap_err()
            .to_string();
        assert!(e.contains("CNI_ARGS MAC") && e.contains("multicast"), "{e}");
        let zero = CniArgs::parse("MAC=00:00:00:00:00:00").unwrap();
        assert!(BridgeConf::parse(&conf(json!({})), &zero).is_err());
    }

    #[test]
    fn lenient_parse_for_del() {
        let c = conf(
            json!({"bridge": "br0", "ipMasq": true, "vlan": 9999, "ipam": {"type": "host-local"}}),
        );
        let (b, e) = BridgeConf::lenient(&c, &CniArgs::default());
        assert!(e.is_some());
        assert_eq!(b.bridge, "br0");
        assert!(b.ip_masq && b.is_layer3() && !b.macspoofchk);
        let c = conf(json!({"ipMasq": "yes", "macspoofchk": 1}));
        let (b, _) = BridgeConf::lenient(&c, &CniArgs::default());
        assert!(b.ip_masq && b.macspoofchk, "unreadable flags count as set");
        let (_, e) = BridgeConf::lenient(&conf(json!({})), &CniArgs::default());
        assert!(e.is_none());
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            (-5000i64..70000).prop_map(Value::from),
            "[ -~]{0,20}".prop_map(Value::String),
            prop::collection::vec((-2i64..4100).prop_map(Value::from), 0..3).prop_map(Value::Array),
        ]
    }

    fn trunk_item() -> impl Strategy<Value = Value> {
        (
            prop::option::of(-2i64..4100),
            prop::option::of(-2i64..4100),
            prop::option::of(-2i64..4100),
        )
            .prop_map(|(a, b, c)| {
                let mut m = serde_json::Map::new();
                for (k, v) in [("minID", a), ("maxID", b), ("id", c)] {
                    if let Some(v) = v {
                        m.insert(k.into(), json!(v));
                    }
                }
                Value::Object(m)
            })
    }

    proptest! {
        /// No config panics the parser; whatever parses satisfies the invariants the
        /// kernel calls rely on.
        #[test]
        fn parse_never_panics(
            keys in prop::collection::btree_map(
                prop_oneof![
                    Just("bridge"), Just("mtu"), Just("vlan"), Just("ipMasq"),
                    Just("hairpinMode"), Just("promiscMode"), Just("ipMasqBackend"),
                    Just("runtimeConfig"), Just("args"), Just("isDefaultGateway"),
                ],
                value(),
                0..6,
            ),
            trunk in prop::option::of(prop::collection::vec(trunk_item(), 0..4)),
            mac in prop::option::of("[0-9a-fA-F:.-]{0,20}"),
        ) {
            let mut v = json!({"cniVersion": "1.0.0", "name": "n"});
            for (k, val) in keys {
                v[k] = val;
            }
            if let Some(t) = trunk {
                v["vlanTrunk"] = Value::Array(t);
            }
            let args = CniArgs::parse(&mac.map(|m| format!("MAC={m}")).unwrap_or_default())
                .unwrap_or_default();
            let Ok(conf) = NetConf::parse(v.to_string().as_bytes()) else { return Ok(()) };
            if let Ok(c) = BridgeConf::parse(&conf, &args) {
                prop_assert!(c.vlan <= 4094);
                prop_assert!(c.trunk.windows(2).all(|w| w[0] < w[1]));
                prop_assert!(c.trunk.iter().all(|t| (1..=4094).contains(t)));
                prop_assert!(c.vlan == 0 || c.trunk.is_empty());
                prop_assert!(c.bridge.len() <= 15 && !c.bridge.is_empty());
                prop_assert!(c.is_gateway || !c.is_default_gateway);
                if let Some(m) = c.mac {
                    prop_assert!(m.0[0] & 1 == 0);
                }
            }
            let _ = BridgeConf::lenient(&conf, &args);
        }
    }
}
