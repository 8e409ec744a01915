//! subnet.env: the file the flannel CNI plugin reads (`KEY=value` lines in
//! flanneld's order), written atomically; and reading back the previous subnet, which
//! the allocator prefers on restart.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ipnet::{Ipv4Net, Ipv6Net};

/// What goes into subnet.env.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetEnv {
    pub network: Option<Ipv4Net>,
    /// The leased subnet (base address); written as its first host address.
    pub subnet: Option<Ipv4Net>,
    pub ipv6_network: Option<Ipv6Net>,
    pub ipv6_subnet: Option<Ipv6Net>,
    pub mtu: u32,
    pub ipmasq: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SubnetEnvError {
    #[error("write subnet file {path:?}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// `10.5.52.0/24` → `10.5.52.1/24`: the CNI bridge uses it as the gateway.
fn first_host_v4(net: Ipv4Net) -> String {
    let base = u32::from(net.network());
    format!(
        "{}/{}",
        std::net::Ipv4Addr::from(base.wrapping_add(1)),
        net.prefix_len()
    )
}

fn first_host_v6(net: Ipv6Net) -> String {
    let base = u128::from(net.network());
    format!(
        "{}/{}",
        std::net::Ipv6Addr::from(base.wrapping_add(1)),
        net.prefix_len()
    )
}

impl SubnetEnv {
    /// The file text, exactly flanneld's keys and order.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Some(n) = self.network {
            out.push_str(&format!("FLANNEL_NETWORK={n}\n"));
        }
        if let Some(s) = self.subnet {
            out.push_str(&format!("FLANNEL_SUBNET={}\n", first_host_v4(s)));
        }
        if let Some(n) = self.ipv6_network {
            out.push_str(&format!("FLANNEL_IPV6_NETWORK={n}\n"));
        }
        if let Some(s) = self.ipv6_subnet {
            out.push_str(&format!("FLANNEL_IPV6_SUBNET={}\n", first_host_v6(s)));
        }
        out.push_str(&format!("FLANNEL_MTU={}\n", self.mtu));
        out.push_str(&format!("FLANNEL_IPMASQ={}\n", self.ipmasq));
        out
    }

    /// Writes the file atomically: a temp file in the same directory, fsynced, mode
    /// 0644 whatever the umask, then renamed over the old one, so the CNI plugin never
    /// reads a half-written file. The parent directory is created (0755) if needed.
    pub fn write(&self, path: &Path) -> Result<(), SubnetEnvError> {
        write_atomic(path, self.render().as_bytes(), 0o644)
    }
}

/// Atomic replace of `path` with `data` (see [`SubnetEnv::write`]).
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), SubnetEnvError> {
    let err = |source| SubnetEnvError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(err)?;
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(data)?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(err)
}

/// The subnet of an existing subnet.env (`FLANNEL_SUBNET`), used as a reuse hint.
/// Any problem (no file, garbage) just means "no hint".
pub fn previous_subnet(path: &Path) -> Option<Ipv4Net> {
    previous_value(path, "FLANNEL_SUBNET")?
        .parse::<Ipv4Net>()
        .ok()
        .map(|n| n.trunc())
}

/// The IPv6 subnet of an existing subnet.env (`FLANNEL_IPV6_SUBNET`), the IPv6
/// reuse hint.
pub fn previous_subnet_v6(path: &Path) -> Option<Ipv6Net> {
    previous_value(path, "FLANNEL_IPV6_SUBNET")?
        .parse::<Ipv6Net>()
        .ok()
        .map(|n| n.trunc())
}

fn previous_value(path: &Path, key: &str) -> Option<String> {
    let text = fs::read_to_string(path).ok()?;
    text.lines().find_map(|line| {
        let (k, v) = line.split_once('=')?;
        (k.trim() == key).then(|| v.trim().to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_flanneld_format() {
        let env = SubnetEnv {
            network: Some("10.5.0.0/16".parse().unwrap()),
            subnet: Some("10.5.52.0/24".parse().unwrap()),
            ipv6_network: None,
            ipv6_subnet: None,
            mtu: 1450,
            ipmasq: true,
        };
        assert_eq!(
            env.render(),
            "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.52.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
        );
        let dual = SubnetEnv {
            ipv6_network: Some("fd00:10::/56".parse().unwrap()),
            ipv6_subnet: Some("fd00:10:0:34::/64".parse().unwrap()),
            ipmasq: false,
            ..env
        };
        assert_eq!(
            dual.render(),
            "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.52.1/24\nFLANNEL_IPV6_NETWORK=fd00:10::/56\nFLANNEL_IPV6_SUBNET=fd00:10:0:34::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"
        );
    }

    #[test]
    fn atomic_write_mode_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/flannel/subnet.env");
        assert_eq!(previous_subnet(&path), None);
        let env = SubnetEnv {
            network: Some("10.5.0.0/16".parse().unwrap()),
            subnet: Some("10.5.52.0/24".parse().unwrap()),
            ipv6_network: None,
            ipv6_subnet: None,
            mtu: 1500,
            ipmasq: false,
        };
        env.write(&path).unwrap();
        env.write(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        let files: Vec<_> = fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(files.len(), 1, "no temp file left behind");
        assert_eq!(
            previous_subnet(&path),
            Some("10.5.52.0/24".parse().unwrap())
        );
        assert_eq!(previous_subnet_v6(&path), None);
        let dual = SubnetEnv {
            ipv6_network: Some("fd00:10::/56".parse().unwrap()),
            ipv6_subnet: Some("fd00:10:0:34::/64".parse().unwrap()),
            ..env
        };
        dual.write(&path).unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.52.1/24\nFLANNEL_IPV6_NETWORK=fd00:10::/56\nFLANNEL_IPV6_SUBNET=fd00:10:0:34::1/64\nFLANNEL_MTU=1500\nFLANNEL_IPMASQ=false\n"
        );
        assert_eq!(
            previous_subnet_v6(&path),
            Some("fd00:10:0:34::/64".parse().unwrap())
        );
        fs::write(
            &path,
            "garbage\nFLANNEL_SUBNET=nope\nFLANNEL_IPV6_SUBNET=10.0.0.1/24\n",
        )
        .unwrap();
        assert_eq!(previous_subnet(&path), None);
        assert_eq!(previous_subnet_v6(&path), None);
    }
}
