//! The CNI protocol, spec versions 0.1.0 to 1.1.0, owned end to end: wire types and
//! their conversions, the `CNI_*` environment, errors and codes, command dispatch, and
//! delegation to other plugins. No kernel access and no plugin state live here.

pub mod config;
pub mod delegate;
pub mod env;
pub mod error;
pub mod log;
pub mod result;
pub mod skel;
pub mod version;

pub use config::{Attachment, NetConf};
pub use delegate::{Delegator, ExecDelegator, MultiCallDelegator};
pub use env::{Command, Env, EnvMap};
pub use error::{code, CniError};
pub use result::{CniResult, Dns, Interface, IpConfig, Route};
pub use skel::{Plugin, Request};
