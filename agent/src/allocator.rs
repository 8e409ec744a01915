//! Which subnet to lease (flanneld's `tryAcquireLease`), as a pure function of the
//! config, the leases in the store, our public IP and the subnet.env hint.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

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
}

/// Decides which subnet to take. `pick(n)` returns an index below `n` (random in
/// production, fixed in tests).
pub fn plan(
    config: &NetworkConfig,
    existing: &[Lease],
    public_ip: Ipv4Addr,
    previous: Option<Ipv4Net>,
    pick: &mut dyn FnMut(usize) -> usize,
) -> Result<Plan, AllocError> {
    let mut delete = Vec::new();
    // 1. Reuse by public IP (the node's identity in etcd mode).
    for lease in existing.iter().filter(|l| l.attrs.public_ip == public_ip) {
        if config.is_compatible(lease.key.v4) {
            return Ok(Plan {
                choice: Choice::Reuse(lease.clone()),
                delete,
            });
        }
        delete.push(lease.key);
    }
    let others: Vec<Ipv4Net> = existing
        .iter()
        .filter(|l| !delete.contains(&l.key))
        .map(|l| l.key.v4)
        .collect();
    // 2. The subnet we had before (subnet.env), if it fits and nobody has it.
    if let Some(prev) = previous.map(|p| p.trunc()) {
        if config.is_compatible(prev) && !others.iter().any(|o| overlaps(*o, prev)) {
            return Ok(Plan {
                choice: Choice::Create(SubnetKey::v4(prev)),
                delete,
            });
        }
    }
    // 3. A random one of the first free blocks.
    let free = free_blocks(config, &others, RANDOM_POOL);
    if free.is_empty() {
        return Err(AllocError::Exhausted {
            len: config.subnet_len,
            min: config.subnet_min,
            max: config.subnet_max,
        });
    }
    let i = pick(free.len()).min(free.len() - 1);
    Ok(Plan {
        choice: Choice::Create(SubnetKey::v4(free[i])),
        delete,
    })
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
}
