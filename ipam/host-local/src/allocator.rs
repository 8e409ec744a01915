//! Choosing one IP from a range set, independent of where reservations live.
//!
//! The strategy is Go's round-robin: continue after the IP in `last_reserved_ip.N`, so a
//! crash-looping pod does not get the address it just released until the set wraps around.

use std::net::IpAddr;

use crate::error::IpamError;
use crate::range::{from_u128, to_u128, RangeSet};

/// What the allocator needs from a store. The store is locked for the whole call.
pub trait Reservations {
    /// The round-robin cursor of range set `set_index`, if present and parsable.
    fn last_reserved_ip(&mut self, set_index: usize) -> Option<IpAddr>;

    /// IPs held by `(container_id, ifname)`, including legacy ID-only reservations of
    /// `container_id` (which, as in Go, block every ifname of that container).
    fn reserved_by(&mut self, container_id: &str, ifname: &str) -> Result<Vec<IpAddr>, IpamError>;

    /// Atomically reserves `ip` if it is free and moves the cursor of `set_index` to it.
    /// `Ok(false)` means the address is taken.
    fn reserve(
        &mut self,
        ip: IpAddr,
        container_id: &str,
        ifname: &str,
        set_index: usize,
    ) -> Result<bool, IpamError>;
}

/// One allocated address: the IP, the prefix length of its subnet and the range's gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Allocation {
    pub ip: IpAddr,
    pub prefix_len: u8,
    pub gateway: IpAddr,
}

/// Candidate addresses of a set in round-robin order, with the index of the range each one is in.
///
/// Every address of every range is visited at most once; the cursor itself comes last. Gateways
/// and IPv4 network/broadcast addresses are skipped.
pub struct Candidates<'a> {
    set: &'a RangeSet,
    range: usize,
    next: u128,
    /// Positions left in the cycle; `u128::MAX` saturation only matters for a whole-space IPv6
    /// range, which can never be exhausted in practice anyway.
    left: u128,
}

impl<'a> Candidates<'a> {
    pub fn new(set: &'a RangeSet, cursor: Option<IpAddr>) -> Self {
        let ranges = set.ranges();
        let left = ranges
            .iter()
            .fold(0u128, |acc, r| acc.saturating_add(r.len()));
        let (range, next) = match cursor.and_then(|c| set.range_index(c).map(|i| (i, c))) {
            Some((i, c)) if to_u128(c) == to_u128(ranges[i].range_end) => {
                let i = (i + 1) % ranges.len();
                (i, to_u128(ranges[i].range_start))
            }
            Some((i, c)) => (i, to_u128(c) + 1),
            None => (0, to_u128(ranges[0].range_start)),
        };
        Candidates {
            set,
            range,
            next,
            left,
        }
    }
}

impl Iterator for Candidates<'_> {
    type Item = (usize, IpAddr);

    fn next(&mut self) -> Option<(usize, IpAddr)> {
        let ranges = self.set.ranges();
        while self.left > 0 {
            self.left -= 1;
            let index = self.range;
            let r = &ranges[index];
            let ip = from_u128(r.range_start, self.next);
            if self.next == to_u128(r.range_end) {
                self.range = (index + 1) % ranges.len();
                self.next = to_u128(ranges[self.range].range_start);
            } else {
                self.next += 1;
            }
            if !r.is_reserved_address(ip) {
                return Some((index, ip));
            }
        }
        None
    }
}

/// Allocates one IP of `set` for `(container_id, ifname)`.
///
/// With a `requested` IP (already known to be in the set) that exact address is reserved and,
/// like Go, no duplicate-allocation check is made. Otherwise an existing reservation of the
/// attachment in this set is an error (ADD is not idempotent), then the first free candidate wins.
pub fn allocate<S: Reservations + ?Sized>(
    set: &RangeSet,
    set_index: usize,
    store: &mut S,
    container_id: &str,
    ifname: &str,
    requested: Option<IpAddr>,
) -> Result<Allocation, IpamError> {
    if let Some(ip) = requested {
        let range = set.range_for(ip).ok_or_else(|| IpamError::NotInRangeSet {
            ip,
            range_set: set.to_string(),
        })?;
        if ip == range.gateway {
            return Err(IpamError::RequestedGateway { ip });
        }
        if !store.reserve(ip, container_id, ifname, set_index)? {
            return Err(IpamError::RequestedUnavailable {
                ip,
                range_set: set.to_string(),
            });
        }
        return Ok(Allocation {
            ip,
            prefix_len: range.subnet.prefix_len(),
            gateway: range.gateway,
        });
    }

    if let Some(ip) = store
        .reserved_by(container_id, ifname)?
        .into_iter()
        .find(|ip| set.contains(*ip))
    {
        return Err(IpamError::DuplicateAllocation {
            ip,
            container_id: container_id.to_owned(),
        });
    }

    let cursor = store.last_reserved_ip(set_index);
    for (range_index, ip) in Candidates::new(set, cursor) {
        if store.reserve(ip, container_id, ifname, set_index)? {
            let range = &set.ranges()[range_index];
            return Ok(Allocation {
                ip,
                prefix_len: range.subnet.prefix_len(),
                gateway: range.gateway,
            });
        }
    }
    Err(IpamError::Exhausted {
        range_set: set.to_string(),
    })
}

#[cfg(test)]
pub(crate) mod mem {
    //! An in-memory [`Reservations`] for allocator tests.
    use super::*;
    use std::collections::{BTreeMap, HashMap};

    #[derive(Default, Debug)]
    pub struct MemStore {
        /// IP -> file content, as the disk store would write it.
        pub files: BTreeMap<IpAddr, String>,
        pub cursors: HashMap<usize, IpAddr>,
    }

    impl MemStore {
        pub fn release(&mut self, container_id: &str, ifname: &str) -> Vec<IpAddr> {
            let key = format!("{container_id}\r\n{ifname}");
            let ips: Vec<IpAddr> = self
                .files
                .iter()
                .filter(|(_, owner)| **owner == key)
                .map(|(ip, _)| *ip)
                .collect();
            for ip in &ips {
                self.files.remove(ip);
            }
            ips
        }
    }

    impl Reservations for MemStore {
        fn last_reserved_ip(&mut self, set_index: usize) -> Option<IpAddr> {
            self.cursors.get(&set_index).copied()
        }

        fn reserved_by(
            &mut self,
            container_id: &str,
            ifname: &str,
        ) -> Result<Vec<IpAddr>, IpamError> {
            let key = format!("{container_id}\r\n{ifname}");
            Ok(self
                .files
                .iter()
                .filter(|(_, owner)| **owner == key || *owner == container_id)
                .map(|(ip, _)| *ip)
                .collect())
        }

        fn reserve(
            &mut self,
            ip: IpAddr,
            container_id: &str,
            ifname: &str,
            set_index: usize,
        ) -> Result<bool, IpamError> {
            if self.files.contains_key(&ip) {
                return Ok(false);
            }
            self.files.insert(ip, format!("{container_id}\r\n{ifname}"));
            self.cursors.insert(set_index, ip);
            Ok(true)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::mem::MemStore;
    use super::*;
    use crate::range::RawRange;
    use proptest::prelude::*;
    use std::collections::HashSet;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// (subnet, rangeStart, rangeEnd, gateway)
    type Spec<'a> = (&'a str, Option<&'a str>, Option<&'a str>, Option<&'a str>);

    fn set(specs: &[Spec<'_>]) -> RangeSet {
        let raw: Vec<RawRange> = specs
            .iter()
            .map(|(subnet, start, end, gw)| RawRange {
                subnet: subnet.parse().unwrap(),
                range_start: start.map(ip),
                range_end: end.map(ip),
                gateway: gw.map(ip),
            })
            .collect();
        RangeSet::canonicalize(&raw).unwrap()
    }

    fn alloc(s: &RangeSet, store: &mut MemStore, id: &str) -> Result<Allocation, IpamError> {
        allocate(s, 0, store, id, "eth0", None)
    }

    #[test]
    fn first_allocation_skips_gateway() {
        let s = set(&[("10.0.0.0/24", None, None, None)]);
        let mut store = MemStore::default();
        let a = alloc(&s, &mut store, "c1").unwrap();
        assert_eq!(a.ip, ip("10.0.0.2"));
        assert_eq!(a.prefix_len, 24);
        assert_eq!(a.gateway, ip("10.0.0.1"));
        assert_eq!(store.cursors[&0], ip("10.0.0.2"));
    }

    #[test]
    fn round_robin_resumes_after_cursor_and_wraps_across_ranges() {
        let s = set(&[
            ("10.0.0.0/24", Some("10.0.0.250"), None, None),
            ("10.0.1.0/24", None, Some("10.0.1.3"), Some("10.0.1.2")),
        ]);
        let order: Vec<IpAddr> = Candidates::new(&s, Some(ip("10.0.0.252")))
            .map(|(_, ip)| ip)
            .collect();
        assert_eq!(
            order,
            [
                "10.0.0.253",
                "10.0.0.254",
                "10.0.1.1",
                "10.0.1.3",
                "10.0.0.250",
                "10.0.0.251",
                "10.0.0.252"
            ]
            .map(ip)
        );
        // A cursor outside the set (e.g. after range indices shifted) restarts at the start.
        let first = Candidates::new(&s, Some(ip("192.168.0.1"))).next().unwrap();
        assert_eq!(first, (0, ip("10.0.0.250")));
        // A cursor on a range end moves to the next range.
        let first = Candidates::new(&s, Some(ip("10.0.0.254"))).next().unwrap();
        assert_eq!(first, (1, ip("10.0.1.1")));
    }

    #[test]
    fn ipv4_network_and_broadcast_never_handed_out() {
        let s = set(&[(
            "10.0.0.0/30",
            Some("10.0.0.0"),
            Some("10.0.0.3"),
            Some("10.0.0.2"),
        )]);
        let got: Vec<IpAddr> = Candidates::new(&s, None).map(|(_, ip)| ip).collect();
        assert_eq!(got, [ip("10.0.0.1")]);
    }

    #[test]
    fn ipv6_all_ones_is_used() {
        let s = set(&[("fd00::/126", None, None, None)]);
        let got: Vec<IpAddr> = Candidates::new(&s, None).map(|(_, ip)| ip).collect();
        assert_eq!(got, [ip("fd00::2"), ip("fd00::3")]);
    }

    #[test]
    fn exhaustion_is_an_error() {
        let s = set(&[("10.0.0.0/30", None, None, None)]);
        let mut store = MemStore::default();
        assert_eq!(alloc(&s, &mut store, "a").unwrap().ip, ip("10.0.0.2"));
        let e = alloc(&s, &mut store, "b").unwrap_err();
        assert_eq!(e.code(), 11);
        assert_eq!(
            e.to_string(),
            "no IP addresses available in range set: 10.0.0.1-10.0.0.2"
        );
    }

    #[test]
    fn duplicate_allocation_rejected_including_legacy() {
        let s = set(&[("10.0.0.0/24", None, None, None)]);
        let mut store = MemStore::default();
        alloc(&s, &mut store, "c1").unwrap();
        assert_eq!(
            alloc(&s, &mut store, "c1").unwrap_err().to_string(),
            "10.0.0.2 has been allocated to c1, duplicate allocation is not allowed"
        );
        assert!(allocate(&s, 0, &mut store, "c1", "eth1", None).is_ok());
        store.files.insert(ip("10.0.0.100"), "legacy".into());
        assert!(matches!(
            allocate(&s, 0, &mut store, "legacy", "net9", None),
            Err(IpamError::DuplicateAllocation { .. })
        ));
        // An existing reservation in another set is no duplicate for this one.
        let other = set(&[("10.9.0.0/24", None, None, None)]);
        assert!(allocate(&other, 1, &mut store, "c1", "eth0", None).is_ok());
    }

    #[test]
    fn requested_ip_path() {
        let s = set(&[("10.0.0.0/24", Some("10.0.0.10"), None, None)]);
        let mut store = MemStore::default();
        let a = allocate(&s, 0, &mut store, "c1", "eth0", Some(ip("10.0.0.50"))).unwrap();
        assert_eq!((a.ip, a.gateway), (ip("10.0.0.50"), ip("10.0.0.1")));
        assert_eq!(store.cursors[&0], ip("10.0.0.50"));
        // No duplicate check on this path, as in Go.
        allocate(&s, 0, &mut store, "c1", "eth0", Some(ip("10.0.0.51"))).unwrap();
        assert_eq!(
            allocate(&s, 0, &mut store, "c2", "eth0", Some(ip("10.0.0.50")))
                .unwrap_err()
                .to_string(),
            "requested IP address 10.0.0.50 is not available in range set 10.0.0.10-10.0.0.254"
        );
        assert_eq!(
            allocate(&s, 0, &mut store, "c2", "eth0", Some(ip("10.0.0.5")))
                .unwrap_err()
                .to_string(),
            "10.0.0.5 not in range set 10.0.0.10-10.0.0.254"
        );
        let gw = set(&[("10.0.0.0/24", None, None, Some("10.0.0.9"))]);
        assert_eq!(
            allocate(&gw, 0, &mut store, "c3", "eth0", Some(ip("10.0.0.9")))
                .unwrap_err()
                .to_string(),
            "requested ip 10.0.0.9 is subnet's gateway"
        );
    }

    /// A random range set of one family: 1-3 non-overlapping ranges cut from one subnet.
    fn arb_set() -> impl Strategy<Value = RangeSet> {
        (
            0u32..=1,
            24u8..=30,
            proptest::collection::vec(any::<u16>(), 6),
        )
            .prop_map(|(fam, prefix, cuts)| {
                // IPv4 /24../30 or IPv6 /120../126 so exhaustion stays cheap.
                let (subnet, host_bits): (String, u32) = if fam == 0 {
                    (format!("10.7.0.0/{prefix}"), 32 - u32::from(prefix))
                } else {
                    (format!("fd00:7::/{}", prefix + 96), 32 - u32::from(prefix))
                };
                let size = 1u32 << host_bits;
                let mut points: Vec<u32> = cuts.iter().map(|c| u32::from(*c) % size).collect();
                points.sort_unstable();
                points.dedup();
                let base = if fam == 0 { "10.7.0.0" } else { "fd00:7::" };
                let base = to_u128(base.parse().unwrap());
                let mk = |v: u32| from_u128(from_u128_family(fam), base + u128::from(v));
                let mut raws = Vec::new();
                let mut iter = points.chunks_exact(2);
                for pair in iter.by_ref().take(3) {
                    raws.push(RawRange {
                        subnet: subnet.parse().unwrap(),
                        range_start: Some(mk(pair[0])),
                        range_end: Some(mk(pair[1])),
                        gateway: Some(mk((pair[0] + pair[1]) / 2)),
                    });
                }
                if raws.is_empty() {
                    raws.push(RawRange {
                        subnet: subnet.parse().unwrap(),
                        range_start: None,
                        range_end: None,
                        gateway: None,
                    });
                }
                RangeSet::canonicalize(&raws).unwrap()
            })
    }

    fn from_u128_family(fam: u32) -> IpAddr {
        if fam == 0 {
            ip("0.0.0.0")
        } else {
            ip("::")
        }
    }

    fn allowed(s: &RangeSet, addr: IpAddr) -> bool {
        s.ranges()
            .iter()
            .any(|r| r.contains(addr) && !r.is_reserved_address(addr))
    }

    fn usable(s: &RangeSet) -> usize {
        s.ranges()
            .iter()
            .map(|r| {
                (to_u128(r.range_start)..=to_u128(r.range_end))
                    .filter(|v| !r.is_reserved_address(from_u128(r.range_start, *v)))
                    .count()
            })
            .sum()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn fill_until_exhausted(s in arb_set()) {
            let mut store = MemStore::default();
            let mut seen = HashSet::new();
            let total = usable(&s);
            for n in 0..total {
                let a = alloc(&s, &mut store, &format!("c{n}")).unwrap();
                prop_assert!(allowed(&s, a.ip), "{} outside {}", a.ip, s);
                prop_assert!(seen.insert(a.ip), "duplicate {}", a.ip);
                let range = s.range_for(a.ip).unwrap();
                prop_assert_eq!(a.gateway, range.gateway);
                prop_assert_eq!(a.prefix_len, range.subnet.prefix_len());
            }
            let e = alloc(&s, &mut store, "last").unwrap_err();
            let exhausted = matches!(e, IpamError::Exhausted { .. });
            prop_assert!(exhausted, "{}", e);
        }

        #[test]
        fn allocation_follows_cursor(
            s in arb_set(),
            pick in any::<u16>(),
            taken in proptest::collection::vec(any::<u16>(), 0..8),
        ) {
            let all: Vec<IpAddr> = Candidates::new(&s, None).map(|(_, ip)| ip).collect();
            prop_assume!(!all.is_empty());
            let cursor = all[usize::from(pick) % all.len()];
            let mut store = MemStore::default();
            store.cursors.insert(0, cursor);
            for t in &taken {
                let t = all[usize::from(*t) % all.len()];
                store.files.insert(t, "other\r\neth0".into());
            }
            // Expected: the first free address strictly after the cursor in cycle order,
            // the cursor itself last.
            let pos = all.iter().position(|a| *a == cursor).unwrap();
            let expected = all[pos + 1..].iter().chain(&all[..=pos])
                .find(|a| !store.files.contains_key(a)).copied();
            match alloc(&s, &mut store, "me") {
                Ok(a) => prop_assert_eq!(Some(a.ip), expected),
                Err(e) => {
                    let exhausted = matches!(e, IpamError::Exhausted { .. });
                    prop_assert!(exhausted, "{}", e);
                    prop_assert_eq!(expected, None);
                }
            }
        }

        #[test]
        fn allocate_then_release_leaves_store_empty(s in arb_set(), n in 1usize..20) {
            let mut store = MemStore::default();
            let n = n.min(usable(&s));
            for i in 0..n {
                alloc(&s, &mut store, &format!("c{i}")).unwrap();
            }
            for i in 0..n {
                prop_assert_eq!(store.release(&format!("c{i}"), "eth0").len(), 1);
                let again = store.release(&format!("c{i}"), "eth0");
                prop_assert!(again.is_empty());
            }
            prop_assert!(store.files.is_empty());
        }
    }

    #[test]
    fn ipv6_64_does_not_enumerate() {
        let s = set(&[("fd00:1::/64", None, None, None)]);
        let mut store = MemStore::default();
        store.cursors.insert(0, ip("fd00:1::ffff:ffff:ffff:fffe"));
        let a = alloc(&s, &mut store, "a").unwrap();
        assert_eq!(a.ip, ip("fd00:1::ffff:ffff:ffff:ffff"));
        assert_eq!(a.prefix_len, 64);
        // Wraps to the start after the all-ones address, skipping the gateway ::1.
        assert_eq!(alloc(&s, &mut store, "b").unwrap().ip, ip("fd00:1::2"));
    }

    #[test]
    fn ipv6_120_and_ipv4_30_edges() {
        let s = set(&[("fd00::/120", None, None, None)]);
        let all: Vec<IpAddr> = Candidates::new(&s, None).map(|(_, ip)| ip).collect();
        assert_eq!(all.len(), 254);
        assert_eq!(all[0], ip("fd00::2"));
        assert_eq!(all[253], ip("fd00::ff"));
        let s = set(&[("10.0.0.0/30", None, None, None)]);
        let all: Vec<IpAddr> = Candidates::new(&s, Some(ip("10.0.0.2")))
            .map(|(_, ip)| ip)
            .collect();
        assert_eq!(all, [ip("10.0.0.2")]);
    }
}
