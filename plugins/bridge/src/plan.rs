//! What an IPAM result turns into (pure): the container's addresses with their gateways,
//! the routes to install, and the gateway addresses the bridge must carry.

use crate::config::BridgeConf;
use cni::{CniResult, IpConfig, Route};
use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct L3Plan {
    /// IPAM's addresses, each pointing at the container interface, gateways filled in.
    pub ips: Vec<IpConfig>,
    /// IPAM's routes, plus the default routes `isDefaultGateway` adds.
    pub routes: Vec<Route>,
    /// Gateway addresses for the bridge, with the container address's prefix length,
    /// IPv4 first (the order the Go plugin configures them in).
    pub bridge_v4: Vec<IpNet>,
    pub bridge_v6: Vec<IpNet>,
}

impl L3Plan {
    /// The gateway a route without one uses: the first gateway of its family among the
    /// addresses, as the Go `ipam.ConfigureIface` picks it.
    pub fn family_gateway(&self, v4: bool) -> Option<IpAddr> {
        self.ips
            .iter()
            .filter_map(|ip| ip.gateway)
            .find(|gw| gw.is_ipv4() == v4)
    }

    pub fn has_v6(&self) -> bool {
        self.ips.iter().any(|ip| ip.address.addr().is_ipv6())
    }
}

/// The subnet's first address: what the Go plugin uses as gateway when IPAM gave none.
pub fn default_gateway(addr: &IpNet) -> IpAddr {
    match addr.network() {
        IpAddr::V4(n) => IpAddr::V4(Ipv4Addr::from(u32::from(n).wrapping_add(1))),
        IpAddr::V6(n) => IpAddr::V6(Ipv6Addr::from(u128::from(n).wrapping_add(1))),
    }
}

fn default_dst(v4: bool) -> IpNet {
    if v4 {
        IpNet::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0)
    } else {
        IpNet::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0)
    }
    .unwrap_or_default()
}

/// Mirrors the Go plugin's `calcGateways`, address by address: the gateway defaults to
/// the subnet's first address when `isGateway`; `isDefaultGateway` adds one default route
/// per family unless IPAM already returned a default route *with* a gateway for it.
pub fn plan(ipam: &CniResult, conf: &BridgeConf, container_index: u32) -> L3Plan {
    let mut ips = Vec::with_capacity(ipam.ips.len());
    let mut routes = ipam.routes.clone();
    let (mut bridge_v4, mut bridge_v6) = (Vec::new(), Vec::new());
    let mut default_done = [false, false];
    for ip in &ipam.ips {
        let v4 = ip.address.addr().is_ipv4();
        let mut ip = ip.clone();
        ip.interface = Some(container_index);
        if ip.gateway.is_none() && conf.is_gateway {
            ip.gateway = Some(default_gateway(&ip.address));
        }
        let fam = usize::from(!v4);
        if conf.is_default_gateway && !default_done[fam] {
            let dst = default_dst(v4);
            let has_default = routes.iter().any(|r| r.dst == dst && r.gw.is_some());
            if !has_default {
                routes.push(Route {
                    dst,
                    gw: ip.gateway,
                    mtu: None,
                    advmss: None,
                    priority: None,
                    table: None,
                    scope: None,
                });
            }
            default_done[fam] = true;
        }
        if conf.is_gateway {
            if let Some(gw) = ip.gateway {
                if let Ok(net) = IpNet::new(gw, ip.address.prefix_len()) {
                    if v4 {
                        bridge_v4.push(net);
                    } else {
                        bridge_v6.push(net);
                    }
                }
            }
        }
        ips.push(ip);
    }
    L3Plan {
        ips,
        routes,
        bridge_v4,
        bridge_v6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cni::env::CniArgs;
    use cni::NetConf;
    use serde_json::json;

    fn conf(extra: serde_json::Value) -> BridgeConf {
        let mut v = json!({"cniVersion": "1.0.0", "name": "n", "ipam": {"type": "host-local"}});
        for (k, val) in extra.as_object().unwrap() {
            v[k] = val.clone();
        }
        BridgeConf::parse(
            &NetConf::parse(v.to_string().as_bytes()).unwrap(),
            &CniArgs::default(),
        )
        .unwrap()
    }

    fn ipam(v: serde_json::Value) -> CniResult {
        CniResult::from_value(&v, "1.0.0").unwrap().0
    }

    #[test]
    fn gateway_defaults_to_first_address_with_container_prefix() {
        let r = ipam(json!({"ips": [{"address": "10.244.1.7/24"}, {"address": "fd00:1::7/64"}]}));
        let p = plan(&r, &conf(json!({"isGateway": true})), 2);
        assert_eq!(p.ips[0].gateway, Some("10.244.1.1".parse().unwrap()));
        assert_eq!(p.ips[1].gateway, Some("fd00:1::1".parse().unwrap()));
        assert!(p.ips.iter().all(|ip| ip.interface == Some(2)));
        assert_eq!(p.bridge_v4, vec!["10.244.1.1/24".parse::<IpNet>().unwrap()]);
        assert_eq!(p.bridge_v6, vec!["fd00:1::1/64".parse::<IpNet>().unwrap()]);
        assert!(p.routes.is_empty());
        assert!(p.has_v6());
        assert_eq!(p.family_gateway(false), Some("fd00:1::1".parse().unwrap()));
    }

    #[test]
    fn no_gateway_without_is_gateway() {
        let r = ipam(json!({"ips": [{"address": "10.244.1.7/24"}]}));
        let p = plan(&r, &conf(json!({})), 5);
        assert_eq!(p.ips[0].gateway, None);
        assert_eq!(p.ips[0].interface, Some(5));
        assert!(p.bridge_v4.is_empty());
        // An IPAM gateway is kept, and without isGateway not put on the bridge.
        let r = ipam(json!({"ips": [{"address": "10.244.1.7/24", "gateway": "10.244.1.254"}]}));
        let p = plan(&r, &conf(json!({})), 2);
        assert_eq!(p.ips[0].gateway, Some("10.244.1.254".parse().unwrap()));
        assert!(p.bridge_v4.is_empty());
        let p = plan(&r, &conf(json!({"isGateway": true})), 2);
        assert_eq!(
            p.bridge_v4,
            vec!["10.244.1.254/24".parse::<IpNet>().unwrap()]
        );
    }

    #[test]
    fn default_route_only_when_ipam_has_none_with_a_gateway() {
        let c = conf(json!({"isDefaultGateway": true}));
        let r = ipam(json!({"ips": [{"address": "10.1.0.5/16"}, {"address": "10.2.0.5/16"}]}));
        let p = plan(&r, &c, 2);
        assert_eq!(p.routes.len(), 1, "one default route per family");
        assert_eq!(p.routes[0].dst.to_string(), "0.0.0.0/0");
        assert_eq!(p.routes[0].gw, Some("10.1.0.1".parse().unwrap()));

        // IPAM's gw-less default route does not count.
        let r =
            ipam(json!({"ips": [{"address": "10.1.0.5/16"}], "routes": [{"dst": "0.0.0.0/0"}]}));
        assert_eq!(plan(&r, &c, 2).routes.len(), 2);
        let r = ipam(
            json!({"ips": [{"address": "10.1.0.5/16"}], "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.9"}]}),
        );
        assert_eq!(plan(&r, &c, 2).routes.len(), 1);

        let r = ipam(json!({"ips": [{"address": "fd00::5/64"}]}));
        let p = plan(&r, &c, 2);
        assert_eq!(p.routes[0].dst.to_string(), "::/0");
        assert_eq!(p.routes[0].gw, Some("fd00::1".parse().unwrap()));
    }
}
