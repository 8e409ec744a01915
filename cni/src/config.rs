//! The network configuration a plugin receives on stdin: the keys every plugin shares,
//! with the rest kept verbatim for the plugin's own typed config and for delegation.

use crate::env::is_valid_id;
use crate::error::{code, CniError};
use crate::result::{CniResult, Dns};
use crate::version::{self, Version};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// No real network config comes near this; the cap keeps a hostile stdin from costing
/// more than a few milliseconds of parsing.
pub const MAX_CONFIG_BYTES: usize = 4 << 20;

/// One attachment named in a GC request.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Attachment {
    pub container_id: String,
    pub ifname: String,
}

#[derive(Debug, Clone)]
pub struct NetConf {
    /// `cniVersion` as given (empty stays empty; it means 0.1.0).
    pub cni_version: String,
    pub version: Version,
    pub name: String,
    pub plugin_type: String,
    /// The whole object, unknown keys included.
    pub raw: Map<String, Value>,
}

impl NetConf {
    /// Parses and validates what every command but VERSION needs: a JSON object (code 6),
    /// a supported `cniVersion` (code 1) and a valid `name` (code 7).
    pub fn parse(stdin: &[u8]) -> Result<NetConf, CniError> {
        if stdin.len() > MAX_CONFIG_BYTES {
            return Err(CniError::invalid_config(format!(
                "network config is {} bytes, more than the {} bytes allowed",
                stdin.len(),
                MAX_CONFIG_BYTES
            )));
        }
        let value: Value = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(
                code::DECODE_FAILURE,
                format!("error parsing network config from stdin: {e}"),
            )
        })?;
        let Value::Object(raw) = value else {
            return Err(CniError::new(
                code::DECODE_FAILURE,
                "error parsing network config from stdin: not a JSON object",
            ));
        };
        let str_key = |k: &str| -> Result<String, CniError> {
            match raw.get(k) {
                None | Some(Value::Null) => Ok(String::new()),
                Some(Value::String(s)) => Ok(s.clone()),
                Some(other) => Err(CniError::new(
                    code::DECODE_FAILURE,
                    format!(
                        "network config key {k:?} must be a string, got {}",
                        kind(other)
                    ),
                )),
            }
        };
        let cni_version = str_key("cniVersion")?;
        let name = str_key("name")?;
        let plugin_type = str_key("type")?;
        let version = version::require_supported(&cni_version)?;
        if name.is_empty() {
            return Err(CniError::invalid_config("missing network name"));
        }
        if !is_valid_id(&name) || name.len() > crate::env::MAX_ID_LEN {
            return Err(
                CniError::invalid_config("invalid characters found in network name")
                    .with_details(format!("{:?}", name.chars().take(256).collect::<String>())),
            );
        }
        Ok(NetConf {
            cni_version,
            version,
            name,
            plugin_type,
            raw,
        })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.raw.get(key).filter(|v| !v.is_null())
    }

    /// Deserialises the plugin's own config; a type mismatch is an invalid config (code 7)
    /// naming the key.
    pub fn typed<T: DeserializeOwned>(&self) -> Result<T, CniError> {
        serde_json::from_value(Value::Object(self.raw.clone()))
            .map_err(|e| CniError::invalid_config(format!("invalid network config: {e}")))
    }

    /// `ipam.type`, when set and non-empty.
    pub fn ipam_type(&self) -> Result<Option<&str>, CniError> {
        match self.get("ipam") {
            None => Ok(None),
            Some(Value::Object(m)) => match m.get("type") {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(t)) if t.is_empty() => Ok(None),
                Some(Value::String(t)) => Ok(Some(t.as_str())),
                Some(other) => Err(CniError::invalid_config(format!(
                    "ipam.type must be a string, got {}",
                    kind(other)
                ))),
            },
            Some(other) => Err(CniError::invalid_config(format!(
                "ipam must be an object, got {}",
                kind(other)
            ))),
        }
    }

    /// `runtimeConfig` (absent means `{}`: libcni omits it when no capability matched).
    pub fn runtime_config(&self) -> Option<&Map<String, Value>> {
        self.get("runtimeConfig").and_then(Value::as_object)
    }

    /// The `dns` key of the config, when it sets anything.
    pub fn dns(&self) -> Result<Option<Dns>, CniError> {
        match self.get("dns") {
            None => Ok(None),
            Some(v) => {
                let d: Dns = serde_json::from_value(v.clone())
                    .map_err(|e| CniError::invalid_config(format!("invalid dns: {e}")))?;
                Ok(if d.is_empty() { None } else { Some(d) })
            }
        }
    }

    /// `prevResult` in the internal model. Its own `cniVersion` decides the format, the
    /// config's is only the fallback (cni#862). Absent or `{}` is `None`: DEL must work
    /// without one.
    pub fn prev_result(&self) -> Result<Option<CniResult>, CniError> {
        match self.get("prevResult") {
            None => Ok(None),
            Some(Value::Object(m)) if m.is_empty() => Ok(None),
            Some(v) => CniResult::from_value(v, &self.cni_version)
                .map(|(r, _)| Some(r))
                .map_err(|e| e.context("could not parse prevResult")),
        }
    }

    /// The attachments a GC must keep: `cni.dev/valid-attachments`, else the pre-1.1-final
    /// name `cni.dev/attachments` (cni#1101/#1103). Missing or `null` means none is valid,
    /// which is what libcni sends when the runtime gave no list. A malformed list is an
    /// error rather than "keep nothing", so a garbled request can never wipe every IP.
    pub fn valid_attachments(&self) -> Result<Vec<Attachment>, CniError> {
        let list = self
            .get("cni.dev/valid-attachments")
            .or_else(|| self.get("cni.dev/attachments"));
        let Some(list) = list else {
            return Ok(Vec::new());
        };
        let Value::Array(items) = list else {
            return Err(CniError::invalid_config(format!(
                "cni.dev/valid-attachments must be a list, got {}",
                kind(list)
            )));
        };
        items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let field = |k: &str| item.get(k).and_then(Value::as_str).map(str::to_owned);
                match (field("containerID"), field("ifname")) {
                    (Some(container_id), Some(ifname)) => Ok(Attachment {
                        container_id,
                        ifname,
                    }),
                    _ => Err(CniError::invalid_config(format!(
                        "cni.dev/valid-attachments[{i}] needs string containerID and ifname"
                    ))),
                }
            })
            .collect()
    }
}

/// A JSON value's type, for error messages that must not echo megabytes of input.
pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_errors_have_codes() {
        let cases: &[(&[u8], u32)] = &[
            (b"", 6),
            (b"{", 6),
            (b"[]", 6),
            (br#"{"cniVersion":1,"name":"n"}"#, 6),
            (br#"{"cniVersion":"0.5.0","name":"n"}"#, 1),
            (br#"{"cniVersion":"1.0.0"}"#, 7),
            (br#"{"cniVersion":"1.0.0","name":"../x"}"#, 7),
            (br#"{"cniVersion":"1.0.0","name":"a b"}"#, 7),
        ];
        for (input, want) in cases {
            let e = NetConf::parse(input).unwrap_err();
            assert_eq!(e.code, *want, "{}", String::from_utf8_lossy(input));
        }
        let big = vec![b' '; MAX_CONFIG_BYTES + 1];
        assert_eq!(NetConf::parse(&big).unwrap_err().code, 7);
    }

    #[test]
    fn unknown_keys_are_kept() {
        let c = NetConf::parse(br#"{"cniVersion":"1.1.0","name":"n","type":"bridge","x":{"y":1}}"#)
            .unwrap();
        assert_eq!(c.raw["x"]["y"], 1);
        assert_eq!(c.plugin_type, "bridge");
        assert_eq!(c.version, Version::V1_1_0);
    }

    #[test]
    fn attachments_fallback_and_validation() {
        let c = NetConf::parse(
            br#"{"cniVersion":"1.1.0","name":"n","cni.dev/attachments":[{"containerID":"a","ifname":"eth0"}]}"#,
        )
        .unwrap();
        assert_eq!(c.valid_attachments().unwrap().len(), 1);
        let c = NetConf::parse(
            br#"{"cniVersion":"1.1.0","name":"n","cni.dev/valid-attachments":null}"#,
        )
        .unwrap();
        assert!(c.valid_attachments().unwrap().is_empty());
        let c = NetConf::parse(
            br#"{"cniVersion":"1.1.0","name":"n","cni.dev/valid-attachments":[{"containerID":1}]}"#,
        )
        .unwrap();
        assert!(c.valid_attachments().is_err());
    }

    #[test]
    fn prev_result_uses_its_own_version() {
        let c = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"n","prevResult":{"cniVersion":"0.4.0","ips":[{"version":"4","address":"10.0.0.2/24"}]}}"#,
        )
        .unwrap();
        assert_eq!(c.prev_result().unwrap().unwrap().ips.len(), 1);
        let c = NetConf::parse(br#"{"cniVersion":"1.0.0","name":"n","prevResult":{}}"#).unwrap();
        assert!(c.prev_result().unwrap().is_none());
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            "[ -~]{0,12}".prop_map(Value::String),
            prop_oneof![
                Just("1.1.0"),
                Just("0.2.0"),
                Just("0.4.0"),
                Just("10.0.0.1/24"),
                Just("fd00::1/64")
            ]
            .prop_map(|s| Value::String(s.into())),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("cniVersion".to_string()),
                        Just("name".to_string()),
                        Just("ips".to_string()),
                        Just("address".to_string()),
                        Just("ip4".to_string()),
                        Just("interfaces".to_string()),
                        Just("prevResult".to_string()),
                        Just("cni.dev/valid-attachments".to_string()),
                        "[a-z]{1,6}",
                    ],
                    inner,
                    0..6
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// No input may panic a parser; whatever parses must print and re-parse identically.
        #[test]
        fn parsers_never_panic(v in json_value(), bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = NetConf::parse(&bytes);
            let text = serde_json::to_vec(&v).unwrap();
            if let Ok(c) = NetConf::parse(&text) {
                let _ = c.prev_result();
                let _ = c.valid_attachments();
                let _ = c.ipam_type();
                let _ = c.dns();
            }
            for ver in crate::version::SUPPORTED {
                if let Ok((r, _)) = CniResult::from_value(&v, ver) {
                    if let Ok(printed) = r.to_value("1.1.0") {
                        let (again, _) = CniResult::from_value(&printed, "1.1.0").unwrap();
                        prop_assert_eq!(again, r.clone());
                    }
                }
            }
        }
    }
}
