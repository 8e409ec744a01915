//! Validation of the names that come from the runtime and end up in file names or file contents.
//!
//! The rules are libcni skel's, so anything the Go plugin accepts we accept too. They also guarantee
//! that a name can never climb out of the data directory: no `/`, never `.` or `..`, and network
//! names and container IDs start with an alphanumeric character (so `.host-local` is ours alone).

use crate::error::IpamError;

const ID_RULE: &str = "must match ^[A-Za-z0-9][A-Za-z0-9_.\\-]*$";

/// Linux IFNAMSIZ (16) minus the terminating NUL.
const MAX_IFNAME_LEN: usize = 15;

fn matches_id_rule(s: &str) -> bool {
    let mut bytes = s.bytes();
    match bytes.next() {
        Some(b) if b.is_ascii_alphanumeric() => {}
        _ => return false,
    }
    bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Network names become the directory `<dataDir>/<name>`.
pub fn validate_network_name(name: &str) -> Result<(), IpamError> {
    if matches_id_rule(name) {
        Ok(())
    } else {
        Err(IpamError::InvalidNetworkName {
            name: name.to_owned(),
            reason: ID_RULE.to_owned(),
        })
    }
}

pub fn validate_container_id(id: &str) -> Result<(), IpamError> {
    if matches_id_rule(id) {
        Ok(())
    } else {
        Err(IpamError::InvalidContainerId {
            id: id.to_owned(),
            reason: ID_RULE.to_owned(),
        })
    }
}

pub fn validate_ifname(name: &str) -> Result<(), IpamError> {
    let reason = if name.is_empty() {
        "interface name is empty"
    } else if name.len() > MAX_IFNAME_LEN {
        "interface name is too long (max 15 bytes)"
    } else if name == "." || name == ".." {
        "interface name is . or .."
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c == '\0')
    {
        "interface name contains / or : or whitespace characters"
    } else {
        return Ok(());
    };
    Err(IpamError::InvalidIfname {
        name: name.to_owned(),
        reason: reason.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        for ok in ["a", "0", "abc-DEF_1.2", "f00d"] {
            assert!(validate_container_id(ok).is_ok(), "{ok}");
            assert!(validate_network_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", ".", "..", ".hidden", "-a", "_a", "a/b", "a b", "a:b", "../x", "é",
        ] {
            let e = validate_container_id(bad).unwrap_err();
            assert_eq!(e.code(), 4, "{bad}");
            let e = validate_network_name(bad).unwrap_err();
            assert_eq!(e.code(), 7, "{bad}");
        }
    }

    #[test]
    fn ifnames() {
        for ok in ["eth0", "net1", "a", "123456789012345", "-", ".x", "é"] {
            assert!(validate_ifname(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "1234567890123456",
            "a/b",
            "a:b",
            "a b",
            "a\tb",
            "a\0b",
        ] {
            assert_eq!(validate_ifname(bad).unwrap_err().code(), 4, "{bad:?}");
        }
    }
}
