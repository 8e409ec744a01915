fn main() {
    cni::skel::main(&flannel::FlannelPlugin)
}
