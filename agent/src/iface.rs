//! Choice of the external interface and public IP: `--iface` (name or address),
//! `--iface-regex` (addresses first, then names), `--public-ip` alone (the interface
//! holding it), else the interface of the default route (flanneld's order, §5).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use kernel::netlink::{Address, Family, Link, LinkRef, Netlink, RouteFilter, MAIN_TABLE};

use crate::backend::ExtIface;

/// Selection flags.
#[derive(Debug, Clone, Default)]
pub struct IfaceOptions {
    pub iface: Vec<String>,
    pub iface_regex: Vec<String>,
    pub public_ip: Option<Ipv4Addr>,
    /// `--public-ipv6`: advertised as `PublicIPv6` instead of the interface's address.
    pub public_ipv6: Option<Ipv6Addr>,
}

#[derive(Debug, thiserror::Error)]
pub enum IfaceError {
    #[error("list {what}: {source}")]
    Kernel {
        what: &'static str,
        #[source]
        source: kernel::Error,
    },
    #[error("--iface-regex {pattern:?}: {reason}")]
    Regex { pattern: String, reason: String },
    #[error("no interface matches {0}")]
    NoMatch(String),
    #[error("interface {name} has no usable IPv4 address")]
    NoAddress { name: String },
    #[error("interface {name} reports MTU 0")]
    NoMtu { name: String },
    #[error("no default route to pick an interface from; use --iface or --iface-regex")]
    NoDefaultRoute,
}

fn kerr(what: &'static str) -> impl FnOnce(kernel::Error) -> IfaceError {
    move |source| IfaceError::Kernel { what, source }
}

/// flanneld's address choice: IPv4, global before link-local, permanent first.
fn best_v4(addrs: &[Address], ifindex: u32) -> Option<Ipv4Addr> {
    let mut candidates: Vec<(u8, bool, Ipv4Addr)> = addrs
        .iter()
        .filter(|a| a.ifindex == ifindex)
        .filter_map(|a| match a.addr.addr() {
            IpAddr::V4(ip) if !ip.is_loopback() && !ip.is_unspecified() && !ip.is_multicast() => {
                // scope 0 = universe (global), 253 = link.
                let rank = if ip.is_link_local() || a.scope == 253 {
                    1
                } else {
                    0
                };
                Some((rank, !a.flags.permanent(), ip))
            }
            _ => None,
        })
        .collect();
    candidates.sort();
    candidates.first().map(|c| c.2)
}

/// The interface's IPv6 address for the overlay: global unicast (not link-local,
/// not loopback/multicast), usable (not tentative/failed DAD), permanent first.
fn best_v6(addrs: &[Address], ifindex: u32) -> Option<Ipv6Addr> {
    let mut candidates: Vec<(bool, Ipv6Addr)> = addrs
        .iter()
        .filter(|a| a.ifindex == ifindex && a.scope == 0)
        .filter(|a| {
            !a.flags.tentative() && a.flags.0 & kernel::netlink::AddressFlags::DADFAILED == 0
        })
        .filter_map(|a| match a.addr.addr() {
            IpAddr::V6(ip)
                if !ip.is_loopback()
                    && !ip.is_unspecified()
                    && !ip.is_multicast()
                    && (ip.segments()[0] & 0xffc0) != 0xfe80 =>
            {
                Some((!a.flags.permanent(), ip))
            }
            _ => None,
        })
        .collect();
    candidates.sort();
    candidates.first().map(|c| c.1)
}

/// Picks the interface per `opts` using `nl`.
pub fn select(nl: &mut dyn Netlink, opts: &IfaceOptions) -> Result<ExtIface, IfaceError> {
    let links = nl.links().map_err(kerr("links"))?;
    let addrs = nl
        .addresses(None, Some(Family::V4))
        .map_err(kerr("addresses"))?;
    let has_addr = |l: &Link, ip: Ipv4Addr| {
        addrs
            .iter()
            .any(|a| a.ifindex == l.index && a.addr.addr() == IpAddr::V4(ip))
    };

    let mut chosen: Option<(&Link, Option<Ipv4Addr>)> = None;
    let mut wanted = Vec::new();
    for spec in &opts.iface {
        wanted.push(format!("--iface {spec}"));
        chosen = match spec.parse::<Ipv4Addr>() {
            Ok(ip) => links
                .iter()
                .find(|l| has_addr(l, ip))
                .map(|l| (l, Some(ip))),
            Err(_) => links.iter().find(|l| &l.name == spec).map(|l| (l, None)),
        };
        if chosen.is_some() {
            break;
        }
    }
    if chosen.is_none() {
        for pattern in &opts.iface_regex {
            wanted.push(format!("--iface-regex {pattern}"));
            let re = regex_lite::Regex::new(pattern).map_err(|e| IfaceError::Regex {
                pattern: pattern.clone(),
                reason: e.to_string(),
            })?;
            // Addresses first, as flanneld does, then names.
            chosen = addrs
                .iter()
                .filter_map(|a| match a.addr.addr() {
                    IpAddr::V4(ip) if re.is_match(&ip.to_string()) => links
                        .iter()
                        .find(|l| l.index == a.ifindex)
                        .map(|l| (l, Some(ip))),
                    _ => None,
                })
                .next()
                .or_else(|| {
                    links
                        .iter()
                        .find(|l| re.is_match(&l.name))
                        .map(|l| (l, None))
                });
            if chosen.is_some() {
                break;
            }
        }
    }
    if chosen.is_none() && opts.iface.is_empty() && opts.iface_regex.is_empty() {
        if let Some(ip) = opts.public_ip {
            wanted.push(format!("--public-ip {ip}"));
            chosen = links
                .iter()
                .find(|l| has_addr(l, ip))
                .map(|l| (l, Some(ip)));
        } else {
            let filter = RouteFilter {
                family: Some(Family::V4),
                table: Some(MAIN_TABLE),
                oif: None,
            };
            let routes = nl.routes(&filter).map_err(kerr("routes"))?;
            let default = routes
                .iter()
                .filter(|r| r.dst == IpNet::V4(Default::default()) || r.dst.prefix_len() == 0)
                .filter_map(|r| r.oif)
                .next()
                .ok_or(IfaceError::NoDefaultRoute)?;
            chosen = links.iter().find(|l| l.index == default).map(|l| (l, None));
            wanted.push("the default route's interface".into());
        }
    }
    let Some((link, ip)) = chosen else {
        return Err(IfaceError::NoMatch(wanted.join(", ")));
    };
    let addr = match ip {
        Some(ip) => ip,
        None => best_v4(&addrs, link.index).ok_or_else(|| IfaceError::NoAddress {
            name: link.name.clone(),
        })?,
    };
    if link.mtu == 0 {
        return Err(IfaceError::NoMtu {
            name: link.name.clone(),
        });
    }
    let addrs6 = nl
        .addresses(Some(link.index), Some(Family::V6))
        .map_err(kerr("addresses"))?;
    let addr6 = best_v6(&addrs6, link.index);
    // Re-read by index: the listing may predate a rename.
    let fresh = nl.link(LinkRef::Index(link.index)).map_err(kerr("link"))?;
    Ok(ExtIface {
        index: fresh.index,
        name: fresh.name,
        addr,
        public_ip: opts.public_ip.unwrap_or(addr),
        addr6,
        public_ipv6: opts.public_ipv6.or(addr6),
        mtu: fresh.mtu,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kernel::fake::FakeKernel;
    use kernel::netlink::{Route, RouteMode, VethSpec};

    fn world() -> (FakeKernel, kernel::fake::FakeNetlink) {
        let k = FakeKernel::new();
        let mut nl = k.netlink("n");
        for (name, ip, mtu) in [
            ("eth0", "192.0.2.1/24", 1500),
            ("eth1", "198.51.100.1/24", 9000),
        ] {
            nl.create_veth(&VethSpec {
                name,
                peer_name: &format!("{name}p"),
                mtu: Some(mtu),
                ..Default::default()
            })
            .unwrap();
            let idx = nl.link(LinkRef::Name(name)).unwrap().index;
            nl.add_address(idx, ip.parse().unwrap()).unwrap();
        }
        let eth1 = nl.link(LinkRef::Name("eth1")).unwrap().index;
        nl.add_route(
            &Route::new("0.0.0.0/0".parse().unwrap())
                .via("198.51.100.254".parse().unwrap())
                .dev(eth1),
            RouteMode::Create,
        )
        .unwrap();
        (k, nl)
    }

    #[test]
    fn selection_order() {
        let (_k, mut nl) = world();
        let d = select(&mut nl, &IfaceOptions::default()).unwrap();
        assert_eq!(
            (d.name.as_str(), d.addr.to_string(), d.mtu),
            ("eth1", "198.51.100.1".into(), 9000)
        );
        let by_name = select(
            &mut nl,
            &IfaceOptions {
                iface: vec!["nope".into(), "eth0".into()],
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(by_name.name, "eth0");
        assert_eq!(by_name.public_ip.to_string(), "192.0.2.1");
        let by_ip = select(
            &mut nl,
            &IfaceOptions {
                iface: vec!["192.0.2.1".into()],
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(by_ip.name, "eth0");
        let by_re = select(
            &mut nl,
            &IfaceOptions {
                iface_regex: vec![r"^198\.51\.".into()],
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(by_re.name, "eth1");
        let by_re_name = select(
            &mut nl,
            &IfaceOptions {
                iface_regex: vec!["^eth0$".into()],
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(by_re_name.name, "eth0");
        let by_public = select(
            &mut nl,
            &IfaceOptions {
                public_ip: Some("192.0.2.1".parse().unwrap()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(by_public.name, "eth0");
        let nat = select(
            &mut nl,
            &IfaceOptions {
                iface: vec!["eth0".into()],
                public_ip: Some("203.0.113.5".parse().unwrap()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(
            (nat.addr.to_string(), nat.public_ip.to_string()),
            ("192.0.2.1".into(), "203.0.113.5".into())
        );
    }

    #[test]
    fn ipv6_address_of_the_chosen_interface() {
        let (_k, mut nl) = world();
        let d = select(&mut nl, &IfaceOptions::default()).unwrap();
        assert_eq!((d.addr6, d.public_ipv6), (None, None), "no IPv6 yet");
        let eth1 = nl.link(LinkRef::Name("eth1")).unwrap().index;
        let eth0 = nl.link(LinkRef::Name("eth0")).unwrap().index;
        for (idx, a) in [
            (eth1, "fe80::1/64"),
            (eth1, "fd70::1/64"),
            (eth0, "fd71::1/64"),
        ] {
            nl.add_address(idx, a.parse().unwrap()).unwrap();
        }
        let d = select(&mut nl, &IfaceOptions::default()).unwrap();
        assert_eq!(d.name, "eth1");
        assert_eq!(
            d.addr6,
            Some("fd70::1".parse().unwrap()),
            "global, not link-local"
        );
        assert_eq!(d.public_ipv6, d.addr6);
        let d = select(
            &mut nl,
            &IfaceOptions {
                iface: vec!["eth0".into()],
                public_ipv6: Some("2001:db8::9".parse().unwrap()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(d.addr6, Some("fd71::1".parse().unwrap()));
        assert_eq!(d.public_ipv6, Some("2001:db8::9".parse().unwrap()));
    }

    #[test]
    fn selection_errors() {
        let (_k, mut nl) = world();
        let e = select(
            &mut nl,
            &IfaceOptions {
                iface: vec!["wlan9".into()],
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("wlan9"), "{e}");
        let e = select(
            &mut nl,
            &IfaceOptions {
                iface_regex: vec!["(".into()],
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(matches!(e, IfaceError::Regex { .. }), "{e}");
        let e = select(
            &mut nl,
            &IfaceOptions {
                public_ip: Some("203.0.113.5".parse().unwrap()),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(matches!(e, IfaceError::NoMatch(_)), "{e}");
        let k = FakeKernel::new();
        let mut empty = k.netlink("e");
        assert!(matches!(
            select(&mut empty, &IfaceOptions::default()),
            Err(IfaceError::NoDefaultRoute)
        ));
        assert!(matches!(
            select(
                &mut empty,
                &IfaceOptions {
                    iface: vec!["lo".into()],
                    ..Default::default()
                }
            ),
            Err(IfaceError::NoAddress { .. })
        ));
    }
}
