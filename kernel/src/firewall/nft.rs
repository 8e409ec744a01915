//! [`Firewall`] through the `nft` binary and libnftables JSON.
//!
//! Each operation costs at most one read (`nft -j list ...`) and one write
//! (`nft -j -f -`, a single kernel transaction), except the legacy iptables
//! cleanup, which reads per family. Reads only fetch the one chain or small
//! table involved, never the whole ruleset (kube-proxy's can be huge).

use std::collections::HashSet;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ipnet::IpNet;
use serde_json::{json, Value};

use super::naming::*;
use super::{Attachment, Firewall, GcAttachment, MacSpoofCheck};
use crate::error::{Error, Result};

const MASQ_TABLE_COMMENT: &str =
    "Masquerading for plugins from github.com/containernetworking/plugins";
const MASQ_CHAIN_COMMENT: &str =
    "Masquerade traffic from certain IPs to any (non-multicast) IP outside their subnet";
/// `srcnat` priority of the nat postrouting hook.
const SRCNAT_PRIORITY: i32 = 100;
/// Runs before conntrack and the bridge's own nat handling, as the Go
/// plugin's PREROUTING chain does.
const SPOOFCHK_PRIORITY: i32 = -300;
/// A read-then-write can lose a race with another plugin instance deleting
/// the same rule handle; the whole transaction then fails and is redone.
const WRITE_ATTEMPTS: u32 = 3;

/// [`Firewall`] implementation that execs `nft`.
#[derive(Debug, Clone)]
pub struct NftFirewall {
    program: PathBuf,
}

impl Default for NftFirewall {
    fn default() -> Self {
        Self::new()
    }
}

impl NftFirewall {
    /// Uses the first executable `nft` on PATH, else /usr/sbin/nft (plugins
    /// often run with a minimal PATH).
    pub fn new() -> Self {
        let from_path = std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join("nft"))
                .find(|p| {
                    p.metadata()
                        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                })
        });
        NftFirewall {
            program: from_path.unwrap_or_else(|| PathBuf::from("/usr/sbin/nft")),
        }
    }

    /// Uses an explicit `nft` binary.
    pub fn with_program(program: impl Into<PathBuf>) -> Self {
        NftFirewall {
            program: program.into(),
        }
    }

    pub fn program(&self) -> &Path {
        &self.program
    }

    /// `nft -j <args>`; Ok(None) when the listed table or chain does not exist.
    pub(crate) fn list(&self, op: &'static str, args: &[&str]) -> Result<Option<Value>> {
        let out = Command::new(&self.program)
            .arg("-j")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| self.spawn_error(op, source))?;
        if !out.status.success() {
            let err = self.failure(op, &out.status, &out.stderr);
            return if is_enoent(&err) { Ok(None) } else { Err(err) };
        }
        serde_json::from_slice(&out.stdout)
            .map(Some)
            .map_err(|e| Error::NftOutput {
                op,
                reason: e.to_string(),
            })
    }

    /// Applies `commands` as one transaction: all or nothing.
    pub(crate) fn apply(&self, op: &'static str, commands: Vec<Value>) -> Result<()> {
        let body = json!({ "nftables": commands }).to_string();
        let mut child = Command::new(&self.program)
            .args(["-j", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| self.spawn_error(op, source))?;
        if let Some(mut stdin) = child.stdin.take() {
            // A write error (EPIPE) means nft exited early; its status and
            // stderr below say why.
            let _ = stdin.write_all(body.as_bytes());
        }
        let out = child
            .wait_with_output()
            .map_err(|source| self.spawn_error(op, source))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(self.failure(op, &out.status, &out.stderr))
        }
    }

    /// Reads with `read`, builds a transaction with `build` (None = nothing
    /// to do) and applies it, redoing both if a listed handle vanished in
    /// between.
    fn read_modify_write<T>(
        &self,
        op: &'static str,
        read: impl Fn() -> Result<Option<Value>>,
        build: impl Fn(Option<&Value>) -> (Vec<Value>, T),
    ) -> Result<T> {
        let mut attempt = 1;
        loop {
            let listing = read()?;
            let (commands, result) = build(listing.as_ref());
            if commands.is_empty() {
                return Ok(result);
            }
            match self.apply(op, commands) {
                Ok(()) => return Ok(result),
                Err(e) if attempt < WRITE_ATTEMPTS && is_enoent(&e) => attempt += 1,
                Err(e) => return Err(e),
            }
        }
    }

    fn list_masq_chain(&self, op: &'static str) -> Result<Option<Value>> {
        self.list(op, &["list", "chain", "inet", MASQ_TABLE, MASQ_CHAIN])
    }

    fn spawn_error(&self, op: &'static str, source: std::io::Error) -> Error {
        Error::Spawn {
            op,
            program: self.program.display().to_string(),
            source,
        }
    }

    fn failure(&self, op: &'static str, status: &std::process::ExitStatus, stderr: &[u8]) -> Error {
        Error::Nft {
            op,
            program: self.program.display().to_string(),
            status: status.to_string(),
            stderr: String::from_utf8_lossy(stderr).trim().to_owned(),
        }
    }
}

impl Firewall for NftFirewall {
    fn setup_masq(&self, attachment: &Attachment<'_>, ips: &[IpNet]) -> Result<()> {
        const OP: &str = "set up ip masquerade";
        self.read_modify_write(
            OP,
            || self.list_masq_chain(OP),
            |listing| (masq_setup_commands(&rules_of(listing), attachment, ips), ()),
        )
    }

    fn teardown_masq(&self, attachment: &Attachment<'_>) -> Result<()> {
        const OP: &str = "tear down ip masquerade";
        let prefix = masq_instance_hash(
            attachment.network,
            attachment.container_id,
            attachment.ifname,
        );
        self.read_modify_write(
            OP,
            || self.list_masq_chain(OP),
            |listing| {
                let doomed = masq_rules_matching(&rules_of(listing), |hash| hash.1 == prefix);
                (delete_rules(&doomed), ())
            },
        )
    }

    fn gc_masq(&self, network: &str, valid: &[GcAttachment]) -> Result<usize> {
        const OP: &str = "garbage-collect ip masquerade";
        let net_hash = masq_network_hash(network);
        let keep: HashSet<String> = valid
            .iter()
            .map(|a| masq_instance_hash(network, &a.container_id, &a.ifname))
            .collect();
        self.read_modify_write(
            OP,
            || self.list_masq_chain(OP),
            |listing| {
                let doomed = masq_rules_matching(&rules_of(listing), |(net, inst)| {
                    net == net_hash && !keep.contains(inst)
                });
                (delete_rules(&doomed), doomed.len())
            },
        )
    }

    fn teardown_legacy_iptables_masq(&self, network: &str, container_id: &str) -> Result<bool> {
        const OP: &str = "tear down legacy iptables masquerade";
        let chain = legacy_masq_chain(network, container_id);
        self.read_modify_write(
            OP,
            || {
                // Packed as {"ip": ..., "ip6": ...}: one listing per family
                // whose nat table holds the chain, with its POSTROUTING rules.
                let mut found = serde_json::Map::new();
                for family in ["ip", "ip6"] {
                    if self
                        .list(OP, &["list", "chain", family, "nat", &chain])?
                        .is_none()
                    {
                        continue;
                    }
                    let postrouting =
                        self.list(OP, &["list", "chain", family, "nat", "POSTROUTING"])?;
                    found.insert(family.to_owned(), postrouting.unwrap_or(Value::Null));
                }
                Ok((!found.is_empty()).then_some(Value::Object(found)))
            },
            |listing| {
                let Some(Value::Object(found)) = listing else {
                    return (Vec::new(), false);
                };
                let mut commands = Vec::new();
                for (family, postrouting) in found {
                    let jumps: Vec<ListedRule> = rules_of(Some(postrouting))
                        .into_iter()
                        .filter(|r| r.jump.as_deref() == Some(chain.as_str()))
                        .collect();
                    commands.extend(delete_rules(&jumps));
                    let c = json!({"family": family, "table": "nat", "name": chain});
                    commands.push(json!({"flush": {"chain": c.clone()}}));
                    commands.push(json!({"delete": {"chain": c}}));
                }
                (commands, true)
            },
        )
    }

    fn setup_mac_spoof_check(&self, check: &MacSpoofCheck<'_>) -> Result<()> {
        const OP: &str = "set up mac spoof check";
        self.read_modify_write(
            OP,
            || {
                self.list(
                    OP,
                    &[
                        "list",
                        "chain",
                        "bridge",
                        SPOOFCHK_TABLE,
                        SPOOFCHK_PREROUTING,
                    ],
                )
            },
            |listing| (spoofchk_setup_commands(&rules_of(listing), check), ()),
        )
    }

    fn teardown_mac_spoof_check(&self, container_id: &str, ifname: &str) -> Result<()> {
        const OP: &str = "tear down mac spoof check";
        self.read_modify_write(
            OP,
            || self.list(OP, &["list", "table", "bridge", SPOOFCHK_TABLE]),
            |listing| {
                (
                    spoofchk_teardown_commands(listing, container_id, ifname),
                    (),
                )
            },
        )
    }
}

fn is_enoent(e: &Error) -> bool {
    matches!(e, Error::Nft { stderr, .. } if stderr.contains("No such file or directory"))
}

/// A rule from an `nft -j list` answer.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ListedRule {
    family: String,
    table: String,
    chain: String,
    handle: u64,
    comment: Option<String>,
    /// Target of the rule's jump/goto, if any.
    jump: Option<String>,
}

fn str_field(obj: &Value, key: &str) -> String {
    obj.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

fn rules_of(listing: Option<&Value>) -> Vec<ListedRule> {
    let items = listing
        .and_then(|l| l.get("nftables"))
        .and_then(Value::as_array);
    items
        .into_iter()
        .flatten()
        .filter_map(|item| {
            let rule = item.get("rule")?;
            let jump = rule
                .get("expr")
                .and_then(Value::as_array)
                .and_then(|exprs| {
                    exprs.iter().find_map(|e| {
                        let verdict = e.get("jump").or_else(|| e.get("goto"))?;
                        verdict
                            .get("target")
                            .and_then(Value::as_str)
                            .map(str::to_owned)
                    })
                });
            Some(ListedRule {
                family: str_field(rule, "family"),
                table: str_field(rule, "table"),
                chain: str_field(rule, "chain"),
                handle: rule.get("handle")?.as_u64()?,
                comment: rule
                    .get("comment")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                jump,
            })
        })
        .collect()
}

fn chains_of(listing: Option<&Value>) -> HashSet<String> {
    let items = listing
        .and_then(|l| l.get("nftables"))
        .and_then(Value::as_array);
    items
        .into_iter()
        .flatten()
        .filter_map(|item| Some(str_field(item.get("chain")?, "name")))
        .collect()
}

/// Masq rules whose comment parses and whose (network hash, instance hash)
/// satisfies `pred`.
fn masq_rules_matching(
    rules: &[ListedRule],
    pred: impl Fn((&str, &str)) -> bool,
) -> Vec<ListedRule> {
    rules
        .iter()
        .filter(|r| r.chain == MASQ_CHAIN)
        .filter(|r| {
            r.comment
                .as_deref()
                .and_then(parse_masq_comment)
                .is_some_and(&pred)
        })
        .cloned()
        .collect()
}

fn delete_rules(rules: &[ListedRule]) -> Vec<Value> {
    rules
        .iter()
        .map(|r| {
            json!({"delete": {"rule": {
                "family": r.family, "table": r.table, "chain": r.chain, "handle": r.handle
            }}})
        })
        .collect()
}

fn rule(family: &str, table: &str, chain: &str, comment: &str, expr: Vec<Value>) -> Value {
    json!({"add": {"rule": {
        "family": family, "table": table, "chain": chain, "comment": comment, "expr": expr
    }}})
}

fn rule_nc(family: &str, table: &str, chain: &str, expr: Vec<Value>) -> Value {
    json!({"add": {"rule": {"family": family, "table": table, "chain": chain, "expr": expr}}})
}

fn payload_match(protocol: &str, field: &str, op: &str, right: Value) -> Value {
    json!({"match": {"op": op, "left": {"payload": {"protocol": protocol, "field": field}}, "right": right}})
}

fn prefix(net: IpNet) -> Value {
    json!({"prefix": {"addr": net.network().to_string(), "len": net.prefix_len()}})
}

/// Table and chains (re)declared, `postrouting` flushed and refilled (as the
/// Go plugin does on every ADD, which repairs a damaged chain), the
/// attachment's old rules deleted, then one rule per address.
fn masq_setup_commands(existing: &[ListedRule], att: &Attachment<'_>, ips: &[IpNet]) -> Vec<Value> {
    let instance = masq_instance_hash(att.network, att.container_id, att.ifname);
    let comment = masq_comment(att.network, att.container_id, att.ifname);
    let (fam, table) = ("inet", MASQ_TABLE);
    let mut cmds = vec![
        json!({"add": {"table": {"family": fam, "name": table, "comment": MASQ_TABLE_COMMENT}}}),
        json!({"add": {"chain": {"family": fam, "table": table, "name": MASQ_CHAIN, "comment": MASQ_CHAIN_COMMENT}}}),
    ];
    cmds.extend(delete_rules(&masq_rules_matching(existing, |(_, inst)| {
        inst == instance
    })));
    let post = json!({"family": fam, "table": table, "name": MASQ_POSTROUTING});
    let mut base = post.clone();
    base["type"] = json!("nat");
    base["hook"] = json!("postrouting");
    base["prio"] = json!(SRCNAT_PRIORITY);
    base["policy"] = json!("accept");
    cmds.push(json!({"add": {"chain": base}}));
    cmds.push(json!({"flush": {"chain": post}}));
    for (proto, addr, len) in [("ip", "224.0.0.0", 4), ("ip6", "ff00::", 8)] {
        let multicast = json!({"prefix": {"addr": addr, "len": len}});
        let expr = vec![
            payload_match(proto, "daddr", "==", multicast),
            json!({"return": null}),
        ];
        cmds.push(rule_nc(fam, table, MASQ_POSTROUTING, expr));
    }
    cmds.push(rule_nc(
        fam,
        table,
        MASQ_POSTROUTING,
        vec![json!({"goto": {"target": MASQ_CHAIN}})],
    ));
    let mut seen = HashSet::new();
    for ip in ips.iter().filter(|ip| seen.insert(**ip)) {
        let proto = if ip.addr().is_ipv4() { "ip" } else { "ip6" };
        cmds.push(rule(
            fam,
            table,
            MASQ_CHAIN,
            &comment,
            vec![
                payload_match(proto, "saddr", "==", json!(ip.addr().to_string())),
                payload_match(proto, "daddr", "!=", prefix(*ip)),
                json!({"masquerade": null}),
            ],
        ));
    }
    cmds
}

fn spoofchk_setup_commands(prerouting: &[ListedRule], check: &MacSpoofCheck<'_>) -> Vec<Value> {
    let (fam, table) = ("bridge", SPOOFCHK_TABLE);
    let comment = spoofchk_comment(check.container_id, check.ifname);
    let iface = spoofchk_iface_chain(check.container_id, check.ifname);
    let mac_chain = spoofchk_mac_chain(check.container_id, check.ifname);
    let mut cmds = vec![
        json!({"add": {"table": {"family": fam, "name": table}}}),
        json!({"add": {"chain": {
            "family": fam, "table": table, "name": SPOOFCHK_PREROUTING,
            "type": "filter", "hook": "prerouting", "prio": SPOOFCHK_PRIORITY, "policy": "accept"
        }}}),
    ];
    let stale: Vec<ListedRule> = prerouting
        .iter()
        .filter(|r| r.comment.as_deref() == Some(comment.as_str()))
        .cloned()
        .collect();
    cmds.extend(delete_rules(&stale));
    for chain in [&iface, &mac_chain] {
        let c = json!({"family": fam, "table": table, "name": chain});
        cmds.push(json!({"add": {"chain": c.clone()}}));
        cmds.push(json!({"flush": {"chain": c}}));
    }
    cmds.push(rule(
        fam,
        table,
        SPOOFCHK_PREROUTING,
        &comment,
        vec![
            json!({"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": check.host_veth}}),
            json!({"jump": {"target": iface}}),
        ],
    ));
    cmds.push(rule(
        fam,
        table,
        &iface,
        &comment,
        vec![json!({"jump": {"target": mac_chain}})],
    ));
    cmds.push(rule(
        fam,
        table,
        &mac_chain,
        &comment,
        vec![
            payload_match("ether", "saddr", "==", json!(check.mac.to_string())),
            json!({"return": null}),
        ],
    ));
    cmds.push(rule(
        fam,
        table,
        &mac_chain,
        &comment,
        vec![json!({"drop": null})],
    ));
    cmds
}

fn spoofchk_teardown_commands(
    listing: Option<&Value>,
    container_id: &str,
    ifname: &str,
) -> Vec<Value> {
    let comment = spoofchk_comment(container_id, ifname);
    let iface = spoofchk_iface_chain(container_id, ifname);
    let mac_chain = spoofchk_mac_chain(container_id, ifname);
    let jumps: Vec<ListedRule> = rules_of(listing)
        .into_iter()
        .filter(|r| r.chain == SPOOFCHK_PREROUTING)
        .filter(|r| {
            r.comment.as_deref() == Some(comment.as_str())
                || r.jump.as_deref() == Some(iface.as_str())
        })
        .collect();
    let mut cmds = delete_rules(&jumps);
    let chains = chains_of(listing);
    // Flush both before deleting either: the iface chain's jump holds a
    // reference on the mac chain, and a referenced chain cannot be deleted.
    let present: Vec<&String> = [&iface, &mac_chain]
        .into_iter()
        .filter(|c| chains.contains(*c))
        .collect();
    for verb in ["flush", "delete"] {
        for chain in &present {
            cmds.push(json!({verb: {"chain": {"family": "bridge", "table": SPOOFCHK_TABLE, "name": chain}}}));
        }
    }
    cmds
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(chain: &str, handle: u64, comment: Option<&str>, expr: Value) -> Value {
        let mut r = json!({"family": "inet", "table": MASQ_TABLE, "chain": chain, "handle": handle, "expr": expr});
        if let Some(c) = comment {
            r["comment"] = json!(c);
        }
        json!({"rule": r})
    }

    fn listing(items: Vec<Value>) -> Value {
        let mut all = vec![json!({"metainfo": {"json_schema_version": 1}})];
        all.extend(items);
        json!({ "nftables": all })
    }

    fn att<'a>(cid: &'a str) -> Attachment<'a> {
        Attachment {
            network: "cbr0",
            container_id: cid,
            ifname: "eth0",
        }
    }

    fn deleted_handles(cmds: &[Value]) -> Vec<u64> {
        cmds.iter()
            .filter_map(|c| c.pointer("/delete/rule/handle").and_then(Value::as_u64))
            .collect()
    }

    #[test]
    fn masq_setup_builds_go_compatible_rules_and_replaces_old_ones() {
        let old = listing(vec![
            listed(
                MASQ_CHAIN,
                5,
                Some(&masq_comment("cbr0", "c1", "eth0")),
                json!([]),
            ),
            listed(
                MASQ_CHAIN,
                6,
                Some(&masq_comment("cbr0", "c2", "eth0")),
                json!([]),
            ),
            listed(MASQ_CHAIN, 7, Some("something else"), json!([])),
        ]);
        let ips: Vec<IpNet> = vec![
            "10.244.1.5/24".parse().unwrap(),
            "fd00:1::5/64".parse().unwrap(),
        ];
        let cmds = masq_setup_commands(&rules_of(Some(&old)), &att("c1"), &ips);
        assert_eq!(deleted_handles(&cmds), vec![5]);

        let text = serde_json::to_string(&cmds).unwrap();
        assert!(text.contains(r#""hook":"postrouting""#) && text.contains(r#""prio":100"#));
        let flush = cmds.iter().position(|c| c.get("flush").is_some()).unwrap();
        let goto = cmds
            .iter()
            .position(|c| c.pointer("/add/rule/expr/0/goto/target") == Some(&json!(MASQ_CHAIN)))
            .unwrap();
        assert!(flush < goto);

        let masq: Vec<&Value> = cmds
            .iter()
            .filter(|c| c.pointer("/add/rule/chain") == Some(&json!(MASQ_CHAIN)))
            .collect();
        assert_eq!(masq.len(), 2);
        let v4 = masq[0].pointer("/add/rule").unwrap();
        assert_eq!(v4["comment"], json!(masq_comment("cbr0", "c1", "eth0")));
        assert_eq!(
            v4.pointer("/expr/0/match/right"),
            Some(&json!("10.244.1.5"))
        );
        assert_eq!(v4.pointer("/expr/1/match/op"), Some(&json!("!=")));
        assert_eq!(
            v4.pointer("/expr/1/match/right/prefix"),
            Some(&json!({"addr": "10.244.1.0", "len": 24}))
        );
        let v6 = masq[1].pointer("/add/rule").unwrap();
        assert_eq!(
            v6.pointer("/expr/0/match/left/payload/protocol"),
            Some(&json!("ip6"))
        );
        assert_eq!(
            v6.pointer("/expr/1/match/right/prefix"),
            Some(&json!({"addr": "fd00:1::", "len": 64}))
        );
    }

    #[test]
    fn masq_selection_for_teardown_and_gc() {
        let other_net = masq_comment("other", "c1", "eth0");
        let l = listing(vec![
            listed(
                MASQ_CHAIN,
                1,
                Some(&masq_comment("cbr0", "c1", "eth0")),
                json!([]),
            ),
            listed(
                MASQ_CHAIN,
                2,
                Some(&masq_comment("cbr0", "c1", "eth1")),
                json!([]),
            ),
            listed(
                MASQ_CHAIN,
                3,
                Some(&masq_comment("cbr0", "c2", "eth0")),
                json!([]),
            ),
            listed(MASQ_CHAIN, 4, Some(&other_net), json!([])),
            listed(MASQ_CHAIN, 9, None, json!([])),
        ]);
        let rules = rules_of(Some(&l));
        let inst = masq_instance_hash("cbr0", "c1", "eth0");
        let t: Vec<u64> = masq_rules_matching(&rules, |(_, i)| i == inst)
            .iter()
            .map(|r| r.handle)
            .collect();
        assert_eq!(t, vec![1]);
        let net = masq_network_hash("cbr0");
        let keep: HashSet<String> = [masq_instance_hash("cbr0", "c2", "eth0")].into();
        let gc: Vec<u64> = masq_rules_matching(&rules, |(n, i)| n == net && !keep.contains(i))
            .iter()
            .map(|r| r.handle)
            .collect();
        assert_eq!(gc, vec![1, 2]);
        assert!(rules_of(None).is_empty());
    }

    #[test]
    fn spoofchk_commands() {
        let check = MacSpoofCheck {
            container_id: "c1",
            ifname: "eth0",
            host_veth: "veth1234",
            mac: "02:00:00:00:00:01".parse().unwrap(),
        };
        let old = listing(vec![json!({"rule": {
            "family": "bridge", "table": "nat", "chain": "PREROUTING", "handle": 12,
            "comment": "macspoofchk-c1-eth0", "expr": [{"jump": {"target": "cni-br-iface-c1-eth0"}}]
        }})]);
        let cmds = spoofchk_setup_commands(&rules_of(Some(&old)), &check);
        assert_eq!(deleted_handles(&cmds), vec![12]);
        let text = serde_json::to_string(&cmds).unwrap();
        assert!(text.contains(r#""prio":-300"#) && text.contains(r#""hook":"prerouting""#));
        assert!(
            text.contains(r#""right":"veth1234""#)
                && text.contains(r#""right":"02:00:00:00:00:01""#)
        );
        assert!(text.contains(r#"{"drop":null}"#));
        let comments = cmds
            .iter()
            .filter(|c| c.pointer("/add/rule/comment") == Some(&json!("macspoofchk-c1-eth0")))
            .count();
        assert_eq!(comments, 4);

        let mut table = old.clone();
        if let Some(items) = table["nftables"].as_array_mut() {
            for name in [
                "PREROUTING",
                "cni-br-iface-c1-eth0",
                "cni-br-iface-c1-eth0-mac",
            ] {
                items.push(json!({"chain": {"family": "bridge", "table": "nat", "name": name}}));
            }
        }
        let cmds = spoofchk_teardown_commands(Some(&table), "c1", "eth0");
        let verbs: Vec<String> = cmds
            .iter()
            .map(|c| {
                c.as_object()
                    .and_then(|o| o.keys().next().cloned())
                    .unwrap_or_default()
            })
            .collect();
        assert_eq!(verbs, ["delete", "flush", "flush", "delete", "delete"]);
        assert!(spoofchk_teardown_commands(None, "c1", "eth0").is_empty());
    }

    #[test]
    fn locating_nft_falls_back_to_sbin() {
        let fw = NftFirewall::with_program("/x/nft");
        assert_eq!(fw.program(), Path::new("/x/nft"));
        let found = NftFirewall::new();
        assert!(found.program().ends_with("nft"));
    }

    #[test]
    fn missing_binary_is_a_spawn_error() {
        let fw = NftFirewall::with_program("/nonexistent/nft");
        let err = fw.teardown_mac_spoof_check("c", "eth0").unwrap_err();
        assert!(matches!(err, Error::Spawn { .. }), "{err}");
        assert!(err.to_string().contains("/nonexistent/nft"), "{err}");
    }
}
