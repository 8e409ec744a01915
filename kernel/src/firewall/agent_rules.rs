//! The overlay agent's own nftables rules (flanneld's `--ip-masq` and FORWARD accept
//! rules), in table `ip flannel-ipv4`, the table flanneld's nftables mode uses:
//!
//! - chain `forward` (filter, hook forward, priority 0): accept traffic from and to
//!   the cluster network (hosts whose FORWARD policy is drop, e.g. with Docker);
//! - chain `postrtg` (nat, hook postrouting, priority srcnat): flanneld's masquerade
//!   rules, with iptables-mode semantics for the "external → local pods" exception
//!   (flanneld's nftables mode tests `saddr != <own subnet>` there, which makes the
//!   host → overlay masquerade unreachable).
//!
//! Every rule carries a comment with its position and a digest of its content, so
//! [`AgentFirewall::sync_agent_rules`] verifies order, duplicates and content with one
//! `nft -j list` and rewrites the table in one transaction only when it differs.

use std::path::PathBuf;

use ipnet::Ipv4Net;
use serde_json::{json, Value};

use super::naming::sha512_hex;
use super::NftFirewall;
use crate::error::Result;

/// Table (family `ip`) holding the agent's chains.
pub const AGENT_TABLE: &str = "flannel-ipv4";
pub const AGENT_FORWARD_CHAIN: &str = "forward";
pub const AGENT_POSTRTG_CHAIN: &str = "postrtg";
/// kube-proxy's masquerade mark: such packets are NATed by kube-proxy already.
const KUBE_PROXY_MARK: u32 = 0x4000;
const COMMENT_PREFIX: &str = "flanneld-rs";

/// What the agent wants installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRules {
    /// The cluster network (`Network`).
    pub network: Ipv4Net,
    /// This node's leased subnet.
    pub subnet: Ipv4Net,
    /// `--ip-masq`.
    pub masq: bool,
    /// `--iptables-forward-rules`.
    pub forward: bool,
    /// Masquerade with `fully-random` port selection.
    pub fully_random: bool,
}

/// Agent rule management, acting on the calling thread's network namespace.
pub trait AgentFirewall {
    /// Makes the table match `rules`; returns whether anything was rewritten.
    fn sync_agent_rules(&self, rules: &AgentRules) -> Result<bool>;
    /// Removes the agent's table (nothing to do when absent).
    fn remove_agent_rules(&self) -> Result<()>;
}

/// [`AgentFirewall`] through the `nft` binary.
#[derive(Debug, Clone)]
pub struct NftAgentFirewall {
    /// The same `nft -j` plumbing (spawn, transaction, error text) the CNI rules use.
    nft: NftFirewall,
}

impl Default for NftAgentFirewall {
    fn default() -> Self {
        Self::new()
    }
}

fn prefix(net: Ipv4Net) -> Value {
    json!({"prefix": {"addr": net.network().to_string(), "len": net.prefix_len()}})
}

fn addr_match(field: &str, op: &str, net: Ipv4Net) -> Value {
    json!({"match": {"op": op, "left": {"payload": {"protocol": "ip", "field": field}}, "right": prefix(net)}})
}

fn masquerade(fully_random: bool) -> Value {
    if fully_random {
        json!({"masquerade": {"flags": ["fully-random"]}})
    } else {
        json!({"masquerade": null})
    }
}

/// (chain, expressions) in order.
pub fn desired_rules(r: &AgentRules) -> Vec<(&'static str, Vec<Value>)> {
    let (n, p) = (r.network.trunc(), r.subnet.trunc());
    let multicast: Ipv4Net =
        Ipv4Net::new(std::net::Ipv4Addr::new(224, 0, 0, 0), 4).unwrap_or_default();
    let mut out = Vec::new();
    if r.forward {
        out.push((
            AGENT_FORWARD_CHAIN,
            vec![addr_match("saddr", "==", n), json!({"accept": null})],
        ));
        out.push((
            AGENT_FORWARD_CHAIN,
            vec![addr_match("daddr", "==", n), json!({"accept": null})],
        ));
    }
    if r.masq {
        let mark = json!({"match": {"op": "==", "left": {"&": [{"meta": {"key": "mark"}}, KUBE_PROXY_MARK]}, "right": KUBE_PROXY_MARK}});
        let ret = json!({"return": null});
        out.push((AGENT_POSTRTG_CHAIN, vec![mark, ret.clone()]));
        out.push((
            AGENT_POSTRTG_CHAIN,
            vec![
                addr_match("saddr", "==", p),
                addr_match("daddr", "==", n),
                ret.clone(),
            ],
        ));
        out.push((
            AGENT_POSTRTG_CHAIN,
            vec![
                addr_match("saddr", "==", n),
                addr_match("daddr", "==", p),
                ret.clone(),
            ],
        ));
        out.push((
            AGENT_POSTRTG_CHAIN,
            vec![
                addr_match("saddr", "!=", n),
                addr_match("daddr", "==", p),
                ret,
            ],
        ));
        out.push((
            AGENT_POSTRTG_CHAIN,
            vec![
                addr_match("saddr", "==", n),
                addr_match("daddr", "!=", multicast),
                masquerade(r.fully_random),
            ],
        ));
        out.push((
            AGENT_POSTRTG_CHAIN,
            vec![
                addr_match("saddr", "!=", n),
                addr_match("daddr", "==", n),
                masquerade(r.fully_random),
            ],
        ));
    }
    out
}

/// `flanneld-rs <chain>#<i> <digest>`: position and content in one comparable string.
fn comment(chain: &str, index: usize, expr: &[Value]) -> String {
    let body = Value::Array(expr.to_vec()).to_string();
    format!(
        "{COMMENT_PREFIX} {chain}#{index} {}",
        sha512_hex(&format!("{chain}/{index}/{body}"), 12)
    )
}

/// Desired comments per chain, in order.
fn desired_comments(rules: &[(&'static str, Vec<Value>)]) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for chain in [AGENT_FORWARD_CHAIN, AGENT_POSTRTG_CHAIN] {
        let list: Vec<String> = rules
            .iter()
            .filter(|(c, _)| *c == chain)
            .enumerate()
            .map(|(i, (c, e))| comment(c, i, e))
            .collect();
        out.push((chain.to_owned(), list));
    }
    out
}

/// Comments per chain as listed (None = no such chain), base-chain hook included
/// so a chain recreated without its hook is noticed.
fn listed_comments(listing: Option<&Value>) -> Vec<(String, Option<String>, Vec<String>)> {
    let items = listing
        .and_then(|l| l.get("nftables"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut chains: Vec<(String, Option<String>, Vec<String>)> = Vec::new();
    for item in &items {
        if let Some(c) = item.get("chain") {
            let name = c
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let hook = c.get("hook").and_then(Value::as_str).map(str::to_owned);
            chains.push((name, hook, Vec::new()));
        }
    }
    for item in &items {
        if let Some(r) = item.get("rule") {
            let chain = r.get("chain").and_then(Value::as_str).unwrap_or_default();
            let comment = r
                .get("comment")
                .and_then(Value::as_str)
                .unwrap_or("(none)")
                .to_owned();
            if let Some(entry) = chains.iter_mut().find(|(n, _, _)| n == chain) {
                entry.2.push(comment);
            }
        }
    }
    chains
}

fn in_sync(listing: Option<&Value>, rules: &[(&'static str, Vec<Value>)]) -> bool {
    let listed = listed_comments(listing);
    let want = desired_comments(rules);
    for (chain, comments) in &want {
        let hook = if chain == AGENT_FORWARD_CHAIN {
            "forward"
        } else {
            "postrouting"
        };
        let found = listed.iter().find(|(n, _, _)| n == chain);
        match found {
            None if comments.is_empty() => {}
            Some((_, h, got))
                if !comments.is_empty() && h.as_deref() == Some(hook) && got == comments => {}
            _ => return false,
        }
    }
    // No foreign chains left over either.
    listed
        .iter()
        .all(|(n, _, _)| want.iter().any(|(c, list)| c == n && !list.is_empty()))
        && (listing.is_some() || rules.is_empty())
}

/// The one transaction that rewrites the table to `rules`.
fn sync_commands(rules: &[(&'static str, Vec<Value>)], table_exists: bool) -> Vec<Value> {
    let t = json!({"family": "ip", "name": AGENT_TABLE});
    if rules.is_empty() {
        return if table_exists {
            vec![json!({"delete": {"table": t}})]
        } else {
            Vec::new()
        };
    }
    let mut cmds = vec![json!({"add": {"table": t}})];
    let base = |name: &str, kind: &str, hook: &str, prio: i32| json!({"add": {"chain": {"family": "ip", "table": AGENT_TABLE, "name": name, "type": kind, "hook": hook, "prio": prio, "policy": "accept"}}});
    for (chain, kind, hook, prio) in [
        (AGENT_FORWARD_CHAIN, "filter", "forward", 0),
        (AGENT_POSTRTG_CHAIN, "nat", "postrouting", 100),
    ] {
        let c = json!({"family": "ip", "table": AGENT_TABLE, "name": chain});
        let wanted: Vec<&Vec<Value>> = rules
            .iter()
            .filter(|(n, _)| *n == chain)
            .map(|(_, e)| e)
            .collect();
        if wanted.is_empty() {
            // Declaring, flushing, then deleting removes the chain whether or not it
            // existed, in the same transaction.
            cmds.push(json!({"add": {"chain": c.clone()}}));
            cmds.push(json!({"flush": {"chain": c.clone()}}));
            cmds.push(json!({"delete": {"chain": c}}));
            continue;
        }
        cmds.push(base(chain, kind, hook, prio));
        cmds.push(json!({"flush": {"chain": c}}));
        for (i, expr) in wanted.iter().enumerate() {
            cmds.push(json!({"add": {"rule": {
                "family": "ip", "table": AGENT_TABLE, "chain": chain,
                "comment": comment(chain, i, expr), "expr": expr,
            }}}));
        }
    }
    cmds
}

impl NftAgentFirewall {
    /// Uses the same `nft` binary [`NftFirewall`] finds.
    pub fn new() -> Self {
        NftAgentFirewall {
            nft: NftFirewall::new(),
        }
    }

    pub fn with_program(program: impl Into<PathBuf>) -> Self {
        NftAgentFirewall {
            nft: NftFirewall::with_program(program),
        }
    }

    fn list_table(&self, op: &'static str) -> Result<Option<Value>> {
        self.nft.list(op, &["list", "table", "ip", AGENT_TABLE])
    }

    fn apply(&self, op: &'static str, commands: Vec<Value>) -> Result<()> {
        if commands.is_empty() {
            return Ok(());
        }
        self.nft.apply(op, commands)
    }
}

impl AgentFirewall for NftAgentFirewall {
    fn sync_agent_rules(&self, rules: &AgentRules) -> Result<bool> {
        const OP: &str = "sync flanneld rules";
        let want = desired_rules(rules);
        let listing = self.list_table(OP)?;
        if in_sync(listing.as_ref(), &want) {
            return Ok(false);
        }
        self.apply(OP, sync_commands(&want, listing.is_some()))?;
        Ok(true)
    }

    fn remove_agent_rules(&self) -> Result<()> {
        const OP: &str = "remove flanneld rules";
        let exists = self.list_table(OP)?.is_some();
        self.apply(OP, sync_commands(&[], exists))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(masq: bool, forward: bool) -> AgentRules {
        AgentRules {
            network: "10.244.0.0/16".parse().unwrap(),
            subnet: "10.244.3.0/24".parse().unwrap(),
            masq,
            forward,
            fully_random: true,
        }
    }

    /// What `nft -j list table` would answer after applying `cmds`.
    fn listing_after(cmds: &[Value]) -> Value {
        let mut items = vec![
            json!({"metainfo": {}}),
            json!({"table": {"family": "ip", "name": AGENT_TABLE}}),
        ];
        for c in cmds {
            if let Some(ch) = c
                .pointer("/add/chain")
                .filter(|ch| ch.get("hook").is_some())
            {
                items.push(json!({"chain": ch}));
            }
            if let Some(r) = c.pointer("/add/rule") {
                items.push(json!({"rule": r}));
            }
        }
        json!({ "nftables": items })
    }

    #[test]
    fn flanneld_rule_set() {
        let want = desired_rules(&rules(true, true));
        let text: Vec<String> = want
            .iter()
            .map(|(c, e)| format!("{c} {}", Value::Array(e.clone())))
            .collect();
        assert_eq!(want.len(), 8);
        assert!(
            text[0].starts_with("forward")
                && text[0].contains(r#""saddr""#)
                && text[0].contains("accept")
        );
        assert!(text[2].contains("16384"), "{}", text[2]);
        assert!(text[3].contains(r#""addr":"10.244.3.0","len":24"#) && text[3].contains("return"));
        // Rule 4: external (not N) → local pods keeps its source.
        assert!(
            text[5].contains(r#""op":"!=""#) && text[5].contains(r#""addr":"10.244.0.0","len":16"#)
        );
        assert!(text[6].contains("224.0.0.0") && text[6].contains("fully-random"));
        assert!(text[7].contains("masquerade"));
        assert_eq!(desired_rules(&rules(false, false)), vec![]);
        let no_random = AgentRules {
            fully_random: false,
            ..rules(true, false)
        };
        assert!(desired_rules(&no_random)
            .iter()
            .all(|(_, e)| !Value::Array(e.clone()).to_string().contains("fully")));
    }

    #[test]
    fn sync_detects_drift_and_is_quiet_when_in_sync() {
        let want = desired_rules(&rules(true, true));
        assert!(!in_sync(None, &want));
        let cmds = sync_commands(&want, false);
        assert_eq!(
            cmds[0],
            json!({"add": {"table": {"family": "ip", "name": AGENT_TABLE}}})
        );
        let applied = listing_after(&cmds);
        assert!(in_sync(Some(&applied), &want));

        // A rule deleted, duplicated or reordered by someone else → rewrite.
        let mut damaged = applied.clone();
        damaged["nftables"].as_array_mut().unwrap().pop();
        assert!(!in_sync(Some(&damaged), &want));
        let mut dup = applied.clone();
        let last = dup["nftables"].as_array().unwrap().last().unwrap().clone();
        dup["nftables"].as_array_mut().unwrap().push(last);
        assert!(!in_sync(Some(&dup), &want));
        // A config change (new subnet) changes digests.
        let other = desired_rules(&AgentRules {
            subnet: "10.244.4.0/24".parse().unwrap(),
            ..rules(true, true)
        });
        assert!(!in_sync(Some(&applied), &other));
        // Masquerade switched off: postrtg must go.
        let fwd_only = desired_rules(&rules(false, true));
        assert!(!in_sync(Some(&applied), &fwd_only));
        let cmds = sync_commands(&fwd_only, true);
        assert!(cmds
            .iter()
            .any(|c| c.pointer("/delete/chain/name") == Some(&json!(AGENT_POSTRTG_CHAIN))));
        assert!(in_sync(Some(&listing_after(&cmds)), &fwd_only));
        // Nothing wanted: the table goes.
        assert_eq!(
            sync_commands(&[], true),
            vec![json!({"delete": {"table": {"family": "ip", "name": AGENT_TABLE}}})]
        );
        assert!(sync_commands(&[], false).is_empty());
        assert!(in_sync(None, &[]));
    }

    #[test]
    fn missing_nft_is_a_spawn_error() {
        let fw = NftAgentFirewall::with_program("/nonexistent/nft");
        let e = fw.sync_agent_rules(&rules(true, true)).unwrap_err();
        assert!(matches!(e, crate::error::Error::Spawn { .. }), "{e}");
    }
}
