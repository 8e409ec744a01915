//! Everything that can go wrong in the plugin, and (in [`FlannelError::code`], the only
//! place) which CNI code each failure carries.

use crate::subnet_env::SubnetEnvError;
use cni::{code, CniError};
use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum FlannelError {
    /// A key of the flannel config has the wrong shape. The prefix is the Go plugin's.
    #[error("failed to load flannel netconf file: failed to load netconf: {0}")]
    Config(String),

    // The next three texts are the Go plugin's, word for word.
    #[error("'delegate' dictionary must not have 'name' field, it'll be set by flannel")]
    DelegateHasName,
    #[error("'delegate' dictionary must not have 'ipam' field, it'll be set by flannel")]
    DelegateHasIpam,
    #[error("'delegate' dictionary, if present, must have (string) 'type' field")]
    DelegateTypeNotString,

    #[error(
        "failed to assemble Delegate IPAM: failed to read IPAM routes: failed to parse ipam.routes: {0}"
    )]
    IpamRoutes(String),

    /// subnet.env unusable while adding a pod (the prefix is the Go plugin's since
    /// v1.7.1-flannel2, so existing alerts keep matching).
    #[error(
        "failed to load flannel 'subnet.env' file: {0}. Check the flannel pod log for this node."
    )]
    SubnetEnv(#[source] SubnetEnvError),

    /// subnet.env unusable when the runtime asks whether we could add pods.
    #[error("flannel is not ready to add pods: {0}. Check the flannel pod log for this node.")]
    NotReady(#[source] SubnetEnvError),

    /// Reading or writing the saved delegate configs under dataDir.
    #[error("cannot {op} saved delegate config {}: {source}", path.display())]
    Store {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },

    #[error(
        "no saved delegate config at {}: container {container_id:?} was not added to this \
         network by flannel, or was deleted since",
        path.display()
    )]
    NotAdded { container_id: String, path: PathBuf },

    #[error(
        "saved delegate config {} is damaged ({reason}); delete the pod and create it again",
        path.display()
    )]
    Damaged { path: PathBuf, reason: String },

    /// The delegate's own answer: passed through with its code and message, as libcni
    /// >= 1.2 unwraps typed errors (any prefix we added would be lost there anyway).
    #[error(transparent)]
    Delegate(CniError),
}

impl FlannelError {
    pub fn code(&self) -> u32 {
        match self {
            FlannelError::Config(_)
            | FlannelError::DelegateHasName
            | FlannelError::DelegateHasIpam
            | FlannelError::DelegateTypeNotString
            | FlannelError::IpamRoutes(_) => code::INVALID_CONFIG,
            // Only absence is worth retrying: flanneld writes the file once it has a
            // lease. A present but unusable file will not fix itself by waiting.
            FlannelError::SubnetEnv(SubnetEnvError::NotFound { .. }) => code::TRY_AGAIN_LATER,
            FlannelError::SubnetEnv(_) => code::INTERNAL,
            FlannelError::NotReady(_) => code::NOT_AVAILABLE,
            FlannelError::NotAdded { .. } => code::UNKNOWN_CONTAINER,
            FlannelError::Store { .. } | FlannelError::Damaged { .. } => code::INTERNAL,
            FlannelError::Delegate(e) => e.code,
        }
    }
}

impl From<FlannelError> for CniError {
    fn from(e: FlannelError) -> CniError {
        match e {
            FlannelError::Delegate(inner) => inner,
            other => CniError::new(other.code(), other.to_string()),
        }
    }
}

impl From<CniError> for FlannelError {
    fn from(e: CniError) -> FlannelError {
        FlannelError::Delegate(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        let p = PathBuf::from("/run/flannel/subnet.env");
        let cases: Vec<(FlannelError, u32)> = vec![
            (FlannelError::Config("x".into()), 7),
            (FlannelError::DelegateHasName, 7),
            (FlannelError::IpamRoutes("x".into()), 7),
            (
                FlannelError::SubnetEnv(SubnetEnvError::NotFound { path: p.clone() }),
                11,
            ),
            (
                FlannelError::SubnetEnv(SubnetEnvError::Incomplete {
                    path: p.clone(),
                    missing: "FLANNEL_MTU".into(),
                }),
                999,
            ),
            (
                FlannelError::NotReady(SubnetEnvError::NotFound { path: p }),
                50,
            ),
            (
                FlannelError::NotAdded {
                    container_id: "c".into(),
                    path: "/x/c".into(),
                },
                3,
            ),
            (FlannelError::Delegate(CniError::new(18, "x")), 18),
        ];
        for (e, want) in cases {
            let msg = e.to_string();
            let c = CniError::from(e);
            assert_eq!(c.code, want, "{msg}");
            assert_eq!(c.msg, msg);
        }
    }
}
