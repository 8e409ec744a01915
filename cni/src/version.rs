//! Spec versions: which ones we speak and how they compare.

use crate::error::CniError;

/// Every spec version we implement, in the order Go's `version.All` lists them.
/// libcni matches a config's `cniVersion` against this list by exact string.
pub const SUPPORTED: [&str; 7] = [
    "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0",
];

/// The version this implementation is written against (answered by VERSION).
pub const CURRENT: &str = "1.1.0";

/// A parsed `major.minor.patch` triple; ordering is numeric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u16, pub u16, pub u16);

impl Version {
    pub const V0_2_0: Version = Version(0, 2, 0);
    pub const V0_3_0: Version = Version(0, 3, 0);
    pub const V0_4_0: Version = Version(0, 4, 0);
    pub const V1_0_0: Version = Version(1, 0, 0);
    pub const V1_1_0: Version = Version(1, 1, 0);

    /// Parses a version the spec allows. An empty string is 0.1.0, as Go's decoder reads it.
    pub fn parse(s: &str) -> Option<Version> {
        if s.is_empty() {
            return Some(Version(0, 1, 0));
        }
        let mut parts = s.split('.');
        let mut next = || -> Option<u16> {
            let p = parts.next()?;
            if p.is_empty() || p.len() > 4 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            p.parse().ok()
        };
        let v = Version(next()?, next()?, next()?);
        if parts.next().is_some() {
            return None;
        }
        Some(v)
    }

    /// The result format family of this version.
    pub fn family(self) -> Family {
        if self < Version::V0_3_0 {
            Family::V02
        } else if self < Version::V1_0_0 {
            Family::V04
        } else {
            Family::V1
        }
    }
}

/// Result wire formats: 0.1/0.2 (`ip4`/`ip6`), 0.3.x/0.4.0 (`ips[].version`), 1.x.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V02,
    V04,
    V1,
}

/// Checks that `v` is a version we implement (exact string match, as libcni and skel do),
/// treating empty as 0.1.0.
pub fn require_supported(v: &str) -> Result<Version, CniError> {
    let canon = if v.is_empty() { "0.1.0" } else { v };
    match SUPPORTED.iter().find(|s| **s == canon) {
        Some(s) => Ok(Version::parse(s).unwrap_or(Version(0, 1, 0))),
        None => Err(CniError::new(
            crate::error::code::INCOMPATIBLE_VERSION,
            format!(
                "incompatible CNI versions; config is {:?}, plugin supports {:?}",
                v, SUPPORTED
            ),
        )),
    }
}

/// The `VERSION` answer: echoes a known requested version, else our current one.
pub fn version_answer(stdin: &[u8]) -> serde_json::Value {
    let requested = serde_json::from_slice::<serde_json::Value>(stdin)
        .ok()
        .and_then(|v| {
            v.get("cniVersion")
                .and_then(|s| s.as_str())
                .map(str::to_owned)
        })
        .filter(|v| SUPPORTED.contains(&v.as_str()))
        .unwrap_or_else(|| CURRENT.to_owned());
    serde_json::json!({ "cniVersion": requested, "supportedVersions": SUPPORTED })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_order() {
        assert_eq!(Version::parse(""), Some(Version(0, 1, 0)));
        assert!(Version::parse("0.3.1").unwrap() < Version::parse("0.4.0").unwrap());
        assert!(Version::parse("1.1.0").unwrap() > Version::V1_0_0);
        for bad in [
            "1",
            "1.0",
            "1.0.0.0",
            "a.b.c",
            "1..0",
            "-1.0.0",
            "99999.0.0",
        ] {
            assert_eq!(Version::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn supported_is_exact() {
        assert!(require_supported("1.1.0").is_ok());
        assert_eq!(require_supported("").unwrap(), Version(0, 1, 0));
        let e = require_supported("1.0").unwrap_err();
        assert_eq!(e.code, 1);
        assert!(e.msg.contains("\"1.0\""));
        assert!(require_supported("2.0.0").is_err());
    }

    #[test]
    fn version_echoes_known_only() {
        assert_eq!(
            version_answer(br#"{"cniVersion":"0.4.0"}"#)["cniVersion"],
            "0.4.0"
        );
        assert_eq!(version_answer(b"")["cniVersion"], "1.1.0");
        assert_eq!(
            version_answer(br#"{"cniVersion":"9.9.9"}"#)["cniVersion"],
            "1.1.0"
        );
    }
}
