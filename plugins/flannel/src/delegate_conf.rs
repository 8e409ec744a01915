//! The delegate config, built exactly as the Go plugin builds it (flannel-io/cni-plugin
//! `doCmdAdd`/`getDelegateIPAM`): the user's `delegate` keys, plus `name`, defaults for
//! `type`, `ipMasq`, `mtu`, `isGateway` (bridge only) that apply only when the key is
//! absent, `cniVersion`, `runtimeConfig`, and an `ipam` section whose `ranges` come from
//! subnet.env and whose `routes` are the user's followed by one per cluster network.

use crate::error::FlannelError;
use crate::gojson;
use crate::netconf::FlannelConf;
use crate::subnet_env::SubnetEnv;
use ipnet::IpNet;
use serde_json::{json, Map, Value};
use std::net::IpAddr;

pub const DEFAULT_TYPE: &str = "bridge";
pub const DEFAULT_IPAM_TYPE: &str = "host-local";

/// The delegate config as an object, plus its `type`.
#[derive(Debug, Clone, PartialEq)]
pub struct DelegateConf {
    pub plugin_type: String,
    pub conf: Map<String, Value>,
}

impl DelegateConf {
    /// Compact, keys sorted: the bytes the Go plugin would save and send.
    pub fn to_bytes(&self) -> Vec<u8> {
        gojson::to_vec(&Value::Object(self.conf.clone()))
    }
}

pub fn build(conf: &FlannelConf, env: &SubnetEnv) -> Result<DelegateConf, FlannelError> {
    let mut d = conf.delegate.clone();
    if let Some(rc) = &conf.runtime_config {
        d.insert("runtimeConfig".into(), Value::Object(rc.clone()));
    }
    d.insert("name".into(), Value::String(conf.name.clone()));
    // The invocation log follows the chain: bridge and host-local read the delegate
    // config, so an operator who sets logFile on flannel gets a line from every plugin.
    // Absent by default, so the default delegate stays byte-identical to Go's.
    for (k, v) in &conf.log_keys {
        d.entry(k.clone()).or_insert_with(|| v.clone());
    }
    d.entry("type")
        .or_insert_with(|| Value::String(DEFAULT_TYPE.into()));
    // flanneld masquerades itself when started with --ip-masq; otherwise the bridge must.
    d.entry("ipMasq").or_insert(Value::Bool(!env.ipmasq));
    d.entry("mtu").or_insert(json!(env.mtu));
    let plugin_type = match d.get("type") {
        Some(Value::String(t)) => t.clone(),
        _ => return Err(FlannelError::DelegateTypeNotString),
    };
    if plugin_type == DEFAULT_TYPE {
        d.entry("isGateway").or_insert(Value::Bool(true));
    }
    if !conf.cni_version.is_empty() {
        d.insert("cniVersion".into(), Value::String(conf.cni_version.clone()));
    }
    d.insert("ipam".into(), Value::Object(ipam(conf, env)?));
    Ok(DelegateConf {
        plugin_type,
        conf: d,
    })
}

fn ipam(conf: &FlannelConf, env: &SubnetEnv) -> Result<Map<String, Value>, FlannelError> {
    let mut ipam = conf.ipam.clone().unwrap_or_default();
    // Go checks key presence only, so a user's `"type": null` survives, as there.
    ipam.entry("type")
        .or_insert_with(|| Value::String(DEFAULT_IPAM_TYPE.into()));
    // `ranges` is replaced, IPv4 first. A user's flat `subnet` key is passed through like
    // every other key (host-local then sees two range sets), as in Go.
    let mut ranges = Vec::new();
    if let Some(sn) = env.subnet {
        ranges.push(json!([{ "subnet": sn.to_string() }]));
    }
    if let Some(sn) = env.ipv6_subnet {
        ranges.push(json!([{ "subnet": sn.to_string() }]));
    }
    ipam.insert("ranges".into(), Value::Array(ranges));
    let mut routes = user_routes(ipam.get("routes"))?;
    routes.extend(
        env.networks
            .iter()
            .map(|n| json!({ "dst": n.to_string() }))
            .chain(
                env.ipv6_networks
                    .iter()
                    .map(|n| json!({ "dst": n.to_string() })),
            ),
    );
    ipam.insert("routes".into(), Value::Array(routes));
    Ok(ipam)
}

/// `ipam.routes`, re-encoded the way Go's `types.Route` round trip does it: `dst` and `gw`
/// canonicalised, zero `mtu`/`advmss`/`priority` dropped, unknown keys dropped. A route
/// without a valid `dst` is an error here; Go would send `"dst":"<nil>"` to host-local.
fn user_routes(v: Option<&Value>) -> Result<Vec<Value>, FlannelError> {
    let items = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(other) => {
            return Err(FlannelError::IpamRoutes(format!(
                "expected a list of routes, got {}",
                cni::config::kind(other)
            )))
        }
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            route(item).map_err(|why| FlannelError::IpamRoutes(format!("route {i}: {why}")))
        })
        .collect()
}

fn route(item: &Value) -> Result<Value, String> {
    let Value::Object(m) = item else {
        return Err(format!(
            "expected an object, got {}",
            cni::config::kind(item)
        ));
    };
    let mut out = Map::new();
    let dst = match m.get("dst") {
        Some(Value::String(s)) => s
            .parse::<IpNet>()
            .map_err(|_| format!("dst {s:?} is not a CIDR"))?,
        _ => return Err("dst must be a CIDR string".to_owned()),
    };
    out.insert("dst".into(), Value::String(dst.to_string()));
    match m.get("gw") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s.is_empty() => {}
        Some(Value::String(s)) => {
            let gw: IpAddr = s.parse().map_err(|_| format!("gw {s:?} is not an IP"))?;
            out.insert("gw".into(), Value::String(gw.to_string()));
        }
        Some(other) => {
            return Err(format!(
                "gw must be a string, got {}",
                cni::config::kind(other)
            ))
        }
    }
    for (key, omit_zero) in [
        ("mtu", true),
        ("advmss", true),
        ("priority", true),
        ("table", false),
        ("scope", false),
    ] {
        match m.get(key) {
            None | Some(Value::Null) => {}
            Some(Value::Number(n)) if n.is_i64() => {
                if !(omit_zero && n.as_i64() == Some(0)) {
                    out.insert(key.into(), Value::Number(n.clone()));
                }
            }
            Some(other) => return Err(format!("{key} must be an integer, got {other}")),
        }
    }
    Ok(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subnet_env;
    use std::path::Path;

    fn flannel_conf(s: &str) -> FlannelConf {
        FlannelConf::from_netconf(&cni::NetConf::parse(s.as_bytes()).unwrap()).unwrap()
    }

    fn env(s: &str) -> SubnetEnv {
        subnet_env::parse(Path::new("/run/flannel/subnet.env"), s.as_bytes()).unwrap()
    }

    const V4: &str = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";
    const V6: &str = "FLANNEL_IPV6_NETWORK=fd00::/56\nFLANNEL_IPV6_SUBNET=fd00:0:0:1::1/64\nFLANNEL_MTU=1430\nFLANNEL_IPMASQ=false\n";
    const DUAL: &str = "FLANNEL_NETWORK=10.244.0.0/16,10.245.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_IPV6_NETWORK=fd00::/56\nFLANNEL_IPV6_SUBNET=fd00:0:0:1::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";

    fn render(conf: &str, subnet_env: &str) -> String {
        let d = build(&flannel_conf(conf), &env(subnet_env)).unwrap();
        String::from_utf8(d.to_bytes()).unwrap()
    }

    #[test]
    fn kube_flannel_is_byte_identical_to_go() {
        let conf = r#"{"name":"cbr0","cniVersion":"0.3.1","type":"flannel","delegate":{"hairpinMode":true,"isDefaultGateway":true}}"#;
        assert_eq!(
            render(conf, V4),
            r#"{"cniVersion":"0.3.1","hairpinMode":true,"ipMasq":false,"ipam":{"ranges":[[{"subnet":"10.244.1.0/24"}]],"routes":[{"dst":"10.244.0.0/16"}],"type":"host-local"},"isDefaultGateway":true,"isGateway":true,"mtu":1450,"name":"cbr0","type":"bridge"}"#
        );
    }

    #[test]
    fn ipv6_only() {
        assert_eq!(
            render(r#"{"name":"n6","cniVersion":"1.0.0"}"#, V6),
            r#"{"cniVersion":"1.0.0","ipMasq":true,"ipam":{"ranges":[[{"subnet":"fd00:0:0:1::/64"}]],"routes":[{"dst":"fd00::/56"}],"type":"host-local"},"isGateway":true,"mtu":1430,"name":"n6","type":"bridge"}"#
        );
    }

    #[test]
    fn dual_stack_v4_first_with_user_keys() {
        let conf = r#"{"name":"cbr0","cniVersion":"1.1.0","type":"flannel",
            "delegate":{"hairpinMode":true,"bridge":"cni9","mtu":9000,"ipMasq":true,"isGateway":false},
            "ipam":{"dataDir":"/tmp/x","routes":[{"dst":"192.168.0.0/16","gw":"10.244.1.254"},{"dst":"fd10:0::/64","mtu":0,"table":0}],"ranges":"replaced","custom":[1]},
            "runtimeConfig":{"portMappings":[]}}"#;
        assert_eq!(
            render(conf, DUAL),
            r#"{"bridge":"cni9","cniVersion":"1.1.0","hairpinMode":true,"ipMasq":true,"ipam":{"custom":[1],"dataDir":"/tmp/x","ranges":[[{"subnet":"10.244.1.0/24"}],[{"subnet":"fd00:0:0:1::/64"}]],"routes":[{"dst":"192.168.0.0/16","gw":"10.244.1.254"},{"dst":"fd10::/64","table":0},{"dst":"10.244.0.0/16"},{"dst":"10.245.0.0/16"},{"dst":"fd00::/56"}],"type":"host-local"},"isGateway":false,"mtu":9000,"name":"cbr0","runtimeConfig":{"portMappings":[]},"type":"bridge"}"#
        );
    }

    #[test]
    fn non_bridge_gets_no_is_gateway_and_ipam_type_is_kept() {
        let conf = r#"{"name":"n","cniVersion":"0.4.0","delegate":{"type":"ipvlan","master":"eth0"},"ipam":{"type":"static"}}"#;
        let d = build(&flannel_conf(conf), &env(V4)).unwrap();
        assert_eq!(d.plugin_type, "ipvlan");
        assert!(!d.conf.contains_key("isGateway"));
        assert_eq!(d.conf["ipam"]["type"], "static");
        assert_eq!(d.conf["master"], "eth0");
    }

    #[test]
    fn empty_cni_version_is_not_copied() {
        let out = render(r#"{"name":"n"}"#, V4);
        assert!(!out.contains("cniVersion"), "{out}");
    }

    #[test]
    fn bad_routes_are_errors_with_go_prefix() {
        for routes in [
            r#""x""#,
            r#"[1]"#,
            r#"[{"gw":"1.2.3.4"}]"#,
            r#"[{"dst":"nope"}]"#,
            r#"[{"dst":"10.0.0.0/8","gw":"x"}]"#,
            r#"[{"dst":"10.0.0.0/8","mtu":"1"}]"#,
        ] {
            let conf = format!(r#"{{"name":"n","ipam":{{"routes":{routes}}}}}"#);
            let e = build(&flannel_conf(&conf), &env(V4)).unwrap_err();
            assert_eq!(e.code(), 7);
            assert!(
                e.to_string().starts_with("failed to assemble Delegate IPAM: failed to read IPAM routes: failed to parse ipam.routes: "),
                "{e}"
            );
        }
        let conf = r#"{"name":"n","ipam":{"routes":null}}"#;
        assert!(build(&flannel_conf(conf), &env(V4)).is_ok());
    }
}
