//! The three plugins in one executable, dispatched by the name it is invoked as. Installed
//! as hard links `flannel`, `bridge` and `host-local` of one file, so that flannel →
//! bridge → host-local delegation runs in one process instead of three (see
//! `cni::delegate::MultiCallDelegator`).

/// Only on musl (the shipped static build, scripts/build-release.sh): its own allocator
/// returns every emptied group to the kernel at once, so a plugin run spent ~0.4 ms in
/// mmap, munmap and the page faults after them. glibc's malloc needs no replacement.
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOC: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

fn main() {
    cni::skel::multicall_main(&[
        &flannel::FlannelPlugin,
        &bridge::BridgePlugin,
        &host_local::HostLocalPlugin,
    ])
}
