//! Which subnet to lease (flanneld's `tryAcquireLease`), as a pure function of the
//! config, the leases in the store, our public IP and the subnet.env hint.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};

use crate::config::NetworkConfig;
use crate::lease::{Lease, SubnetKey};

/// flanneld picks randomly among at most this many free blocks, so that nodes
/// starting together rarely race for the same one.
pub const RANDOM_POOL: usize = 100;

/// The decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// A lease with our public IP exists and still fits the config: overwrite it.
    Reuse(Lease),
    /// Create this key (fails if someone created it meanwhile: retry).
    Create(SubnetKey),
}

/// What to do, plus leases of ours that no longer fit the config (flanneld deletes
/// them before allocating).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub choice: Choice,
    pub delete: Vec<SubnetKey>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AllocError {
    #[error("out of subnets: every /{len} between {min} and {max} is leased")]
    Exhausted {
        len: u8,
        min: Ipv4Addr,
        max: Ipv4Addr,
    },
    #[error("out of IPv6 subnets: every /{len} between {min} and {max} is leased")]
    ExhaustedV6 {
        len: u8,
        min: Ipv6Addr,
        max: Ipv6Addr,
    },
}

/// Decides which subnet to take (IPv4 only hint). See [`plan_dual`].
pub fn plan(
    config: &NetworkConfig,
    existing: &[Lease],
    public_ip: Ipv4Addr,
    previous: Option<Ipv4Net>,
    pick: &mut dyn FnMut(usize) -> usize,
) -> Result<Plan, AllocError> {
    plan_dual(config, existing, public_ip, previous, None, pick)
}

/// Whether `key` is a lease this config could have handed out: the IPv4 part, and
/// with IPv6 enabled also the IPv6 part (which must then exist), as flanneld checks.
fn key_fits(config: &NetworkConfig, key: &SubnetKey) -> bool {
    config.is_compatible(key.v4)
        && (!config.enable_ipv6 || key.v6.is_some_and(|v6| config.is_compatible_v6(v6)))
}

/// Decides which subnet(s) to take. `pick(n)` returns an index below `n` (random in
/// production, fixed in tests). With IPv6 enabled the key gets an IPv6 part too:
/// reused with the lease, taken from subnet.env with the IPv4 hint, or allocated
/// independently (flanneld's `tryAcquireLease`).
pub fn plan_dual(
    config: &NetworkConfig,
    existing: &[Lease],
    public_ip: Ipv4Addr,
    previous: Option<Ipv4Net>,
    previous_v6: Option<Ipv6Net>,
    pick: &mut dyn FnMut(usize) -> usize,
) -> Result<Plan, AllocError> {
    let mut delete = Vec::new();
    // 1. Reuse by public IP (the node's identity in etcd mode).
    for lease in existing.iter().filter(|l| l.attrs.public_ip == public_ip) {
        if key_fits(config, &lease.key) {
            return Ok(Plan {
                choice: Choice::Reuse(lease.clone()),
                delete,
            });
        }
        delete.push(lease.key);
    }
    let kept: Vec<&Lease> = existing
        .iter()
        .filter(|l| !delete.contains(&l.key))
        .collect();
    let others: Vec<Ipv4Net> = kept.iter().map(|l| l.key.v4).collect();
    let others_v6: Vec<Ipv6Net> = kept.iter().filter_map(|l| l.key.v6).collect();
    // 2. The subnet(s) we had before (subnet.env), if they fit and nobody has them.
    if let Some(prev) = previous.map(|p| p.trunc()) {
        let v4_ok = config.is_compatible(prev) && !others.iter().any(|o| overlaps(*o, prev));
        let v6 = previous_v6.map(|p| p.trunc());
        let v6_ok = !config.enable_ipv6
            || v6.is_some_and(|p| {
                config.is_compatible_v6(p) && !others_v6.iter().any(|o| overlaps6(*o, p))
            });
        if v4_ok && v6_ok {
            return Ok(Plan {
                choice: Choice::Create(SubnetKey {
                    v4: prev,
                    v6: v6.filter(|_| config.enable_ipv6),
                }),
                delete,
            });
        }
    }
    // 3. A random one of the first free blocks (IPv6: an independent pick).
    let free = free_blocks(config, &others, RANDOM_POOL);
    if free.is_empty() {
        return Err(AllocError::Exhausted {
            len: config.subnet_len,
            min: config.subnet_min,
            max: config.subnet_max,
        });
    }
    let i = pick(free.len()).min(free.len() - 1);
    let v6 = match &config.ipv6 {
        Some(c6) if config.enable_ipv6 => {
            let free6 = free_blocks_v6(config, &others_v6, RANDOM_POOL);
            if free6.is_empty() {
                return Err(AllocError::ExhaustedV6 {
                    len: c6.subnet_len,
                    min: c6.subnet_min,
                    max: c6.subnet_max,
                });
            }
            Some(free6[pick(free6.len()).min(free6.len() - 1)])
        }
        _ => None,
    };
    Ok(Plan {
        choice: Choice::Create(SubnetKey { v4: free[i], v6 }),
        delete,
    })
}

fn overlaps6(a: Ipv6Net, b: Ipv6Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Up to `limit` IPv6 blocks from IPv6SubnetMin to IPv6SubnetMax that overlap no
/// taken subnet (empty when IPv6 is off).
pub fn free_blocks_v6(config: &NetworkConfig, taken: &[Ipv6Net], limit: usize) -> Vec<Ipv6Net> {
    let Some(c6) = &config.ipv6 else {
        return Vec::new();
    };
    let step = 1u128 << (128 - c6.subnet_len);
    let mut at = u128::from(c6.subnet_min);
    let max = u128::from(c6.subnet_max);
    let mut out = Vec::new();
    while at <= max && out.len() < limit {
        if let Ok(net) = Ipv6Net::new(Ipv6Addr::from(at), c6.subnet_len) {
            if !taken.iter().any(|t| overlaps6(*t, net)) {
                out.push(net);
            }
        }
        match at.checked_add(step) {
            Some(n) => at = n,
            None => break,
        }
    }
    out
}

fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Up to `limit` blocks from SubnetMin to SubnetMax that overlap no taken subnet.
pub fn free_blocks(config: &NetworkConfig, taken: &[Ipv4Net], limit: usize) -> Vec<Ipv4Net> {
    let step = 1u64 << (32 - config.subnet_len);
    let mut at = u64::from(u32::from(config.subnet_min));
    let max = u64::from(u32::from(config.subnet_max));
    let mut out = Vec::new();
    while at <= max && out.len() < limit {
        if let Ok(net) = Ipv4Net::new(Ipv4Addr::from(at as u32), config.subnet_len) {
            if !taken.iter().any(|t| overlaps(*t, net)) {
                out.push(net);
            }
        }
        at += step;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::LeaseAttrs;

    fn cfg(text: &str) -> NetworkConfig {
        NetworkConfig::parse(text).unwrap()
    }

    fn lease(subnet: &str, ip: &str) -> Lease {
        Lease {
            key: SubnetKey::v4(subnet.parse().unwrap()),
            attrs: LeaseAttrs {
                public_ip: ip.parse().unwrap(),
                public_ipv6: None,
                backend_type: "vxlan".into(),
                backend_data: None,
                backend_v6_data: None,
            },
            expiration: None,
            ttl_handle: 0,
        }
    }

    fn first(_: usize) -> usize {
        0
    }

    #[test]
    fn reuse_by_public_ip_wins() {
        let c = cfg(r#"{"Network":"10.244.0.0/16"}"#);
        let leases = vec![
            lease("10.244.7.0/24", "192.0.2.1"),
            lease("10.244.9.0/24", "192.0.2.2"),
        ];
        let p = plan(
            &c,
            &leases,
            "192.0.2.2".parse().unwrap(),
            Some("10.244.3.1/24".parse().unwrap()),
            &mut first,
        )
        .unwrap();
        assert_eq!(p.choice, Choice::Reuse(leases[1].clone()));
        assert!(p.delete.is_empty());
    }

    #[test]
    fn incompatible_own_lease_is_deleted_then_previous_subnet_used() {
        let c = cfg(r#"{"Network":"10.244.0.0/16","SubnetLen":25}"#);
        let leases = vec![lease("10.244.7.0/24", "192.0.2.1")];
        let p = plan(
            &c,
            &leases,
            "192.0.2.1".parse().unwrap(),
            Some("10.244.3.129/25".parse().unwrap()),
            &mut first,
        )
        .unwrap();
        assert_eq!(
            p.delete,
            vec![SubnetKey::v4("10.244.7.0/24".parse().unwrap())]
        );
        assert_eq!(
            p.choice,
            Choice::Create(SubnetKey::v4("10.244.3.128/25".parse().unwrap()))
        );
    }

    #[test]
    fn previous_subnet_skipped_when_taken_or_incompatible() {
        let c = cfg(r#"{"Network":"10.244.0.0/16"}"#);
        let leases = vec![lease("10.244.1.0/24", "192.0.2.9")];
        let me = "192.0.2.1".parse().unwrap();
        // Taken by another node: allocate the first free block instead.
        let p = plan(
            &c,
            &leases,
            me,
            Some("10.244.1.1/24".parse().unwrap()),
            &mut first,
        )
        .unwrap();
        assert_eq!(
            p.choice,
            Choice::Create(SubnetKey::v4("10.244.2.0/24".parse().unwrap()))
        );
        // From another network entirely.
        let p = plan(
            &c,
            &[],
            me,
            Some("10.9.0.1/24".parse().unwrap()),
            &mut first,
        )
        .unwrap();
        assert_eq!(
            p.choice,
            Choice::Create(SubnetKey::v4("10.244.1.0/24".parse().unwrap()))
        );
    }

    #[test]
    fn random_pick_is_among_the_first_hundred_free_blocks() {
        let c = cfg(r#"{"Network":"10.0.0.0/8"}"#);
        let free = free_blocks(&c, &["10.0.2.0/24".parse().unwrap()], RANDOM_POOL);
        assert_eq!(free.len(), RANDOM_POOL);
        assert_eq!(free[0].to_string(), "10.0.1.0/24");
        assert_eq!(free[1].to_string(), "10.0.3.0/24");
        let mut seen = 0;
        let p = plan(&c, &[], "192.0.2.1".parse().unwrap(), None, &mut |n| {
            seen = n;
            n - 1
        })
        .unwrap();
        assert_eq!(seen, RANDOM_POOL);
        assert_eq!(
            p.choice,
            Choice::Create(SubnetKey::v4("10.0.100.0/24".parse().unwrap()))
        );
    }

    #[test]
    fn exhaustion_is_an_error() {
        let c = cfg(r#"{"Network":"10.0.0.0/28"}"#);
        // /28 → SubnetLen 30, blocks .4 .8 .12 (the first is skipped).
        let leases = vec![
            lease("10.0.0.4/30", "192.0.2.2"),
            lease("10.0.0.8/30", "192.0.2.3"),
            lease("10.0.0.12/30", "192.0.2.4"),
        ];
        let e = plan(&c, &leases, "192.0.2.1".parse().unwrap(), None, &mut first).unwrap_err();
        assert!(e.to_string().contains("out of subnets"), "{e}");
        let p = plan(
            &c,
            &leases[..2],
            "192.0.2.1".parse().unwrap(),
            None,
            &mut first,
        )
        .unwrap();
        assert_eq!(
            p.choice,
            Choice::Create(SubnetKey::v4("10.0.0.12/30".parse().unwrap()))
        );
    }

    fn lease6(subnet: &str, subnet6: Option<&str>, ip: &str) -> Lease {
        let mut l = lease(subnet, ip);
        l.key.v6 = subnet6.map(|s| s.parse().unwrap());
        l
    }

    const DUAL: &str =
        r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10::/56"}"#;

    #[test]
    fn dual_stack_allocates_both_families() {
        let c = cfg(DUAL);
        let leases = vec![lease6(
            "10.244.1.0/24",
            Some("fd00:10:0:1::/64"),
            "192.0.2.9",
        )];
        let me = "192.0.2.1".parse().unwrap();
        let p = plan_dual(&c, &leases, me, None, None, &mut first).unwrap();
        assert_eq!(
            p.choice,
            Choice::Create(SubnetKey {
                v4: "10.244.2.0/24".parse().unwrap(),
                v6: Some("fd00:10:0:2::/64".parse().unwrap()),
            })
        );
        let free6 = free_blocks_v6(&c, &["fd00:10:0:3::/64".parse().unwrap()], 3);
        assert_eq!(
            free6.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
            ["fd00:10:0:1::/64", "fd00:10:0:2::/64", "fd00:10:0:4::/64"]
        );
        // Independent random picks: the last of each pool.
        let p = plan_dual(&c, &[], me, None, None, &mut |n| n - 1).unwrap();
        assert_eq!(
            p.choice,
            Choice::Create(SubnetKey {
                v4: "10.244.100.0/24".parse().unwrap(),
                v6: Some("fd00:10:0:64::/64".parse().unwrap()),
            })
        );
    }

    #[test]
    fn dual_stack_reuse_and_previous_subnets() {
        let c = cfg(DUAL);
        let me = "192.0.2.1".parse().unwrap();
        // Our lease with both parts is reused.
        let ours = lease6("10.244.7.0/24", Some("fd00:10:0:7::/64"), "192.0.2.1");
        let p = plan_dual(&c, std::slice::from_ref(&ours), me, None, None, &mut first).unwrap();
        assert_eq!(p.choice, Choice::Reuse(ours));
        // A v4-only lease of ours does not fit a dual-stack config: deleted, and the
        // previous subnets from subnet.env are taken.
        let old = lease("10.244.7.0/24", "192.0.2.1");
        let p = plan_dual(
            &c,
            std::slice::from_ref(&old),
            me,
            Some("10.244.7.1/24".parse().unwrap()),
            Some("fd00:10:0:9::1/64".parse().unwrap()),
            &mut first,
        )
        .unwrap();
        assert_eq!(p.delete, vec![old.key]);
        assert_eq!(
            p.choice,
            Choice::Create(SubnetKey {
                v4: "10.244.7.0/24".parse().unwrap(),
                v6: Some("fd00:10:0:9::/64".parse().unwrap()),
            })
        );
        // The previous v6 subnet is someone else's: allocate both afresh.
        let other = lease6("10.244.1.0/24", Some("fd00:10:0:9::/64"), "192.0.2.9");
        let p = plan_dual(
            &c,
            &[other],
            me,
            Some("10.244.7.1/24".parse().unwrap()),
            Some("fd00:10:0:9::1/64".parse().unwrap()),
            &mut first,
        )
        .unwrap();
        assert_eq!(
            p.choice,
            Choice::Create(SubnetKey {
                v4: "10.244.2.0/24".parse().unwrap(),
                v6: Some("fd00:10:0:1::/64".parse().unwrap()),
            })
        );
        // Without a v6 hint the v4 hint alone is not enough in dual stack.
        let p = plan_dual(
            &c,
            &[],
            me,
            Some("10.244.7.1/24".parse().unwrap()),
            None,
            &mut first,
        )
        .unwrap();
        assert_eq!(
            p.choice,
            Choice::Create(SubnetKey {
                v4: "10.244.1.0/24".parse().unwrap(),
                v6: Some("fd00:10:0:1::/64".parse().unwrap()),
            })
        );
    }

    #[test]
    fn ipv6_exhaustion_is_an_error() {
        let c = cfg(r#"{"Network":"10.0.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/124"}"#);
        // /124 → /126 blocks ::4 ::8 ::c.
        let leases = vec![
            lease6("10.0.1.0/24", Some("fd00::4/126"), "192.0.2.2"),
            lease6("10.0.2.0/24", Some("fd00::8/126"), "192.0.2.3"),
            lease6("10.0.3.0/24", Some("fd00::c/126"), "192.0.2.4"),
        ];
        let e = plan_dual(
            &c,
            &leases,
            "192.0.2.1".parse().unwrap(),
            None,
            None,
            &mut first,
        )
        .unwrap_err();
        assert!(e.to_string().contains("out of IPv6 subnets"), "{e}");
    }
}
