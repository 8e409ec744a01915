//! The `CNI_*` environment: which variables each command needs, and their validation.

use crate::error::{code, CniError};
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

impl Command {
    pub fn parse(s: &str) -> Result<Command, CniError> {
        Ok(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            "VERSION" => Command::Version,
            other => {
                return Err(CniError::invalid_env(format!(
                    "unknown CNI_COMMAND: {}",
                    other.escape_debug()
                )))
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Status => "STATUS",
            Command::Gc => "GC",
            Command::Version => "VERSION",
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The whole process environment as a runtime handed it to us. Delegates inherit all of
/// it (with only `CNI_COMMAND` changed), so kubelet's `CNI_ARGS IP=`/`MAC=` reach
/// host-local and bridge through flannel.
pub type EnvMap = BTreeMap<String, String>;

/// Validated per-invocation parameters.
#[derive(Debug, Clone)]
pub struct Env {
    pub command: Command,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub args: CniArgs,
    pub path: Vec<PathBuf>,
    pub vars: EnvMap,
}

impl Env {
    /// Reads and validates the variables `command` needs. An empty variable counts as
    /// unset: libcni always exports all six, empty where they do not apply.
    pub fn from_map(vars: EnvMap) -> Result<Env, CniError> {
        let get = |k: &str| vars.get(k).map(String::as_str).unwrap_or("");
        let command = match get("CNI_COMMAND") {
            "" => {
                return Err(CniError::invalid_env(
                    "required env variables [CNI_COMMAND] missing",
                ))
            }
            c => Command::parse(c)?,
        };
        let required: &[&str] = match command {
            Command::Add | Command::Check => {
                &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"]
            }
            Command::Del => &["CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"],
            Command::Gc => &["CNI_PATH"],
            // STATUS lists CNI_PATH as optional; only delegating plugins need it.
            Command::Status | Command::Version => &[],
        };
        let missing: Vec<&str> = required
            .iter()
            .copied()
            .filter(|k| get(k).is_empty())
            .collect();
        if !missing.is_empty() {
            return Err(CniError::invalid_env(format!(
                "required env variables [{}] missing",
                missing.join(",")
            )));
        }
        let per_container = matches!(command, Command::Add | Command::Del | Command::Check);
        let container_id = get("CNI_CONTAINERID").to_owned();
        let ifname = get("CNI_IFNAME").to_owned();
        if per_container {
            validate_container_id(&container_id)?;
            validate_ifname(&ifname)?;
        }
        let args = if per_container {
            CniArgs::parse(get("CNI_ARGS"))?
        } else {
            CniArgs::default()
        };
        let path = get("CNI_PATH")
            .split(':')
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .collect();
        Ok(Env {
            command,
            container_id,
            netns: if per_container {
                get("CNI_NETNS").to_owned()
            } else {
                String::new()
            },
            ifname,
            args,
            path,
            vars,
        })
    }
}

/// `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`, the rule libcni and skel apply to container IDs and
/// network names; it is also what keeps them safe as file names (no `/`, no `..`).
pub fn is_valid_id(s: &str) -> bool {
    let mut bytes = s.bytes();
    match bytes.next() {
        Some(b) if b.is_ascii_alphanumeric() => {}
        _ => return false,
    }
    bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
}

/// Longest container ID we accept: IDs become file names (flannel's saved config), and
/// Linux rejects names over 255 bytes; runtimes use 64 hex characters.
pub const MAX_ID_LEN: usize = 200;

pub fn validate_container_id(id: &str) -> Result<(), CniError> {
    if !is_valid_id(id) {
        return Err(CniError::invalid_env("invalid characters in containerID")
            .with_details(format!("{:?}", truncate(id))));
    }
    if id.len() > MAX_ID_LEN {
        return Err(CniError::invalid_env(format!(
            "containerID is {} bytes long, the limit is {MAX_ID_LEN}",
            id.len()
        )));
    }
    Ok(())
}

/// The kernel's IFNAMSIZ-1 limit plus the characters that break sysfs/procfs paths.
pub fn validate_ifname(name: &str) -> Result<(), CniError> {
    let why = if name.is_empty() {
        Some("interface name is empty")
    } else if name.len() > 15 {
        Some("interface name is too long (more than 15 bytes)")
    } else if name == "." || name == ".." {
        Some("interface name is . or ..")
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        Some("interface name contains / or : or whitespace")
    } else {
        None
    };
    match why {
        Some(w) => {
            Err(CniError::new(code::INVALID_ENV, w).with_details(format!("{:?}", truncate(name))))
        }
        None => Ok(()),
    }
}

fn truncate(s: &str) -> &str {
    let mut end = s.len().min(256);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// `CNI_ARGS` (`K=V;K=V`). Unknown keys are always kept and ignored by whoever does not
/// know them: kubelet sends `K8S_POD_*` to every plugin of a chain (cni#126, cni#560), so
/// failing on unknown keys the way Go's `LoadArgs` does without `IgnoreUnknown` only
/// breaks chains.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs {
    pairs: Vec<(String, String)>,
}

impl CniArgs {
    pub fn parse(s: &str) -> Result<CniArgs, CniError> {
        let mut pairs = Vec::new();
        for pair in s.split(';').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some((k, v)) if !k.is_empty() => pairs.push((k.to_owned(), v.to_owned())),
                _ => {
                    return Err(CniError::invalid_env(format!(
                        "ARGS: invalid pair {:?}",
                        truncate(pair)
                    )))
                }
            }
        }
        Ok(CniArgs { pairs })
    }

    /// The value of `key` (case-sensitive, as Go matches struct field names); the last
    /// occurrence wins.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn pairs(&self) -> &[(String, String)] {
        &self.pairs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(kv: &[(&str, &str)]) -> EnvMap {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn add_requires_everything() {
        let e = Env::from_map(map(&[("CNI_COMMAND", "ADD"), ("CNI_IFNAME", "eth0")])).unwrap_err();
        assert_eq!(e.code, 4);
        assert_eq!(
            e.msg,
            "required env variables [CNI_CONTAINERID,CNI_NETNS,CNI_PATH] missing"
        );
    }

    #[test]
    fn del_allows_empty_netns() {
        let env = Env::from_map(map(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", ""),
            ("CNI_PATH", "/opt/cni/bin::/usr/lib/cni"),
        ]))
        .unwrap();
        assert_eq!(env.netns, "");
        assert_eq!(env.path.len(), 2);
    }

    #[test]
    fn gc_and_status_need_no_container() {
        assert!(Env::from_map(map(&[("CNI_COMMAND", "GC"), ("CNI_PATH", "/x")])).is_ok());
        assert!(Env::from_map(map(&[("CNI_COMMAND", "STATUS")])).is_ok());
        assert_eq!(
            Env::from_map(map(&[("CNI_COMMAND", "GC")]))
                .unwrap_err()
                .code,
            4
        );
    }

    #[test]
    fn unknown_command() {
        let e = Env::from_map(map(&[("CNI_COMMAND", "FROB")])).unwrap_err();
        assert_eq!((e.code, e.msg.as_str()), (4, "unknown CNI_COMMAND: FROB"));
    }

    #[test]
    fn ids_and_ifnames() {
        for ok in ["a", "abc-DEF_1.2", "0"] {
            assert!(validate_container_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", ".a", "a/b", "../x", "a b", "a\0b", "é"] {
            assert!(validate_container_id(bad).is_err(), "{bad:?}");
        }
        assert!(validate_container_id(&"a".repeat(MAX_ID_LEN + 1)).is_err());
        for ok in ["eth0", "a", "123456789012345"] {
            assert!(validate_ifname(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a:b",
            "a b",
            "1234567890123456",
            "a\nb",
        ] {
            assert!(validate_ifname(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cni_args() {
        let a = CniArgs::parse("IgnoreUnknown=1;K8S_POD_NAME=p;IP=10.0.0.5;;X=a=b").unwrap();
        assert_eq!(a.get("IP"), Some("10.0.0.5"));
        assert_eq!(a.get("X"), Some("a=b"));
        assert_eq!(a.get("ip"), None);
        assert!(CniArgs::parse("novalue").is_err());
        assert!(CniArgs::parse("=v").is_err());
    }
}
