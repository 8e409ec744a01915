fn main() {
    cni::skel::main(&bridge::BridgePlugin)
}
