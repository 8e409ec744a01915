fn main() {
    cni::skel::main(&host_local::HostLocalPlugin)
}
