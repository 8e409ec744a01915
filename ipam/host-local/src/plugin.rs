//! The CNI face of host-local: turns a `cni::Request` into calls of the IPAM core and its
//! answers (or `IpamError`s, which carry their CNI code) into CNI results and errors.

use crate::{Attachment, IpamConfig, IpamError};
use cni::{CniError, CniResult, Plugin, Request};
use serde_json::Value;

/// The host-local plugin (`type: host-local`).
pub struct HostLocalPlugin;

impl From<IpamError> for CniError {
    fn from(e: IpamError) -> Self {
        CniError::new(e.code(), e.to_string())
    }
}

fn config(req: &Request) -> Result<IpamConfig, CniError> {
    let whole = Value::Object(req.conf.raw.clone());
    Ok(IpamConfig::parse(
        &whole,
        &req.conf.cni_version,
        req.env.args.get("IP"),
    )?)
}

impl Plugin for HostLocalPlugin {
    fn name(&self) -> &'static str {
        "host-local"
    }

    fn add(&self, req: &Request) -> Result<CniResult, CniError> {
        let cfg = config(req)?;
        let out = crate::add(&cfg, &req.env.container_id, &req.env.ifname)?;
        let routes = out
            .routes
            .iter()
            .map(|r| {
                serde_json::from_value::<cni::Route>(r.clone()).map_err(|e| {
                    CniError::invalid_config(format!("invalid ipam.routes entry {r}: {e}"))
                })
            })
            .collect::<Result<Vec<_>, _>>();
        let routes = match routes {
            Ok(r) => r,
            Err(e) => {
                // Nothing of this ADD may outlive its failure.
                let _ = crate::del(&cfg, &req.env.container_id, &req.env.ifname);
                return Err(e);
            }
        };
        Ok(CniResult {
            interfaces: Vec::new(),
            ips: out
                .ips
                .iter()
                .map(|ip| cni::IpConfig {
                    address: ip.address,
                    gateway: Some(ip.gateway),
                    interface: None,
                })
                .collect(),
            routes,
            dns: out
                .dns
                .map(|d| cni::Dns {
                    nameservers: d.nameservers,
                    domain: d.domain.unwrap_or_default(),
                    search: d.search,
                    options: d.options,
                })
                .unwrap_or_default(),
        })
    }

    fn del(&self, req: &Request) -> Result<(), CniError> {
        let cfg = config(req)?;
        crate::del(&cfg, &req.env.container_id, &req.env.ifname)?;
        Ok(())
    }

    fn check(&self, req: &Request) -> Result<(), CniError> {
        let cfg = config(req)?;
        crate::check(&cfg, &req.env.container_id, &req.env.ifname)?;
        Ok(())
    }

    fn status(&self, req: &Request) -> Result<(), CniError> {
        let cfg = config(req).map_err(|e| CniError::new(cni::code::NOT_AVAILABLE, e.msg))?;
        crate::status(&cfg)?;
        Ok(())
    }

    fn gc(&self, req: &Request) -> Result<(), CniError> {
        let cfg = config(req)?;
        let valid: Vec<Attachment> = req
            .conf
            .valid_attachments()?
            .into_iter()
            .map(|a| Attachment {
                container_id: a.container_id,
                ifname: a.ifname,
            })
            .collect();
        let released = crate::gc(&cfg, &valid)?;
        if !released.is_empty() {
            // Runtimes keep plugin stderr in their logs: every GC release is on record.
            let ips: Vec<String> = released.iter().map(ToString::to_string).collect();
            eprintln!(
                "host-local: GC of network {:?} released {} address(es) not held by a valid attachment: {}",
                cfg.name,
                ips.len(),
                ips.join(" ")
            );
        }
        Ok(())
    }
}
