//! CHECK: what the Go plugin verifies, with its messages.

use crate::config::BridgeConf;
use crate::error::BridgeError;
use crate::open_pod;
use crate::system::System;
use cni::delegate::delegate_simple;
use cni::{CniError, CniResult, Command, Interface, Request};
use kernel::netlink::{Family, Link, LinkKind, LinkRef, Netlink, RouteFilter, MAIN_TABLE};

pub fn check(sys: &dyn System, req: &Request) -> Result<(), CniError> {
    check_inner(sys, req).map_err(CniError::from)
}

fn fail(msg: String) -> BridgeError {
    BridgeError::Check(msg)
}

fn check_inner(sys: &dyn System, req: &Request) -> Result<(), BridgeError> {
    let env = req.env;
    let conf = BridgeConf::parse(req.conf, &env.args)?;
    // An unreadable or missing prevResult is the runtime's input error: say so before
    // asking anyone else (Go asks IPAM first and reports whatever IPAM thinks).
    let result = req
        .conf
        .prev_result()
        .map_err(BridgeError::PrevResult)?
        .ok_or(BridgeError::PrevResultMissing)?;
    let mut pod = open_pod(sys, &env.netns)?;
    // Without IPAM there is nothing to ask (Go fails looking for a plugin named "").
    if let Some(ipam) = &conf.ipam_type {
        delegate_simple(req.delegator, ipam, Command::Check, req.stdin, env)
            .map_err(BridgeError::Ipam)?;
    }

    let empty = Interface::default();
    let br_entry = result
        .interfaces
        .iter()
        .find(|i| i.name == conf.bridge)
        .unwrap_or(&empty);
    let cont_entry = result
        .interfaces
        .iter()
        .find(|i| i.name == env.ifname && i.sandbox.as_deref() == Some(env.netns.as_str()))
        .unwrap_or(&empty);

    let mut host = sys
        .host_netlink()
        .map_err(|e| BridgeError::kernel("failed to open a netlink socket", e))?;
    let br = validate_bridge(&mut *host, br_entry, &conf)?;

    let sandbox = cont_entry.sandbox.as_deref().unwrap_or_default();
    if sandbox != env.netns {
        return Err(fail(format!(
            "Sandbox in prevResult {sandbox} doesn't match configured netns: {}",
            env.netns
        )));
    }
    let container = validate_container(pod.netlink(), cont_entry)?;

    let mut veth_found = false;
    for intf in &result.interfaces {
        if intf.name == br_entry.name || intf.name == cont_entry.name {
            continue;
        }
        if validate_host_veth(&mut *host, intf, &br, &container)? {
            veth_found = true;
            break;
        }
    }
    if !veth_found {
        return Err(fail(format!(
            "CNI veth created for bridge {} was not found",
            conf.bridge
        )));
    }
    validate_ips_and_routes(pod.netlink(), &env.ifname, container.index, &result)
}

/// The named interface, looked up where it should live; sandbox presence as expected.
fn lookup(nl: &mut dyn Netlink, intf: &Interface, in_sandbox: bool) -> Result<Link, BridgeError> {
    if intf.name.is_empty() {
        return Err(fail("Interface name missing ".into()));
    }
    let link = nl
        .link(LinkRef::Name(&intf.name))
        .map_err(|_| fail(format!("Interface name {} not found", intf.name)))?;
    let has_sandbox = intf.sandbox.as_deref().is_some_and(|s| !s.is_empty());
    if in_sandbox && !has_sandbox {
        return Err(fail(format!(
            "Interface {} is expected to be in a sandbox",
            intf.name
        )));
    }
    if !in_sandbox && has_sandbox {
        return Err(fail(format!(
            "Interface {} should not be in sandbox",
            intf.name
        )));
    }
    Ok(link)
}

fn mac_of(link: &Link) -> String {
    link.mac.map(|m| m.to_string()).unwrap_or_default()
}

fn validate_bridge(
    host: &mut dyn Netlink,
    entry: &Interface,
    conf: &BridgeConf,
) -> Result<Link, BridgeError> {
    let link = lookup(host, entry, false)?;
    if link.kind != Some(LinkKind::Bridge) {
        return Err(fail(format!(
            "Interface {} does not have link type of bridge",
            entry.name
        )));
    }
    if let Some(mac) = entry.mac.as_deref().filter(|m| !m.is_empty()) {
        if !mac.eq_ignore_ascii_case(&mac_of(&link)) {
            return Err(fail(format!(
                "Bridge interface {} Mac doesn't match: {mac}",
                entry.name
            )));
        }
    }
    if link.promisc != conf.promisc {
        return Err(fail(format!(
            "Bridge interface {} configured Promisc Mode {} doesn't match current state: {} ",
            entry.name, conf.promisc, link.promisc
        )));
    }
    Ok(link)
}

fn validate_container(pod: &mut dyn Netlink, entry: &Interface) -> Result<Link, BridgeError> {
    let link = lookup(pod, entry, true)?;
    if link.kind != Some(LinkKind::Veth) {
        return Err(fail(format!(
            "Error: Container interface {} not of type veth",
            link.name
        )));
    }
    if link.link_index.is_none() {
        return Err(fail(format!(
            "Unable to obtain veth peer index for veth {}",
            link.name
        )));
    }
    if let Some(mac) = entry.mac.as_deref().filter(|m| !m.is_empty()) {
        if !mac.eq_ignore_ascii_case(&mac_of(&link)) {
            return Err(fail(format!(
                "Interface {} Mac {mac} doesn't match container Mac: {}",
                entry.name,
                mac_of(&link)
            )));
        }
    }
    Ok(link)
}

/// Whether `intf` is the host end paired with the container interface and enslaved to
/// the bridge. Interfaces that are not veths are not ours and are skipped.
fn validate_host_veth(
    host: &mut dyn Netlink,
    intf: &Interface,
    br: &Link,
    container: &Link,
) -> Result<bool, BridgeError> {
    let link = lookup(host, intf, false)?;
    if link.kind != Some(LinkKind::Veth) {
        return Ok(false);
    }
    let Some(peer) = link.link_index else {
        return Err(fail(format!(
            "Unable to obtain veth peer index for veth {}",
            link.name
        )));
    };
    if container.link_index != Some(link.index) || peer != container.index {
        return Ok(false);
    }
    if link.master != Some(br.index) {
        return Ok(false);
    }
    if let Some(mac) = intf.mac.as_deref().filter(|m| !m.is_empty()) {
        if !mac.eq_ignore_ascii_case(&mac_of(&link)) {
            return Err(fail(format!(
                "Interface {} Mac doesn't match: {mac} not found",
                intf.name
            )));
        }
    }
    Ok(true)
}

/// Every address of the result is on the interface with a route to its subnet; every
/// route of the result is in the table (default routes matched by gateway).
fn validate_ips_and_routes(
    pod: &mut dyn Netlink,
    ifname: &str,
    index: u32,
    result: &CniResult,
) -> Result<(), BridgeError> {
    let addrs = pod
        .addresses(Some(index), None)
        .map_err(|_| fail("Cannot obtain List of IP Addresses".into()))?;
    let mut tables: [Option<Vec<kernel::netlink::Route>>; 2] = [None, None];
    let mut routes_of =
        |pod: &mut dyn Netlink, v4: bool| -> Result<Vec<kernel::netlink::Route>, BridgeError> {
            let slot = usize::from(!v4);
            if tables[slot].is_none() {
                let filter = RouteFilter {
                    family: Some(if v4 { Family::V4 } else { Family::V6 }),
                    table: Some(MAIN_TABLE),
                    oif: None,
                };
                let routes = pod.routes(&filter).map_err(|e| {
                    BridgeError::kernel("failed to list the pod's routes".to_string(), e)
                })?;
                tables[slot] = Some(routes);
            }
            Ok(tables[slot].clone().unwrap_or_default())
        };
    for ip in &result.ips {
        if !addrs.iter().any(|a| a.addr == ip.address) {
            return Err(fail(format!(
                "Failed to match addr {} on interface {ifname}",
                ip.address
            )));
        }
        let v4 = ip.address.addr().is_ipv4();
        let subnet = ip.address.trunc();
        if !routes_of(pod, v4)?.iter().any(|r| r.dst == subnet) {
            let gw = ip
                .gateway
                .map(|g| g.to_string())
                .unwrap_or_else(|| "<nil>".into());
            return Err(fail(format!(
                "Failed to find Gateway {gw} for interface {ifname}"
            )));
        }
    }
    for r in &result.routes {
        let v4 = r.dst.addr().is_ipv4();
        let dst = r.dst.trunc();
        let found = routes_of(pod, v4)?.iter().any(|k| {
            if dst.prefix_len() == 0 {
                k.dst.prefix_len() == 0 && (r.gw.is_none() || k.gateway == r.gw)
            } else {
                k.dst == dst
            }
        });
        if !found {
            let gw = r.gw.map(|g| format!(" via {g}")).unwrap_or_default();
            return Err(fail(format!(
                "Expected Route {}{gw} not found in routing table",
                r.dst
            )));
        }
    }
    Ok(())
}
