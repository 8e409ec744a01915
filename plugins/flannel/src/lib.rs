//! The flannel CNI meta-plugin, a drop-in for flannel-io/cni-plugin: reads the subnet
//! lease flanneld wrote to `subnet.env`, renders a delegate config (bridge + host-local by
//! default), saves it under `dataDir/<containerID>` and drives the delegate with it.
//!
//! Compatible on disk with the Go plugin in both directions: the same saved-file name and
//! bytes (compact JSON, sorted keys), so either binary can DEL pods the other added.
//! Deliberately different where Go loses IPs or hides trouble (see each verb).

pub mod delegate_conf;
pub mod error;
pub mod fs;
pub mod gojson;
pub mod netconf;
pub mod subnet_env;

use cni::env::{Command, Env, EnvMap};
use cni::{CniError, CniResult, Plugin, Request};
use delegate_conf::DelegateConf;
use error::FlannelError;
use fs::{Fs, HostFs};
use netconf::{FlannelConf, Locations};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;

pub use error::FlannelError as Error;

/// The plugin as the binary runs it: real filesystem, delegation through the request.
#[derive(Debug, Clone, Copy, Default)]
pub struct FlannelPlugin;

/// The plugin over any filesystem (tests put an in-memory one here).
pub struct Flannel<'a> {
    pub fs: &'a dyn Fs,
}

/// CNI_IFNAME of the DEL that GC sends for a stale saved config. The file is keyed by
/// container ID only (as in Go) and records no interface name, and a container with any
/// valid attachment is not stale, so the valid list cannot name it either; kubelet always
/// attaches pods as eth0. A reservation under another name is still released by the
/// delegate GC that follows, since it is not in the valid list.
pub const GC_DEFAULT_IFNAME: &str = "eth0";

impl Plugin for FlannelPlugin {
    fn name(&self) -> &'static str {
        "flannel"
    }
    fn add(&self, req: &Request) -> Result<CniResult, CniError> {
        Flannel { fs: &HostFs }.add(req)
    }
    fn del(&self, req: &Request) -> Result<(), CniError> {
        Flannel { fs: &HostFs }.del(req)
    }
    fn check(&self, req: &Request) -> Result<(), CniError> {
        Flannel { fs: &HostFs }.check(req)
    }
    fn status(&self, req: &Request) -> Result<(), CniError> {
        Flannel { fs: &HostFs }.status(req)
    }
    fn gc(&self, req: &Request) -> Result<(), CniError> {
        Flannel { fs: &HostFs }.gc(req)
    }
}

impl Plugin for Flannel<'_> {
    fn name(&self) -> &'static str {
        "flannel"
    }

    /// subnet.env -> delegate config -> saved -> delegate ADD. If the delegate fails, it
    /// gets a DEL with the same bytes and the saved file goes (plugins#426: Go left both
    /// the partial allocation and the file behind).
    fn add(&self, req: &Request) -> Result<CniResult, CniError> {
        let conf = FlannelConf::from_netconf(req.conf)?;
        let env = subnet_env::load(self.fs, &conf.locations.subnet_file)
            .map_err(FlannelError::SubnetEnv)?;
        let delegate = delegate_conf::build(&conf, &env)?;
        // A delegate that cannot be found is refused before anything is saved: the saved
        // config could never be replayed to it either.
        req.delegator.preflight(&delegate.plugin_type, req.env)?;
        let bytes = delegate.to_bytes();
        let cid = &req.env.container_id;
        let dir = &conf.locations.data_dir;
        log(format_args!(
            "delegate config for container {cid}: {}",
            String::from_utf8_lossy(&bytes)
        ));
        self.fs
            .save(dir, cid, &bytes)
            .map_err(|source| FlannelError::Store {
                op: "write",
                path: dir.join(cid),
                source,
            })?;
        // The file is in place before the delegate runs, so a kill mid-delegation leaves
        // the bytes for the runtime's DEL. Making it durable (for a link to the shared copy
        // one directory write, 0.1-0.4 ms here) runs beside the delegate when a CPU is
        // free, after it otherwise; success waits for both.
        let (synced, added) = kernel::sched::run_beside_io(
            || self.fs.sync(dir, cid, &bytes),
            || {
                cni::delegate::delegate_add(
                    req.delegator,
                    &delegate.plugin_type,
                    &bytes,
                    req.env,
                    &req.conf.cni_version,
                )
            },
        );
        let err = match (added, synced) {
            (Ok(result), Ok(())) => return Ok(result),
            (Err(e), _) => e,
            // Reporting success now could leave an empty config after a power cut, and a
            // pod that can never be deleted; undo the ADD instead.
            (Ok(_), Err(source)) => FlannelError::Store {
                op: "sync",
                path: dir.join(cid),
                source,
            }
            .into(),
        };
        // Also reached when the delegate succeeded but printed a result we cannot read:
        // it may hold an address either way.
        match cni::delegate::delegate_simple(
            req.delegator,
            &delegate.plugin_type,
            Command::Del,
            &bytes,
            req.env,
        ) {
            Ok(()) => self.remove_saved(dir, cid),
            // The saved file stays so the DEL the runtime sends after a failed ADD can
            // retry the cleanup with the same bytes.
            Err(del_err) => log(format_args!(
                "ADD of container {cid} failed and the cleanup DEL failed too ({del_err}); \
                 keeping {} for the runtime's DEL",
                dir.join(cid).display()
            )),
        }
        Err(err)
    }

    /// Replays the saved bytes to the delegate; subnet.env is not needed. The file goes
    /// only after the delegate's DEL succeeded (Go since 6f13a99 deletes it regardless,
    /// so a retried DEL finds nothing and the IP leaks: pain #11, pitfall P14).
    fn del(&self, req: &Request) -> Result<(), CniError> {
        let loc = Locations::from_netconf(req.conf)?;
        let cid = &req.env.container_id;
        let dir = &loc.data_dir;
        let path = dir.join(cid);
        let saved = match self.fs.load(dir, cid) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => {
                log(format_args!(
                    "DEL of container {cid}: no saved delegate config at {}; nothing to \
                     release (already deleted, or ADD never got that far)",
                    path.display()
                ));
                // An ADD killed mid-save leaves only its temp file; this clears it.
                let _ = self.fs.remove(dir, cid);
                return Ok(());
            }
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                self.del_damaged(req, dir, &e.to_string());
                return Ok(());
            }
            Err(source) => {
                return Err(FlannelError::Store {
                    op: "read",
                    path,
                    source,
                }
                .into())
            }
        };
        let plugin_type = match parse_saved(&saved) {
            Ok(s) => s.plugin_type,
            Err(why) => {
                self.del_damaged(req, dir, &why);
                return Ok(());
            }
        };
        cni::delegate::delegate_simple(req.delegator, &plugin_type, Command::Del, &saved, req.env)?;
        self.remove_saved(dir, cid);
        Ok(())
    }

    /// The saved config with the runtime's `prevResult`, sent to the delegate's CHECK (Go
    /// answers success without looking).
    fn check(&self, req: &Request) -> Result<(), CniError> {
        let loc = Locations::from_netconf(req.conf)?;
        let cid = &req.env.container_id;
        let path = loc.data_dir.join(cid);
        let saved = match self.fs.load(&loc.data_dir, cid) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => {
                return Err(FlannelError::NotAdded {
                    container_id: cid.clone(),
                    path,
                }
                .into())
            }
            Err(source) => {
                return Err(FlannelError::Store {
                    op: "read",
                    path,
                    source,
                }
                .into())
            }
        };
        let mut obj = match serde_json::from_slice::<Value>(&saved) {
            Ok(Value::Object(m)) => m,
            _ => {
                return Err(FlannelError::Damaged {
                    path,
                    reason: "not a JSON object".into(),
                }
                .into())
            }
        };
        let plugin_type = match obj.get("type") {
            Some(Value::String(t)) if !t.is_empty() => t.clone(),
            _ => {
                return Err(FlannelError::Damaged {
                    path,
                    reason: "no string \"type\"".into(),
                }
                .into())
            }
        };
        // The runtime's current version: CHECK needs >= 0.4.0 (the runtime checked ours),
        // and prevResult is written in it, while the file may predate a config upgrade.
        if !req.conf.cni_version.is_empty() {
            obj.insert(
                "cniVersion".into(),
                Value::String(req.conf.cni_version.clone()),
            );
        }
        match req.conf.get("prevResult") {
            Some(prev) => obj.insert("prevResult".into(), prev.clone()),
            None => obj.remove("prevResult"),
        };
        let bytes = gojson::to_vec(&Value::Object(obj));
        cni::delegate::delegate_simple(req.delegator, &plugin_type, Command::Check, &bytes, req.env)
    }

    /// Code 50 while subnet.env is missing or unusable, so runtimes hold new pods instead
    /// of failing each one (pain #3); otherwise the delegate's STATUS.
    fn status(&self, req: &Request) -> Result<(), CniError> {
        let conf = FlannelConf::from_netconf(req.conf)?;
        let env = subnet_env::load(self.fs, &conf.locations.subnet_file)
            .map_err(FlannelError::NotReady)?;
        let delegate = delegate_conf::build(&conf, &env)?;
        cni::delegate::delegate_simple(
            req.delegator,
            &delegate.plugin_type,
            Command::Status,
            &delegate.to_bytes(),
            req.env,
        )
    }

    /// Saved configs of containers missing from the valid list get a delegate DEL with
    /// their own bytes (so the IP is released even if the subnet changed since) and are
    /// removed; then the delegate gets GC with a config rebuilt from subnet.env and the
    /// valid list. Errors are collected; every step runs.
    fn gc(&self, req: &Request) -> Result<(), CniError> {
        // A malformed list is refused before anything is touched: it must never read as
        // "nothing is valid".
        let valid = req.conf.valid_attachments()?;
        let loc = Locations::from_netconf(req.conf)?;
        // Saved configs are per container: one valid attachment keeps the file.
        let valid_ids: BTreeSet<&str> = valid.iter().map(|a| a.container_id.as_str()).collect();
        let mut errors: Vec<CniError> = Vec::new();
        // Damaged saved files and the delegate GC need a config rebuilt from subnet.env.
        let rebuilt = FlannelConf::from_netconf(req.conf).and_then(|conf| {
            let env = subnet_env::load(self.fs, &conf.locations.subnet_file)
                .map_err(FlannelError::SubnetEnv)?;
            delegate_conf::build(&conf, &env)
        });

        match self.fs.list(&loc.data_dir) {
            Ok(ids) => {
                for cid in ids.iter().filter(|id| !valid_ids.contains(id.as_str())) {
                    if let Err(e) = self.gc_one(req, &loc, cid, rebuilt.as_ref().ok()) {
                        errors.push(e);
                    }
                }
            }
            Err(source) => errors.push(
                FlannelError::Store {
                    op: "list",
                    path: loc.data_dir.clone(),
                    source,
                }
                .into(),
            ),
        }
        if let Err(source) = self.fs.sweep_shared(&loc.data_dir) {
            errors.push(
                FlannelError::Store {
                    op: "remove unused shared copies in",
                    path: loc.data_dir.clone(),
                    source,
                }
                .into(),
            );
        }

        match rebuilt {
            Ok(delegate) => {
                let mut conf = delegate.conf;
                for key in ["cni.dev/valid-attachments", "cni.dev/attachments"] {
                    if let Some(v) = req.conf.raw.get(key) {
                        conf.insert(key.into(), v.clone());
                    }
                }
                let bytes = gojson::to_vec(&Value::Object(conf));
                if let Err(e) = cni::delegate::delegate_simple(
                    req.delegator,
                    &delegate.plugin_type,
                    Command::Gc,
                    &bytes,
                    req.env,
                ) {
                    errors.push(e);
                }
            }
            Err(e) => errors.push(e.into()),
        }
        cni::error::join_errors(errors)
    }
}

impl Flannel<'_> {
    fn remove_saved(&self, dir: &Path, cid: &str) {
        // Not an error: the delegate is done, and a leftover file only means a later DEL
        // repeats an idempotent delegate DEL.
        if let Err(e) = self.fs.remove(dir, cid) {
            log(format_args!(
                "cannot remove saved delegate config {}: {e}",
                dir.join(cid).display()
            ));
        }
    }

    /// DEL with a saved file we cannot use (empty after a crash, truncated, a planted
    /// symlink). Go logs and succeeds, keeping the file and leaking the IP (pain #10).
    /// We rebuild the delegate config from the current flannel config and subnet.env and
    /// DEL with that: host-local releases by (containerID, ifname) whatever the ranges.
    /// If that is impossible or fails, the file stays and DEL still succeeds: retrying
    /// would not repair the file, and failing would block the pod's deletion.
    fn del_damaged(&self, req: &Request, dir: &Path, why: &str) {
        let cid = &req.env.container_id;
        let path = dir.join(cid);
        log(format_args!(
            "DEL of container {cid}: saved delegate config {} is damaged ({why})",
            path.display()
        ));
        let rebuilt = FlannelConf::from_netconf(req.conf).and_then(|conf| {
            let env = subnet_env::load(self.fs, &conf.locations.subnet_file)
                .map_err(FlannelError::SubnetEnv)?;
            delegate_conf::build(&conf, &env)
        });
        let delegate = match rebuilt {
            Ok(d) => d,
            Err(e) => {
                log(format_args!(
                    "cannot rebuild the delegate config ({e}); keeping {} and reporting \
                     success; its address is released when the file is fixed or removed \
                     by hand",
                    path.display()
                ));
                return;
            }
        };
        match cni::delegate::delegate_simple(
            req.delegator,
            &delegate.plugin_type,
            Command::Del,
            &delegate.to_bytes(),
            req.env,
        ) {
            Ok(()) => {
                log(format_args!(
                    "released container {cid} with a delegate config rebuilt from subnet.env; \
                     removing {}",
                    path.display()
                ));
                self.remove_saved(dir, cid);
            }
            Err(e) => log(format_args!(
                "DEL with the rebuilt delegate config failed ({e}); keeping {}",
                path.display()
            )),
        }
    }

    /// One stale saved config during GC.
    fn gc_one(
        &self,
        req: &Request,
        loc: &Locations,
        cid: &str,
        rebuilt: Option<&DelegateConf>,
    ) -> Result<(), CniError> {
        let dir = &loc.data_dir;
        let path = dir.join(cid);
        let env = stale_env(req.env, cid)?;
        let saved = match self.fs.load(dir, cid) {
            Ok(Some(bytes)) => Some(bytes),
            Ok(None) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => None,
            Err(source) => {
                return Err(FlannelError::Store {
                    op: "read",
                    path,
                    source,
                }
                .into())
            }
        };
        let (plugin_type, bytes) = match saved.as_deref().map(|b| (parse_saved(b), b)) {
            // dataDir is shared by every flannel network of the node; the valid list
            // speaks for ours only (cni#1086 family of GC accidents).
            Some((Ok(s), _)) if s.name.as_deref().is_some_and(|n| n != req.conf.name) => {
                log(format_args!(
                    "GC: {} belongs to network {:?}, not {:?}; leaving it alone",
                    path.display(),
                    s.name.unwrap_or_default(),
                    req.conf.name
                ));
                return Ok(());
            }
            Some((Ok(s), b)) => (s.plugin_type, b.to_vec()),
            _ => match rebuilt {
                Some(d) => (d.plugin_type.clone(), d.to_bytes()),
                None => {
                    log(format_args!(
                        "GC: saved delegate config {} is damaged and subnet.env is \
                         unusable; keeping it",
                        path.display()
                    ));
                    return Ok(());
                }
            },
        };
        log(format_args!(
            "GC: container {cid} is not among the valid attachments; releasing it \
             (ifname {})",
            GC_DEFAULT_IFNAME
        ));
        cni::delegate::delegate_simple(req.delegator, &plugin_type, Command::Del, &bytes, &env)
            .map_err(|e| e.context(format!("GC: DEL of stale container {cid}")))?;
        self.fs
            .remove(dir, cid)
            .map_err(|source| FlannelError::Store {
                op: "remove",
                path,
                source,
            })?;
        Ok(())
    }
}

/// The environment of a DEL for a stale container during GC: the runtime's environment
/// (CNI_PATH etc.) with the container's ID, no netns, no CNI_ARGS.
fn stale_env(env: &Env, cid: &str) -> Result<Env, CniError> {
    let mut vars: EnvMap = env.vars.clone();
    for (k, v) in [
        ("CNI_COMMAND", "DEL"),
        ("CNI_CONTAINERID", cid),
        ("CNI_IFNAME", GC_DEFAULT_IFNAME),
        ("CNI_NETNS", ""),
        ("CNI_ARGS", ""),
    ] {
        vars.insert(k.into(), v.into());
    }
    Env::from_map(vars)
}

/// What we read of a saved config: its `type` (all the Go plugin reads of it) and the
/// network `name` it was rendered for.
struct Saved {
    plugin_type: String,
    name: Option<String>,
}

fn parse_saved(saved: &[u8]) -> Result<Saved, String> {
    match serde_json::from_slice::<Value>(saved) {
        Ok(Value::Object(m)) => match m.get("type") {
            Some(Value::String(t)) if !t.is_empty() => Ok(Saved {
                plugin_type: t.clone(),
                name: m.get("name").and_then(Value::as_str).map(str::to_owned),
            }),
            _ => Err("it has no string \"type\"".into()),
        },
        Ok(_) => Err("it is not a JSON object".into()),
        Err(e) if saved.is_empty() => Err(format!("it is empty ({e})")),
        Err(e) => Err(format!("it is not valid JSON: {e}")),
    }
}

/// One line on stderr, in one write: stderr is unbuffered, and `eprintln!` of a formatted
/// line costs a write per piece (six for the delegate config line).
fn log(args: std::fmt::Arguments) {
    use std::io::Write;
    let line = format!("flannel: {args}\n");
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

#[cfg(test)]
mod tests;
