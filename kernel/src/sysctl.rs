//! Kernel parameters under /proc/sys.
//!
//! **Namespace rule:** /proc/sys/net resolves against the network namespace
//! of the *calling thread*, not of the process. To change a pod's settings
//! (`accept_dad`, `arp_notify`, `disable_ipv6`, ...) call these from inside
//! [`crate::run_in_netns`]; called elsewhere they act on the caller's
//! namespace. (/sys/class/net, by contrast, follows whoever mounted sysfs, so
//! interface state is read over netlink, never from /sys.)

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::netlink::Family;

/// Longest interface name the kernel accepts (IFNAMSIZ - 1).
pub const IFNAME_MAX: usize = 15;

/// Checks an interface name the way the kernel's `dev_valid_name` does, so
/// that a name can be used safely as a path component.
pub fn validate_ifname(name: &str) -> Result<()> {
    let bad = |reason: &str| Err(Error::invalid("interface name", name, reason));
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > IFNAME_MAX {
        return bad("longer than 15 bytes");
    }
    if name == "." || name == ".." {
        return bad("reserved name");
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c == '\0' || c.is_whitespace())
    {
        return bad("contains '/', ':', NUL or whitespace");
    }
    Ok(())
}

/// A validated sysctl name, as a path relative to /proc/sys
/// (`net/ipv4/ip_forward`). Dotted names are not accepted because interface
/// names may themselves contain dots (`cni0.100`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SysctlKey(String);

impl SysctlKey {
    /// Validates a slash-separated key: relative, with no empty, `.` or `..`
    /// component, so it cannot leave /proc/sys.
    pub fn new(key: &str) -> Result<Self> {
        if key
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == ".." || c.contains('\0'))
        {
            return Err(Error::invalid(
                "sysctl key",
                key,
                "must be a relative path like net/ipv4/ip_forward without empty, '.' or '..' parts",
            ));
        }
        Ok(SysctlKey(key.to_owned()))
    }

    /// `net/ipv{4,6}/conf/<ifname>/<leaf>`, with the interface name
    /// validated. `ifname` may also be `all`, `default` or `lo`.
    pub fn interface(family: Family, ifname: &str, leaf: &str) -> Result<Self> {
        validate_ifname(ifname)?;
        let key = Self::new(leaf)?;
        if key.0.contains('/') {
            return Err(Error::invalid("sysctl leaf", leaf, "must be a single name"));
        }
        Ok(SysctlKey(format!(
            "net/{}/conf/{ifname}/{leaf}",
            ipv(family)
        )))
    }

    /// The global forwarding switch for a family: `net/ipv4/ip_forward` or
    /// `net/ipv6/conf/all/forwarding`, the two the bridge plugin turns on.
    pub fn forwarding(family: Family) -> Self {
        SysctlKey(match family {
            Family::V4 => "net/ipv4/ip_forward".to_owned(),
            Family::V6 => "net/ipv6/conf/all/forwarding".to_owned(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn ipv(family: Family) -> &'static str {
    match family {
        Family::V4 => "ipv4",
        Family::V6 => "ipv6",
    }
}

impl fmt::Display for SysctlKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Access to kernel parameters. See the module docs for the namespace rule.
pub trait Sysctl {
    /// The current value, without the trailing newline.
    fn read(&self, key: &SysctlKey) -> Result<String>;
    fn write(&self, key: &SysctlKey, value: &str) -> Result<()>;

    /// Writes `value` only if the current value differs, and says whether it
    /// wrote. Rewriting some keys has side effects (writing ip_forward resets
    /// every interface's forwarding flag), hence the reference plugin's
    /// "only when not already 1".
    fn ensure(&self, key: &SysctlKey, value: &str) -> Result<bool> {
        if self.read(key)? == value {
            return Ok(false);
        }
        self.write(key, value)?;
        Ok(true)
    }
}

/// [`Sysctl`] on the real /proc/sys (or another root, for tests).
#[derive(Debug, Clone)]
pub struct ProcSysctl {
    root: PathBuf,
}

impl Default for ProcSysctl {
    fn default() -> Self {
        ProcSysctl {
            root: PathBuf::from("/proc/sys"),
        }
    }
}

impl ProcSysctl {
    /// Uses `root` in place of /proc/sys.
    pub fn with_root(root: impl Into<PathBuf>) -> Self {
        ProcSysctl { root: root.into() }
    }

    fn path(&self, key: &SysctlKey) -> PathBuf {
        self.root.join(&key.0)
    }
}

impl Sysctl for ProcSysctl {
    fn read(&self, key: &SysctlKey) -> Result<String> {
        let text = fs::read_to_string(self.path(key)).map_err(|source| Error::Sysctl {
            op: "read",
            key: key.0.clone(),
            source,
        })?;
        Ok(text.trim_end_matches('\n').to_owned())
    }

    fn write(&self, key: &SysctlKey, value: &str) -> Result<()> {
        let err = |source| Error::Sysctl {
            op: "write",
            key: format!("{} = {value}", key.0),
            source,
        };
        // No O_CREAT: a missing key (e.g. an interface that is gone) must fail
        // instead of creating a file under a test root. O_TRUNC is what a
        // shell redirect does; procfs ignores it.
        let mut file = OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(self.path(key))
            .map_err(err)?;
        // procfs handlers consume a value in one write call.
        file.write_all(value.as_bytes()).map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_validation() {
        assert_eq!(
            SysctlKey::new("net/ipv4/ip_forward").unwrap().as_str(),
            "net/ipv4/ip_forward"
        );
        for bad in [
            "",
            "/etc/passwd",
            "net/../../etc",
            "net//x",
            "net/./x",
            "net/ipv4/",
            "a\0b",
        ] {
            assert!(SysctlKey::new(bad).is_err(), "{bad:?}");
        }
        let k = SysctlKey::interface(Family::V6, "cni0.100", "accept_ra").unwrap();
        assert_eq!(k.to_string(), "net/ipv6/conf/cni0.100/accept_ra");
        for bad in ["", ".", "..", "a/b", "eth 0", "eth:0", "abcdefghijklmnop"] {
            assert!(
                SysctlKey::interface(Family::V4, bad, "arp_notify").is_err(),
                "{bad:?}"
            );
        }
        assert!(SysctlKey::interface(Family::V4, "eth0", "../x").is_err());
        assert!(SysctlKey::interface(Family::V4, "eth0", "a/b").is_err());
        assert_eq!(
            SysctlKey::forwarding(Family::V6).as_str(),
            "net/ipv6/conf/all/forwarding"
        );
    }

    #[test]
    fn ensure_writes_only_when_different() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("net/ipv4")).unwrap();
        fs::write(dir.path().join("net/ipv4/ip_forward"), "0\n").unwrap();
        let sysctl = ProcSysctl::with_root(dir.path());
        let key = SysctlKey::forwarding(Family::V4);
        assert_eq!(sysctl.read(&key).unwrap(), "0");
        assert!(sysctl.ensure(&key, "1").unwrap());
        assert_eq!(sysctl.read(&key).unwrap(), "1");
        assert!(!sysctl.ensure(&key, "1").unwrap());
        assert_eq!(
            fs::read_to_string(dir.path().join("net/ipv4/ip_forward")).unwrap(),
            "1"
        );

        let missing = SysctlKey::interface(Family::V4, "gone0", "arp_notify").unwrap();
        let err = sysctl.write(&missing, "1").unwrap_err();
        assert!(err.is_not_found(), "{err}");
        assert!(
            err.to_string()
                .contains("net/ipv4/conf/gone0/arp_notify = 1"),
            "{err}"
        );
        assert!(!dir.path().join("net/ipv4/conf").exists());
    }

    #[test]
    fn ensure_skips_the_write_for_an_equal_value() {
        struct Counting(std::cell::Cell<u32>);
        impl Sysctl for Counting {
            fn read(&self, _: &SysctlKey) -> Result<String> {
                Ok("1".into())
            }
            fn write(&self, _: &SysctlKey, _: &str) -> Result<()> {
                self.0.set(self.0.get() + 1);
                Ok(())
            }
        }
        let c = Counting(Default::default());
        let key = SysctlKey::forwarding(Family::V4);
        assert!(!c.ensure(&key, "1").unwrap());
        assert_eq!(c.0.get(), 0);
        assert!(c.ensure(&key, "0").unwrap());
        assert_eq!(c.0.get(), 1);
    }
}
