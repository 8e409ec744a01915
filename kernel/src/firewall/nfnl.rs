//! [`Firewall`] over nf_tables netlink, without `nft`.
//!
//! Same tables, chains, rules and comments as [`super::NftFirewall`] (and
//! the Go plugins v1.6+), so either implementation finds and removes what
//! the other created. Each operation is one read exchange (lookups and a
//! dump pipelined in one datagram) and at most one atomic transaction; a
//! teardown with nothing to remove writes nothing.
//!
//! Concurrency: CNI runs ADD/DEL for different containers in parallel, each
//! in its own process. Every transaction is atomic in the kernel, and the
//! writes are built so that two of them for different attachments commute:
//! each deletes only its own rules (by handle) and declares shared objects
//! (table, chains) without NLM_F_EXCL, which is idempotent. The shared
//! objects and the one shared rule set, `postrouting`, are left alone when
//! the read shows them intact; that shortcut is only taken under the
//! generation check (NFNL_BATCH_GENID), so a concurrent change turns into
//! ERESTART and a re-read. After a few such restarts the setup stops relying
//! on the read and re-declares everything, rewriting `postrouting` (flush +
//! re-add, as the Go plugin always does), which no concurrent writer can
//! invalidate.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Mutex;

use ipnet::IpNet;
use nix::errno::Errno;

use super::naming::*;
use super::nfnl_socket::{self as sock, NfnlSocket};
use super::nfnl_wire::{self as wire, Expr, Hook, Request, Rule, Verdict};
use super::{Attachment, Firewall, GcAttachment, MacSpoofCheck};
use crate::error::{Error, Result};

const MASQ_TABLE_COMMENT: &str =
    "Masquerading for plugins from github.com/containernetworking/plugins";
const MASQ_CHAIN_COMMENT: &str =
    "Masquerade traffic from certain IPs to any (non-multicast) IP outside their subnet";
const MASQ_HOOK: Hook = Hook {
    chain_type: "nat",
    hooknum: wire::NF_INET_POST_ROUTING,
    // srcnat
    priority: 100,
};
/// Before conntrack and the bridge's own nat handling, like the Go plugin.
const SPOOFCHK_HOOK: Hook = Hook {
    chain_type: "filter",
    hooknum: wire::NF_INET_PRE_ROUTING,
    priority: -300,
};
/// Reads and writes redone after a lost race (ERESTART, a vanished handle,
/// ENOBUFS) before the error is returned.
const ATTEMPTS: u32 = 10;
/// Of these, how many may rely on the read under the generation check
/// before setup switches to writes that need no check.
const OPTIMISTIC_ATTEMPTS: u32 = 3;

/// [`Firewall`] implementation speaking nf_tables netlink directly.
///
/// Acts on the network namespace of the calling thread, like the `nft` child
/// of [`super::NftFirewall`]. It keeps one netlink socket, opened on first
/// use (and again if the calling thread has moved to another namespace), and
/// releases it when dropped without waiting for the kernel (see
/// `nfnl_socket`). Drop it before the process exits: a socket still open at
/// exit is released by the exit itself, which then waits for nf_tables'
/// release notifier (an RCU grace period, 5-20 ms, after any commit that
/// deleted something). One socket for all operations also keeps a second
/// transaction (spoof check after masquerade) from queueing behind the
/// release of the first one's socket, which holds the commit mutex.
#[derive(Debug, Default)]
pub struct NfnlFirewall {
    socket: Mutex<Option<NsSocket>>,
}

/// A socket and the namespace it was opened in.
#[derive(Debug)]
struct NsSocket {
    netns: (u64, u64),
    socket: NfnlSocket,
}

impl Clone for NfnlFirewall {
    /// A clone opens its own socket when first used.
    fn clone(&self) -> Self {
        Self::new()
    }
}

impl NfnlFirewall {
    pub fn new() -> Self {
        NfnlFirewall {
            socket: Mutex::new(None),
        }
    }

    /// Masquerade setup; `replace`: look for (and replace) the attachment's earlier
    /// rules, reading the whole table, rather than only `postrouting`.
    fn masq(&self, attachment: &Attachment<'_>, ips: &[IpNet], replace: bool) -> Result<()> {
        const OP: &str = "set up ip masquerade";
        let (fam, table) = (wire::NFPROTO_INET, MASQ_TABLE);
        let comment = masq_comment(
            attachment.network,
            attachment.container_id,
            attachment.ifname,
        );
        // The comment starts with the instance hash (it is never cut that
        // short), which saves hashing twice.
        let instance = comment
            .get(..MASQ_INSTANCE_HASH_LEN)
            .unwrap_or(&comment)
            .to_owned();
        let mut seen = HashSet::new();
        let wanted: Vec<Vec<Expr>> = ips
            .iter()
            .filter(|ip| seen.insert(**ip))
            .map(|ip| masq_rule(*ip))
            .collect();
        let post_wanted = postrouting_rules();
        self.with_socket(OP, |sock| {
            retry(|attempt| {
                let optimistic = attempt < OPTIMISTIC_ATTEMPTS;
                // Generation first: if anything commits between it and the dump,
                // the transaction below is refused rather than built on a stale
                // read.
                let chain = (!replace).then_some(MASQ_POSTROUTING);
                let reqs = [wire::get_gen(), wire::dump_rules(fam, table, chain)];
                let answers = sock.query(OP, &reqs)?;
                let genid = sock::genid(OP, &reqs[0], &answers[0])?;
                let rules = sock::rules(OP, &reqs[1], &answers[1])?;

                let post: Vec<&Rule> = rules
                    .iter()
                    .filter(|r| r.chain == MASQ_POSTROUTING)
                    .collect();
                let post_ok = optimistic
                    && post.len() == post_wanted.len()
                    && post.iter().zip(&post_wanted).all(|(r, w)| r.is(w));
                let mine: Vec<&Rule> = rules
                    .iter()
                    .filter(|r| r.chain == MASQ_CHAIN)
                    .filter(|r| masq_hashes(r).is_some_and(|(_, inst)| inst == instance))
                    .collect();
                let mine_ok = mine.len() == wanted.len()
                    && mine
                        .iter()
                        .zip(&wanted)
                        .all(|(r, w)| r.is(w) && r.comment.as_deref() == Some(&comment));
                if post_ok && mine_ok {
                    return Ok(());
                }

                let mut batch = Vec::new();
                // An intact postrouting proves the table and both chains exist.
                // Re-declaring them anyway would not be free: each NEWCHAIN on
                // an existing chain is an update whose transaction object is
                // freed only after an RCU grace period (see nfnl_socket).
                if !post_ok {
                    batch.push(wire::new_table(fam, table, Some(MASQ_TABLE_COMMENT)));
                    batch.push(wire::new_chain(
                        fam,
                        table,
                        MASQ_CHAIN,
                        None,
                        Some(MASQ_CHAIN_COMMENT),
                    ));
                    batch.push(wire::new_chain(
                        fam,
                        table,
                        MASQ_POSTROUTING,
                        Some(MASQ_HOOK),
                        None,
                    ));
                    batch.push(wire::flush_chain(fam, table, MASQ_POSTROUTING));
                    for exprs in &post_wanted {
                        batch.push(wire::new_rule(fam, table, MASQ_POSTROUTING, exprs, None));
                    }
                }
                if !mine_ok {
                    for r in &mine {
                        batch.push(wire::del_rule(fam, table, MASQ_CHAIN, r.handle));
                    }
                    for exprs in &wanted {
                        batch.push(wire::new_rule(
                            fam,
                            table,
                            MASQ_CHAIN,
                            exprs,
                            Some(&comment),
                        ));
                    }
                }
                // Relying on the read (skipping the table, chains and
                // postrouting rules) is only sound if nothing changed since;
                // otherwise the batch needs no check.
                sock.transact(OP, &batch, post_ok.then_some(genid))
            })
        })
    }

    /// Runs `f` with the socket for the calling thread's namespace. After an
    /// error the socket is discarded: whatever the kernel still had queued
    /// for it (answers to an abandoned exchange) goes with it.
    fn with_socket<T>(
        &self,
        op: &'static str,
        f: impl FnOnce(&mut NfnlSocket) -> Result<T>,
    ) -> Result<T> {
        let netns = current_netns(op)?;
        let mut cached = self
            .socket
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let entry = match cached.take() {
            Some(c) if c.netns == netns => c,
            _ => NsSocket {
                netns,
                socket: NfnlSocket::open(op)?,
            },
        };
        let entry = cached.insert(entry);
        let result = f(&mut entry.socket);
        if result.is_err() {
            *cached = None;
        }
        result
    }
}

/// Identity (device, inode) of the calling thread's network namespace.
fn current_netns(op: &'static str) -> Result<(u64, u64)> {
    const PATH: &str = "/proc/thread-self/ns/net";
    let st = nix::sys::stat::stat(PATH).map_err(|errno| Error::Netns {
        op,
        path: PATH.into(),
        errno,
    })?;
    Ok((st.st_dev, st.st_ino))
}

/// Whether a failed read-modify-write is worth redoing from the read.
fn lost_race(e: &Error) -> bool {
    matches!(
        e.errno(),
        // ERESTART: the generation moved since our read. ENOENT: a rule or
        // chain we meant to delete went away meanwhile. ENOBUFS: answers were
        // dropped, so the outcome is unknown until re-read.
        Some(Errno::ERESTART | Errno::ENOENT | Errno::ENOBUFS)
    )
}

/// Runs `attempt(n)` until it succeeds, fails for a reason other than a
/// lost race, or runs out of attempts.
fn retry<T>(mut attempt: impl FnMut(u32) -> Result<T>) -> Result<T> {
    let mut n = 0;
    loop {
        match attempt(n) {
            Err(e) if n + 1 < ATTEMPTS && lost_race(&e) => n += 1,
            other => return other,
        }
    }
}

/// The three rules of `postrouting`, as nft linearises them.
fn postrouting_rules() -> [Vec<Expr>; 3] {
    const MULTICAST_V4: IpNet = IpNet::new_assert(IpAddr::V4(Ipv4Addr::new(224, 0, 0, 0)), 4);
    const MULTICAST_V6: IpNet =
        IpNet::new_assert(IpAddr::V6(Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0)), 8);
    let multicast = |proto: u8, net: IpNet| {
        let mut e = wire::nfproto_is(proto).to_vec();
        e.extend(wire::daddr_prefix(net, wire::NFT_CMP_EQ));
        e.push(Expr::Verdict(Verdict::Return));
        e
    };
    [
        multicast(wire::NFPROTO_IPV4, MULTICAST_V4),
        multicast(wire::NFPROTO_IPV6, MULTICAST_V6),
        vec![Expr::Verdict(Verdict::Goto(MASQ_CHAIN.to_owned()))],
    ]
}

/// `ip[6] saddr <ip> ip[6] daddr != <subnet> masquerade`.
fn masq_rule(ip: IpNet) -> Vec<Expr> {
    let proto = if ip.addr().is_ipv4() {
        wire::NFPROTO_IPV4
    } else {
        wire::NFPROTO_IPV6
    };
    let mut e = wire::nfproto_is(proto).to_vec();
    e.extend(wire::addr_match(ip.addr(), true));
    e.extend(wire::daddr_prefix(ip, wire::NFT_CMP_NEQ));
    e.push(Expr::Masq);
    e
}

/// The instance hash of a masq rule's comment, and its network hash.
fn masq_hashes(rule: &Rule) -> Option<(&str, &str)> {
    rule.comment.as_deref().and_then(parse_masq_comment)
}

fn table_rules(
    sock: &mut NfnlSocket,
    op: &'static str,
    family: u8,
    table: &str,
    chain: Option<&str>,
) -> Result<Vec<Rule>> {
    let req = wire::dump_rules(family, table, chain);
    let answers = sock.query(op, std::slice::from_ref(&req))?;
    sock::rules(op, &req, &answers[0])
}

/// Deletes the masq_checks rules whose comment hashes satisfy `doomed`;
/// returns how many were deleted.
fn delete_masq_rules(
    sock: &mut NfnlSocket,
    op: &'static str,
    doomed: impl Fn((&str, &str)) -> bool,
) -> Result<usize> {
    retry(|_| {
        let rules = table_rules(sock, op, wire::NFPROTO_INET, MASQ_TABLE, Some(MASQ_CHAIN))?;
        let batch: Vec<Request> = rules
            .iter()
            .filter(|r| r.chain == MASQ_CHAIN && masq_hashes(r).is_some_and(&doomed))
            .map(|r| wire::del_rule(wire::NFPROTO_INET, MASQ_TABLE, MASQ_CHAIN, r.handle))
            .collect();
        sock.transact(op, &batch, None)?;
        Ok(batch.len())
    })
}

/// Removes the Go plugin's iptables masquerading (POSTROUTING jump + `CNI-…` chain, in
/// iptables-nft's `ip`/`ip6` `nat` tables) of this network's containers that are not in
/// `keep`: pods the Go plugin added before the node switched to us, and that went away
/// without a DEL. Go's comments name only the container, not the interface, so a container
/// with any valid attachment keeps its chain. Returns the number of chains removed.
fn gc_legacy_iptables_masq(
    sock: &mut NfnlSocket,
    network: &str,
    keep: &HashSet<&str>,
) -> Result<usize> {
    const OP: &str = "garbage-collect legacy iptables masquerade";
    retry(|_| {
        let mut batch = Vec::new();
        let mut removed = 0;
        for family in [wire::NFPROTO_IPV4, wire::NFPROTO_IPV6] {
            let mut chains: Vec<String> = Vec::new();
            for r in table_rules(sock, OP, family, "nat", Some("POSTROUTING"))? {
                let jump = r.jump_target();
                let comment = r.xt_comment().or_else(|| r.comment.clone());
                let Some(owner) = comment
                    .as_deref()
                    .and_then(|c| legacy_masq_owner(network, c, jump.as_deref()))
                else {
                    continue;
                };
                if keep.contains(owner.as_str()) {
                    continue;
                }
                batch.push(wire::del_rule(family, "nat", "POSTROUTING", r.handle));
                let chain = legacy_masq_chain(network, &owner);
                if !chains.contains(&chain) {
                    chains.push(chain);
                }
            }
            for chain in &chains {
                batch.push(wire::flush_chain(family, "nat", chain));
                batch.push(wire::del_chain(family, "nat", chain));
            }
            removed += chains.len();
        }
        if !batch.is_empty() {
            sock.transact(OP, &batch, None)?;
        }
        Ok(removed)
    })
}

impl Firewall for NfnlFirewall {
    fn setup_masq(&self, attachment: &Attachment<'_>, ips: &[IpNet]) -> Result<()> {
        self.masq(attachment, ips, true)
    }

    fn setup_masq_new(&self, attachment: &Attachment<'_>, ips: &[IpNet]) -> Result<()> {
        self.masq(attachment, ips, false)
    }

    fn teardown_masq(&self, attachment: &Attachment<'_>) -> Result<()> {
        const OP: &str = "tear down ip masquerade";
        let instance = masq_instance_hash(
            attachment.network,
            attachment.container_id,
            attachment.ifname,
        );
        self.with_socket(OP, |sock| {
            delete_masq_rules(sock, OP, |(_, inst)| inst == instance).map(drop)
        })
    }

    fn gc_masq(&self, network: &str, valid: &[GcAttachment]) -> Result<usize> {
        const OP: &str = "garbage-collect ip masquerade";
        let net_hash = masq_network_hash(network);
        let keep: HashSet<String> = valid
            .iter()
            .map(|a| masq_instance_hash(network, &a.container_id, &a.ifname))
            .collect();
        let keep_ids: HashSet<&str> = valid.iter().map(|a| a.container_id.as_str()).collect();
        self.with_socket(OP, |sock| {
            let ours = delete_masq_rules(sock, OP, |(net, inst)| {
                net == net_hash && !keep.contains(inst)
            })?;
            Ok(ours + gc_legacy_iptables_masq(sock, network, &keep_ids)?)
        })
    }

    fn teardown_legacy_iptables_masq(&self, network: &str, container_id: &str) -> Result<bool> {
        const OP: &str = "tear down legacy iptables masquerade";
        const FAMILIES: [u8; 2] = [wire::NFPROTO_IPV4, wire::NFPROTO_IPV6];
        let chain = legacy_masq_chain(network, container_id);
        self.with_socket(OP, |sock| {
            retry(|_| {
                // Both lookups in one round trip: the common case is that
                // neither chain exists (a pod set up by the nftables versions).
                let lookups: Vec<Request> = FAMILIES
                    .iter()
                    .map(|f| wire::get_chain(*f, "nat", &chain))
                    .collect();
                let answers = sock.query(OP, &lookups)?;
                let mut batch = Vec::new();
                for ((family, req), answer) in FAMILIES.iter().zip(&lookups).zip(&answers) {
                    if !sock::exists(OP, req, answer)? {
                        continue;
                    }
                    let postrouting = table_rules(sock, OP, *family, "nat", Some("POSTROUTING"))?;
                    for r in postrouting
                        .iter()
                        .filter(|r| r.jump_target().as_deref() == Some(chain.as_str()))
                    {
                        batch.push(wire::del_rule(*family, "nat", "POSTROUTING", r.handle));
                    }
                    batch.push(wire::flush_chain(*family, "nat", &chain));
                    batch.push(wire::del_chain(*family, "nat", &chain));
                }
                if batch.is_empty() {
                    return Ok(false);
                }
                sock.transact(OP, &batch, None)?;
                Ok(true)
            })
        })
    }

    fn setup_mac_spoof_check(&self, check: &MacSpoofCheck<'_>) -> Result<()> {
        const OP: &str = "set up mac spoof check";
        let (fam, table) = (wire::NFPROTO_BRIDGE, SPOOFCHK_TABLE);
        let comment = spoofchk_comment(check.container_id, check.ifname);
        let iface = spoofchk_iface_chain(check.container_id, check.ifname);
        let mac_chain = spoofchk_mac_chain(check.container_id, check.ifname);
        let mut jump = wire::iifname_is(check.host_veth).to_vec();
        jump.push(Expr::Verdict(Verdict::Jump(iface.clone())));
        let mut allow = wire::ether_saddr_is(check.mac.0).to_vec();
        allow.push(Expr::Verdict(Verdict::Return));
        self.with_socket(OP, |sock| {
            retry(|_| {
                let reqs = [
                    wire::get_chain(fam, table, SPOOFCHK_PREROUTING),
                    wire::dump_rules(fam, table, Some(SPOOFCHK_PREROUTING)),
                ];
                let answers = sock.query(OP, &reqs)?;
                let have_prerouting = sock::exists(OP, &reqs[0], &answers[0])?;
                let prerouting = sock::rules(OP, &reqs[1], &answers[1])?;
                // Only created when missing (an update of an existing base chain
                // costs an RCU grace period, see nfnl_socket). Should it vanish
                // before the transaction, the rule added to it fails with ENOENT
                // and the whole operation is redone.
                let mut batch = Vec::new();
                if !have_prerouting {
                    batch.push(wire::new_table(fam, table, None));
                    batch.push(wire::new_chain(
                        fam,
                        table,
                        SPOOFCHK_PREROUTING,
                        Some(SPOOFCHK_HOOK),
                        None,
                    ));
                }
                for r in prerouting
                    .iter()
                    .filter(|r| r.comment.as_deref() == Some(comment.as_str()))
                {
                    batch.push(wire::del_rule(fam, table, SPOOFCHK_PREROUTING, r.handle));
                }
                // The attachment's own chains are rewritten whole: nobody else
                // writes them, so no read is needed.
                for chain in [&iface, &mac_chain] {
                    batch.push(wire::new_chain(fam, table, chain, None, None));
                    batch.push(wire::flush_chain(fam, table, chain));
                }
                let c = Some(comment.as_str());
                batch.push(wire::new_rule(fam, table, SPOOFCHK_PREROUTING, &jump, c));
                batch.push(wire::new_rule(
                    fam,
                    table,
                    &iface,
                    &[Expr::Verdict(Verdict::Jump(mac_chain.clone()))],
                    c,
                ));
                batch.push(wire::new_rule(fam, table, &mac_chain, &allow, c));
                batch.push(wire::new_rule(
                    fam,
                    table,
                    &mac_chain,
                    &[Expr::Verdict(Verdict::Drop)],
                    c,
                ));
                sock.transact(OP, &batch, None)
            })
        })
    }

    fn teardown_mac_spoof_check(&self, container_id: &str, ifname: &str) -> Result<()> {
        const OP: &str = "tear down mac spoof check";
        let (fam, table) = (wire::NFPROTO_BRIDGE, SPOOFCHK_TABLE);
        let comment = spoofchk_comment(container_id, ifname);
        let iface = spoofchk_iface_chain(container_id, ifname);
        let mac_chain = spoofchk_mac_chain(container_id, ifname);
        self.with_socket(OP, |sock| {
            retry(|_| {
                // Two lookups and the dump in one round trip (the dump last: a
                // socket runs one dump at a time).
                let reqs = [
                    wire::get_chain(fam, table, &iface),
                    wire::get_chain(fam, table, &mac_chain),
                    wire::dump_rules(fam, table, Some(SPOOFCHK_PREROUTING)),
                ];
                let answers = sock.query(OP, &reqs)?;
                let mut present = Vec::new();
                for (i, chain) in [&iface, &mac_chain].into_iter().enumerate() {
                    if sock::exists(OP, &reqs[i], &answers[i])? {
                        present.push(chain);
                    }
                }
                let jumps: Vec<Rule> = sock::rules(OP, &reqs[2], &answers[2])?
                    .into_iter()
                    .filter(|r| {
                        r.comment.as_deref() == Some(comment.as_str())
                            || r.jump_target().as_deref() == Some(iface.as_str())
                    })
                    .collect();
                let mut batch: Vec<Request> = jumps
                    .iter()
                    .map(|r| wire::del_rule(fam, table, SPOOFCHK_PREROUTING, r.handle))
                    .collect();
                // Flush both before deleting either: the iface chain's jump holds
                // a reference on the mac chain, and a referenced chain cannot be
                // deleted.
                for chain in &present {
                    batch.push(wire::flush_chain(fam, table, chain));
                }
                for chain in &present {
                    batch.push(wire::del_chain(fam, table, chain));
                }
                sock.transact(OP, &batch, None)
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_races_are_retried_and_other_errors_are_not() {
        let err = |errno| Error::Netlink {
            op: "x",
            object: "y".into(),
            errno,
            kernel_msg: None,
        };
        let mut calls = 0;
        let r: Result<()> = retry(|n| {
            calls += 1;
            if n < 2 {
                Err(err(Errno::ERESTART))
            } else {
                Ok(())
            }
        });
        assert!(r.is_ok());
        assert_eq!(calls, 3);

        calls = 0;
        let r: Result<()> = retry(|_| {
            calls += 1;
            Err(err(Errno::EPERM))
        });
        assert_eq!(r.unwrap_err().errno(), Some(Errno::EPERM));
        assert_eq!(calls, 1);

        calls = 0;
        let r: Result<()> = retry(|_| {
            calls += 1;
            Err(err(Errno::ENOENT))
        });
        assert!(r.is_err());
        assert_eq!(calls, ATTEMPTS);
    }

    #[test]
    fn postrouting_rules_are_the_go_ones() {
        let [v4, v6, goto] = postrouting_rules();
        assert_eq!(v4.len(), 6, "{v4:?}"); // nfproto, load, bitwise, cmp, return
        assert_eq!(v6.len(), 5, "{v6:?}"); // nfproto, 1-byte load, cmp, return
        assert_eq!(goto, [Expr::Verdict(Verdict::Goto("masq_checks".into()))]);
    }

    #[test]
    fn masq_rule_matches_the_address_and_subnet() {
        let e = masq_rule("10.244.1.5/24".parse().unwrap());
        assert_eq!(e.last(), Some(&Expr::Masq));
        assert!(e.contains(&Expr::Cmp {
            sreg: wire::NFT_REG_1,
            op: wire::NFT_CMP_NEQ,
            data: vec![10, 244, 1],
        }));
        assert!(e.contains(&Expr::Cmp {
            sreg: wire::NFT_REG_1,
            op: wire::NFT_CMP_EQ,
            data: vec![10, 244, 1, 5],
        }));
    }
}
