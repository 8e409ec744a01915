//! The CNI error result and its codes.

use serde::Serialize;
use std::fmt;

/// Error codes from the spec's table, plus the two Go's libraries add (8, 999).
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODE_FAILURE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    /// Go skel's `ErrInvalidNetNS`: CNI_NETNS is the plugin's own namespace.
    pub const INVALID_NETNS: u32 = 8;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const NOT_AVAILABLE: u32 = 50;
    pub const NOT_AVAILABLE_LIMITED: u32 = 51;
    /// Go skel wraps any untyped error as 999.
    pub const INTERNAL: u32 = 999;
}

/// A CNI error: printed as JSON on stdout with a non-zero exit status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    pub fn internal(msg: impl Into<String>) -> Self {
        CniError::new(code::INTERNAL, msg)
    }

    pub fn invalid_config(msg: impl Into<String>) -> Self {
        CniError::new(code::INVALID_CONFIG, msg)
    }

    pub fn invalid_env(msg: impl Into<String>) -> Self {
        CniError::new(code::INVALID_ENV, msg)
    }

    /// Prefixes the message with context, keeping the code (Go's `fmt.Errorf("...: %w")`
    /// loses typed codes; runtimes key their retry logic on the code, so we keep it).
    pub fn context(mut self, ctx: impl fmt::Display) -> Self {
        self.msg = format!("{ctx}: {}", self.msg);
        self
    }

    /// The JSON object printed on stdout. `cniVersion` is included as the spec lists it;
    /// Go omits it and libcni ignores it either way.
    pub fn to_json(&self, cni_version: &str) -> serde_json::Value {
        let mut v =
            serde_json::json!({ "cniVersion": cni_version, "code": self.code, "msg": self.msg });
        if !self.details.is_empty() {
            v["details"] = serde_json::Value::String(self.details.clone());
        }
        v
    }
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.details.is_empty() {
            write!(f, "{}", self.msg)
        } else {
            write!(f, "{}; {}", self.msg, self.details)
        }
    }
}

impl std::error::Error for CniError {}

/// Joins teardown errors so that one failure does not hide the others; the first error's
/// code is kept.
pub fn join_errors(errors: Vec<CniError>) -> Result<(), CniError> {
    let mut it = errors.into_iter();
    let Some(first) = it.next() else {
        return Ok(());
    };
    let rest: Vec<CniError> = it.collect();
    if rest.is_empty() {
        return Err(first);
    }
    let mut msg = first.to_string();
    for e in rest {
        msg.push_str("; ");
        msg.push_str(&e.to_string());
    }
    Err(CniError::new(first.code, msg))
}
