//! The three plugins in one executable, dispatched by the name it is invoked as. Installed
//! as hard links `flannel`, `bridge` and `host-local` of one file, so that flannel →
//! bridge → host-local delegation runs in one process instead of three (see
//! `cni::delegate::MultiCallDelegator`).

fn main() {
    cni::skel::multicall_main(&[
        &flannel::FlannelPlugin,
        &bridge::BridgePlugin,
        &host_local::HostLocalPlugin,
    ])
}
