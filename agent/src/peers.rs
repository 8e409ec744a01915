//! The peer set, fed by store snapshots and watch events, turned into Added/Removed
//! events for the backend (flanneld's `LeaseWatcher`, pkg/lease).
//!
//! Differences from flanneld, on purpose: a snapshot also reports peers whose
//! attributes changed while the watch was down (flanneld only diffs subnets), and an
//! attribute change is reported as Removed(old) + Added(new) so the backend can drop
//! the old MAC's FDB entry.

use std::collections::BTreeMap;

use ipnet::Ipv4Net;

use crate::lease::{Lease, SubnetKey};
use crate::store::WatchEvent;

/// What the backend has to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerEvent {
    Added(Lease),
    /// Carries the cached lease, so the backend knows the MAC/IP to remove.
    Removed(Lease),
}

/// Known peers (everyone but us), keyed by IPv4 subnet.
#[derive(Debug, Clone, Default)]
pub struct Peers {
    own: Option<Ipv4Net>,
    peers: BTreeMap<Ipv4Net, Lease>,
}

/// Renewals of flanneld nodes re-put identical values; expiration and lease handle
/// are not what the data plane depends on.
fn same_attrs(a: &Lease, b: &Lease) -> bool {
    a.key == b.key && a.attrs == b.attrs
}

impl Peers {
    pub fn new() -> Self {
        Self::default()
    }

    /// Our subnet: its events are never peer events. A change drops any cached
    /// entry for the new subnet.
    pub fn set_own(&mut self, own: Ipv4Net) -> Vec<PeerEvent> {
        self.own = Some(own);
        self.peers
            .remove(&own)
            .map(PeerEvent::Removed)
            .into_iter()
            .collect()
    }

    pub fn map(&self) -> &BTreeMap<Ipv4Net, Lease> {
        &self.peers
    }

    fn put(&mut self, lease: Lease, out: &mut Vec<PeerEvent>) {
        let subnet = lease.key.v4;
        if Some(subnet) == self.own {
            return;
        }
        match self.peers.get(&subnet) {
            Some(old) if same_attrs(old, &lease) => {
                self.peers.insert(subnet, lease);
            }
            Some(old) => {
                out.push(PeerEvent::Removed(old.clone()));
                out.push(PeerEvent::Added(lease.clone()));
                self.peers.insert(subnet, lease);
            }
            None => {
                out.push(PeerEvent::Added(lease.clone()));
                self.peers.insert(subnet, lease);
            }
        }
    }

    fn delete(&mut self, key: &SubnetKey, out: &mut Vec<PeerEvent>) {
        if Some(key.v4) == self.own {
            return;
        }
        if let Some(old) = self.peers.remove(&key.v4) {
            out.push(PeerEvent::Removed(old));
        }
    }

    /// Applies watch events.
    pub fn apply(&mut self, events: &[WatchEvent]) -> Vec<PeerEvent> {
        let mut out = Vec::new();
        for e in events {
            match e {
                WatchEvent::Put(l) => self.put(l.clone(), &mut out),
                WatchEvent::Delete(k) => self.delete(k, &mut out),
            }
        }
        out
    }

    /// Replaces the set with a full snapshot (start, compaction, reconnect).
    pub fn reset(&mut self, leases: &[Lease]) -> Vec<PeerEvent> {
        let mut out = Vec::new();
        let fresh: BTreeMap<Ipv4Net, &Lease> = leases
            .iter()
            .filter(|l| Some(l.key.v4) != self.own)
            .map(|l| (l.key.v4, l))
            .collect();
        let gone: Vec<Ipv4Net> = self
            .peers
            .keys()
            .filter(|s| !fresh.contains_key(s))
            .copied()
            .collect();
        for s in gone {
            if let Some(old) = self.peers.remove(&s) {
                out.push(PeerEvent::Removed(old));
            }
        }
        for l in fresh.values() {
            self.put((*l).clone(), &mut out);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::LeaseAttrs;

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
            ttl_handle: 1,
        }
    }

    #[test]
    fn events_skip_own_subnet_and_deduplicate_renewals() {
        let mut p = Peers::new();
        assert!(p.set_own("10.1.1.0/24".parse().unwrap()).is_empty());
        let a = lease("10.1.2.0/24", "192.0.2.2");
        let own = lease("10.1.1.0/24", "192.0.2.1");
        let ev = p.apply(&[WatchEvent::Put(own.clone()), WatchEvent::Put(a.clone())]);
        assert_eq!(ev, vec![PeerEvent::Added(a.clone())]);
        let mut renewed = a.clone();
        renewed.ttl_handle = 2;
        assert!(p.apply(&[WatchEvent::Put(renewed.clone())]).is_empty());
        let mut moved = a.clone();
        moved.attrs.public_ip = "192.0.2.22".parse().unwrap();
        let ev = p.apply(&[WatchEvent::Put(moved.clone())]);
        assert_eq!(
            ev,
            vec![PeerEvent::Removed(renewed), PeerEvent::Added(moved.clone())]
        );
        let ev = p.apply(&[
            WatchEvent::Delete(moved.key),
            WatchEvent::Delete(own.key),
            WatchEvent::Delete(moved.key),
        ]);
        assert_eq!(ev, vec![PeerEvent::Removed(moved)]);
        assert!(p.map().is_empty());
    }

    #[test]
    fn reset_diffs_against_the_snapshot() {
        let mut p = Peers::new();
        p.set_own("10.1.1.0/24".parse().unwrap());
        let a = lease("10.1.2.0/24", "192.0.2.2");
        let b = lease("10.1.3.0/24", "192.0.2.3");
        let c = lease("10.1.4.0/24", "192.0.2.4");
        assert_eq!(p.reset(&[a.clone(), b.clone()]).len(), 2);
        let mut b2 = b.clone();
        b2.attrs.backend_data = Some(serde_json::json!({"VtepMAC": "0a:00:00:00:00:03"}));
        let ev = p.reset(&[b2.clone(), c.clone(), lease("10.1.1.0/24", "192.0.2.1")]);
        assert_eq!(
            ev,
            vec![
                PeerEvent::Removed(a),
                PeerEvent::Removed(b),
                PeerEvent::Added(b2),
                PeerEvent::Added(c.clone())
            ]
        );
        assert_eq!(p.map().len(), 2);
        // Our subnet changing to one a peer had cached removes that peer.
        assert_eq!(p.set_own(c.key.v4), vec![PeerEvent::Removed(c)]);
    }
}
