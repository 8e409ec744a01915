//! Ranges and range sets: the canonical, validated form of `ipam.ranges`.
//!
//! Validation mirrors Go's `Range.Canonicalize` / `RangeSet.Canonicalize` check for check and
//! word for word, because those texts reach users through `invalid range set N: ...`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net};

/// One range as written in the config, before defaults are filled in. The subnet may still have
/// host bits set; that is what [`Range::canonicalize`] rejects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawRange {
    pub subnet: IpNet,
    pub range_start: Option<IpAddr>,
    pub range_end: Option<IpAddr>,
    pub gateway: Option<IpAddr>,
}

/// A validated range: every address in `range_start..=range_end` lies in `subnet`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Range {
    /// Network address / prefix (no host bits).
    pub subnet: IpNet,
    pub range_start: IpAddr,
    pub range_end: IpAddr,
    /// Never handed out. Not required to lie in the subnet (Go does not check it either).
    pub gateway: IpAddr,
}

/// Ranges of one address family from which exactly one IP is allocated per ADD.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeSet {
    ranges: Vec<Range>,
}

pub(crate) fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// Builds an address of the same family as `like`. `v` must fit that family.
pub(crate) fn from_u128(like: IpAddr, v: u128) -> IpAddr {
    match like {
        // Truncation cannot happen for values derived from IPv4 arithmetic within a range.
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(v as u32)),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(v)),
    }
}

fn same_family(a: IpAddr, b: IpAddr) -> bool {
    a.is_ipv4() == b.is_ipv4()
}

/// The address after `ip`, wrapping like Go's `ip.NextIP` (only reachable for all-ones input).
fn next_ip(ip: IpAddr) -> IpAddr {
    from_u128(
        ip,
        match ip {
            IpAddr::V4(v4) => u128::from(u32::from(v4).wrapping_add(1)),
            IpAddr::V6(v6) => u128::from(v6).wrapping_add(1),
        },
    )
}

/// IPv4-mapped IPv6 (`::ffff:a.b.c.d`) becomes plain IPv4, as Go's `To4()` canonicalisation does.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => ip,
        },
        v4 => v4,
    }
}

/// `::ffff:a.b.c.d/n` with n >= 96 is the IPv4 network `a.b.c.d/(n-96)`. A shorter prefix mixes
/// both families; Go reports it with this text.
fn canonical_subnet(subnet: IpNet) -> Result<IpNet, String> {
    const MISMATCH: &str = "IPNet IP and Mask version mismatch";
    match subnet {
        IpNet::V6(net) => match net.addr().to_ipv4_mapped() {
            Some(v4) if net.prefix_len() >= 96 => Ipv4Net::new(v4, net.prefix_len() - 96)
                .map(IpNet::V4)
                .map_err(|_| MISMATCH.to_owned()),
            Some(_) => Err(MISMATCH.to_owned()),
            None => Ok(subnet),
        },
        v4 => Ok(v4),
    }
}

impl Range {
    /// Validates a configured range and fills in the defaults (gateway and start = network+1,
    /// end = last address, minus the broadcast address for IPv4).
    pub fn canonicalize(raw: &RawRange) -> Result<Range, String> {
        let subnet = canonical_subnet(raw.subnet)?;
        let ones = subnet.prefix_len();
        let bits = subnet.max_prefix_len();
        // A /31 or /32 (/127, /128) leaves nothing once network+broadcast/gateway are taken.
        if ones > bits - 2 {
            return Err(format!("Network {subnet} too small to allocate from"));
        }
        let network = subnet.network();
        if subnet.addr() != network {
            return Err(format!(
                "Network has host bits set. For a subnet mask of length {ones} the network address is {network}"
            ));
        }
        let subnet = subnet.trunc();
        let gateway = raw.gateway.map(canonical_ip).unwrap_or(next_ip(network));

        let in_subnet = |ip: IpAddr| same_family(ip, network) && subnet.contains(&ip);
        let range_start = match raw.range_start.map(canonical_ip) {
            Some(start) if in_subnet(start) => start,
            Some(start) => return Err(format!("RangeStart {start} not in network {subnet}")),
            None => next_ip(network),
        };
        let range_end = match raw.range_end.map(canonical_ip) {
            // Go checks the end with the half-built range, so an end before the start is also
            // "not in network".
            Some(end) if in_subnet(end) && to_u128(end) >= to_u128(range_start) => end,
            Some(end) => return Err(format!("RangeEnd {end} not in network {subnet}")),
            None => last_ip(subnet),
        };
        // Only an explicit IPv4 rangeStart on the broadcast address gets here; Go accepts it and
        // then iterates out of the subnet.
        if to_u128(range_end) < to_u128(range_start) {
            return Err(format!(
                "RangeStart {range_start} is after RangeEnd {range_end}"
            ));
        }
        Ok(Range {
            subnet,
            range_start,
            range_end,
            gateway,
        })
    }

    /// True if `ip` is within `range_start..=range_end` (and therefore in the subnet).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical_ip(ip);
        same_family(ip, self.range_start)
            && to_u128(ip) >= to_u128(self.range_start)
            && to_u128(ip) <= to_u128(self.range_end)
    }

    fn overlaps(&self, other: &Range) -> bool {
        same_family(self.range_start, other.range_start)
            && to_u128(self.range_start) <= to_u128(other.range_end)
            && to_u128(other.range_start) <= to_u128(self.range_end)
    }

    /// Addresses that are never handed out by iteration: the gateway, and for IPv4 the network
    /// and broadcast addresses (reachable only when rangeStart/rangeEnd name them explicitly;
    /// Go would hand them out, which breaks the pod).
    pub fn is_reserved_address(&self, ip: IpAddr) -> bool {
        if ip == self.gateway {
            return true;
        }
        match self.subnet {
            IpNet::V4(net) => ip == IpAddr::V4(net.network()) || ip == IpAddr::V4(net.broadcast()),
            IpNet::V6(_) => false,
        }
    }

    /// Number of addresses in `range_start..=range_end`, saturating at `u128::MAX`.
    pub fn len(&self) -> u128 {
        (to_u128(self.range_end) - to_u128(self.range_start)).saturating_add(1)
    }

    /// Never true: a canonical range always holds its start address.
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// Last address of the subnet; for IPv4 the one before broadcast (Go's `lastIP`).
fn last_ip(subnet: IpNet) -> IpAddr {
    match subnet {
        IpNet::V4(net) => IpAddr::V4(Ipv4Addr::from(u32::from(net.broadcast()) - 1)),
        IpNet::V6(net) => IpAddr::V6(net.broadcast()),
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.range_start, self.range_end)
    }
}

impl RangeSet {
    /// Validates every range and the set as a whole (one family, no overlaps).
    pub fn canonicalize(raw: &[RawRange]) -> Result<RangeSet, String> {
        if raw.is_empty() {
            return Err("empty range set".to_owned());
        }
        let mut ranges: Vec<Range> = Vec::with_capacity(raw.len());
        for r in raw {
            let range = Range::canonicalize(r)?;
            if let Some(first) = ranges.first() {
                if !same_family(first.range_start, range.range_start) {
                    return Err("mixed address families".to_owned());
                }
            }
            ranges.push(range);
        }
        for (i, a) in ranges.iter().enumerate() {
            for b in &ranges[i + 1..] {
                if a.overlaps(b) {
                    return Err(format!("subnets {a} and {b} overlap"));
                }
            }
        }
        Ok(RangeSet { ranges })
    }

    pub fn ranges(&self) -> &[Range] {
        &self.ranges
    }

    pub fn is_ipv4(&self) -> bool {
        self.ranges[0].range_start.is_ipv4()
    }

    /// Index of the range holding `ip`, if any.
    pub fn range_index(&self, ip: IpAddr) -> Option<usize> {
        self.ranges.iter().position(|r| r.contains(ip))
    }

    pub fn range_for(&self, ip: IpAddr) -> Option<&Range> {
        self.range_index(ip).map(|i| &self.ranges[i])
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.range_index(ip).is_some()
    }

    pub fn overlaps(&self, other: &RangeSet) -> bool {
        self.ranges
            .iter()
            .any(|a| other.ranges.iter().any(|b| a.overlaps(b)))
    }
}

impl fmt::Display for RangeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(subnet: &str) -> RawRange {
        RawRange {
            subnet: subnet.parse().unwrap(),
            range_start: None,
            range_end: None,
            gateway: None,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn defaults_v4() {
        let r = Range::canonicalize(&raw("10.1.2.0/24")).unwrap();
        assert_eq!(r.range_start, ip("10.1.2.1"));
        assert_eq!(r.range_end, ip("10.1.2.254"));
        assert_eq!(r.gateway, ip("10.1.2.1"));
        assert_eq!(r.to_string(), "10.1.2.1-10.1.2.254");
        assert_eq!(r.len(), 254);
    }

    #[test]
    fn defaults_v6() {
        let r = Range::canonicalize(&raw("fd00:1::/120")).unwrap();
        assert_eq!(r.range_start, ip("fd00:1::1"));
        assert_eq!(r.range_end, ip("fd00:1::ff"));
        assert_eq!(r.gateway, ip("fd00:1::1"));
        let r = Range::canonicalize(&raw("fd00::/64")).unwrap();
        assert_eq!(r.range_end, ip("fd00::ffff:ffff:ffff:ffff"));
    }

    #[test]
    fn too_small_and_host_bits() {
        for (s, msg) in [
            ("10.0.0.0/31", "Network 10.0.0.0/31 too small to allocate from"),
            ("10.0.0.1/32", "Network 10.0.0.1/32 too small to allocate from"),
            ("fd00::/127", "Network fd00::/127 too small to allocate from"),
            ("fd00::/128", "Network fd00::/128 too small to allocate from"),
            (
                "10.0.0.1/24",
                "Network has host bits set. For a subnet mask of length 24 the network address is 10.0.0.0",
            ),
            (
                "fd00::1/64",
                "Network has host bits set. For a subnet mask of length 64 the network address is fd00::",
            ),
        ] {
            assert_eq!(Range::canonicalize(&raw(s)).unwrap_err(), msg);
        }
        assert!(Range::canonicalize(&raw("10.0.0.0/30")).is_ok());
        assert!(Range::canonicalize(&raw("fd00::/126")).is_ok());
    }

    #[test]
    fn start_end_checks() {
        let mut r = raw("10.0.0.0/24");
        r.range_start = Some(ip("10.0.1.5"));
        assert_eq!(
            Range::canonicalize(&r).unwrap_err(),
            "RangeStart 10.0.1.5 not in network 10.0.0.0/24"
        );
        r.range_start = Some(ip("fd00::5"));
        assert_eq!(
            Range::canonicalize(&r).unwrap_err(),
            "RangeStart fd00::5 not in network 10.0.0.0/24"
        );
        r.range_start = Some(ip("10.0.0.50"));
        r.range_end = Some(ip("10.0.0.40"));
        assert_eq!(
            Range::canonicalize(&r).unwrap_err(),
            "RangeEnd 10.0.0.40 not in network 10.0.0.0/24"
        );
        r.range_end = Some(ip("10.0.0.60"));
        r.gateway = Some(ip("192.168.0.1"));
        let c = Range::canonicalize(&r).unwrap();
        assert_eq!(c.to_string(), "10.0.0.50-10.0.0.60");
        assert_eq!(c.gateway, ip("192.168.0.1"));
        r.range_start = Some(ip("10.0.0.255"));
        r.range_end = None;
        assert_eq!(
            Range::canonicalize(&r).unwrap_err(),
            "RangeStart 10.0.0.255 is after RangeEnd 10.0.0.254"
        );
        r.range_end = Some(ip("10.0.0.60"));
        r.range_start = Some(ip("::ffff:10.0.0.7"));
        assert_eq!(Range::canonicalize(&r).unwrap().range_start, ip("10.0.0.7"));
    }

    #[test]
    fn mapped_subnets_become_ipv4() {
        let r = Range::canonicalize(&raw("::ffff:10.9.0.0/112")).unwrap();
        assert_eq!(r.subnet, "10.9.0.0/16".parse::<IpNet>().unwrap());
        assert_eq!(r.range_end, ip("10.9.255.254"));
        assert_eq!(
            Range::canonicalize(&raw("::ffff:0:0/80")).unwrap_err(),
            "IPNet IP and Mask version mismatch"
        );
    }

    #[test]
    fn set_checks() {
        assert_eq!(RangeSet::canonicalize(&[]).unwrap_err(), "empty range set");
        assert_eq!(
            RangeSet::canonicalize(&[raw("10.0.0.0/24"), raw("fd00::/64")]).unwrap_err(),
            "mixed address families"
        );
        assert_eq!(
            RangeSet::canonicalize(&[raw("10.0.0.0/24"), raw("10.0.0.0/16")]).unwrap_err(),
            "subnets 10.0.0.1-10.0.0.254 and 10.0.0.1-10.0.255.254 overlap"
        );
        let mut a = raw("10.0.0.0/16");
        a.range_start = Some(ip("10.0.1.0"));
        let set = RangeSet::canonicalize(&[raw("10.0.0.0/24"), a]).unwrap();
        assert_eq!(set.to_string(), "10.0.0.1-10.0.0.254,10.0.1.0-10.0.255.254");
        assert_eq!(set.range_index(ip("10.0.3.3")), Some(1));
        assert!(!set.contains(ip("10.0.0.255")));
        assert!(set.contains(ip("::ffff:10.0.0.9")));
    }
}
