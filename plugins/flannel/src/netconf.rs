//! The flannel network config (the `flannel` entry of a conflist), e.g. kube-flannel's:
//!
//! ```json
//! {"cniVersion":"0.3.1","name":"cbr0","type":"flannel",
//!  "delegate":{"hairpinMode":true,"isDefaultGateway":true}}
//! ```

use crate::error::FlannelError;
use cni::config::kind;
use cni::NetConf;
use serde_json::{Map, Value};
use std::path::PathBuf;

pub const DEFAULT_SUBNET_FILE: &str = "/run/flannel/subnet.env";
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/flannel";

/// Where flannel's files are. DEL, CHECK and the saved-config part of GC need only this,
/// so a config that is wrong elsewhere never blocks a teardown (user pain #13).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Locations {
    pub subnet_file: PathBuf,
    pub data_dir: PathBuf,
}

impl Locations {
    pub fn from_netconf(conf: &NetConf) -> Result<Locations, FlannelError> {
        Ok(Locations {
            subnet_file: path_key(conf, "subnetFile", DEFAULT_SUBNET_FILE)?,
            data_dir: path_key(conf, "dataDir", DEFAULT_DATA_DIR)?,
        })
    }
}

/// Everything ADD (and STATUS/GC, which rebuild the delegate config) needs.
#[derive(Debug, Clone)]
pub struct FlannelConf {
    pub name: String,
    /// As given; empty stays empty (then the delegate gets no `cniVersion`, as in Go).
    pub cni_version: String,
    pub locations: Locations,
    /// `delegate`, validated: no `name`, no `ipam`, `type` a string if present.
    pub delegate: Map<String, Value>,
    pub ipam: Option<Map<String, Value>>,
    pub runtime_config: Option<Map<String, Value>>,
    /// `logFile`/`logLevel` of the flannel config (the invocation log, see `cni::log`).
    pub log_keys: Map<String, Value>,
}

impl FlannelConf {
    pub fn from_netconf(conf: &NetConf) -> Result<FlannelConf, FlannelError> {
        let locations = Locations::from_netconf(conf)?;
        let delegate = object_key(conf, "delegate")?.unwrap_or_default();
        // Same checks, same order and same texts as the Go plugin.
        if delegate.get("type").is_some_and(|t| !t.is_string()) {
            return Err(FlannelError::DelegateTypeNotString);
        }
        if delegate.contains_key("name") {
            return Err(FlannelError::DelegateHasName);
        }
        if delegate.contains_key("ipam") {
            return Err(FlannelError::DelegateHasIpam);
        }
        Ok(FlannelConf {
            name: conf.name.clone(),
            cni_version: conf.cni_version.clone(),
            locations,
            delegate,
            ipam: object_key(conf, "ipam")?,
            runtime_config: object_key(conf, "runtimeConfig")?,
            log_keys: ["logFile", "logLevel"]
                .iter()
                .filter_map(|k| Some((k.to_string(), conf.get(k)?.clone())))
                .collect(),
        })
    }
}

/// A string key holding a path. Absent, `null` or `""` means the default: Go keeps its
/// default for `null` but would use `""` verbatim (and then write into the current
/// directory), which is never what anyone meant.
fn path_key(conf: &NetConf, key: &str, default: &str) -> Result<PathBuf, FlannelError> {
    match conf.raw.get(key) {
        None | Some(Value::Null) => Ok(PathBuf::from(default)),
        Some(Value::String(s)) if s.is_empty() => Ok(PathBuf::from(default)),
        Some(Value::String(s)) if s.contains('\0') => {
            Err(FlannelError::Config(format!("{key:?} contains a NUL byte")))
        }
        Some(Value::String(s)) => Ok(PathBuf::from(s)),
        Some(other) => Err(FlannelError::Config(format!(
            "{key:?} must be a string (a path), got {}",
            kind(other)
        ))),
    }
}

/// An object key; `null` counts as absent, as Go's decoder leaves the map nil.
fn object_key(conf: &NetConf, key: &str) -> Result<Option<Map<String, Value>>, FlannelError> {
    match conf.raw.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m.clone())),
        Some(other) => Err(FlannelError::Config(format!(
            "{key:?} must be an object, got {}",
            kind(other)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(s: &str) -> NetConf {
        NetConf::parse(s.as_bytes()).unwrap()
    }

    #[test]
    fn defaults() {
        let c = FlannelConf::from_netconf(&conf(
            r#"{"cniVersion":"0.3.1","name":"cbr0","type":"flannel"}"#,
        ))
        .unwrap();
        assert_eq!(
            c.locations.subnet_file,
            PathBuf::from("/run/flannel/subnet.env")
        );
        assert_eq!(c.locations.data_dir, PathBuf::from("/var/lib/cni/flannel"));
        assert!(c.delegate.is_empty() && c.ipam.is_none() && c.runtime_config.is_none());
        let c = FlannelConf::from_netconf(&conf(
            r#"{"name":"n","subnetFile":"","dataDir":null,"delegate":null}"#,
        ))
        .unwrap();
        assert_eq!(c.locations.subnet_file, PathBuf::from(DEFAULT_SUBNET_FILE));
        assert_eq!(c.locations.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
    }

    #[test]
    fn go_validation_texts() {
        let cases = [
            (
                r#"{"name":"n","delegate":{"name":"x"}}"#,
                "'delegate' dictionary must not have 'name' field, it'll be set by flannel",
            ),
            (
                r#"{"name":"n","delegate":{"ipam":{}}}"#,
                "'delegate' dictionary must not have 'ipam' field, it'll be set by flannel",
            ),
            (
                r#"{"name":"n","delegate":{"type":1}}"#,
                "'delegate' dictionary, if present, must have (string) 'type' field",
            ),
            (
                r#"{"name":"n","delegate":{"type":null}}"#,
                "'delegate' dictionary, if present, must have (string) 'type' field",
            ),
        ];
        for (input, want) in cases {
            let e = FlannelConf::from_netconf(&conf(input)).unwrap_err();
            assert_eq!(e.to_string(), want);
            assert_eq!(e.code(), 7);
        }
    }

    #[test]
    fn wrong_shapes_are_invalid_config() {
        for input in [
            r#"{"name":"n","delegate":[]}"#,
            r#"{"name":"n","ipam":"host-local"}"#,
            r#"{"name":"n","runtimeConfig":1}"#,
            r#"{"name":"n","subnetFile":5}"#,
            r#"{"name":"n","dataDir":{}}"#,
        ] {
            let e = FlannelConf::from_netconf(&conf(input)).unwrap_err();
            assert_eq!(e.code(), 7, "{input}");
            assert!(
                e.to_string()
                    .starts_with("failed to load flannel netconf file: failed to load netconf: "),
                "{e}"
            );
        }
        // Teardown only needs the locations: a bad delegate does not block it.
        let c = conf(r#"{"name":"n","delegate":{"name":"x"},"dataDir":"/d"}"#);
        assert_eq!(
            Locations::from_netconf(&c).unwrap().data_dir,
            PathBuf::from("/d")
        );
    }
}
