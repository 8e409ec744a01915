//! Links the plugin binary with a text layout when `scripts/build-release.sh` asks for it
//! (`CNI_PLUGINS_TEXT_ORDER` = a linker script of hot functions, written by
//! `scripts/gen-text-order.sh`).
//!
//! Why: a plugin process lives a few milliseconds, and most of its peak RSS is the
//! executable's own text. The kernel maps page-cache folios (64 kB here) whole on a fault,
//! so one call into a function maps its whole neighbourhood; with the code of all three
//! plugins interleaved by the linker, host-local alone ended up with ~95% of the text
//! resident. Grouping the functions each plugin runs (host-local's first, then what bridge
//! adds, then flannel's) keeps a run's faults inside a few folios. A stale list only costs
//! memory: functions it no longer names stay in `.text`, where the linker would have put
//! them anyway.

fn main() {
    println!("cargo:rerun-if-env-changed=CNI_PLUGINS_TEXT_ORDER");
    println!("cargo:rerun-if-env-changed=CNI_PLUGINS_LINK_MAP");
    // The link map tells the generator which input section holds each address: symbol
    // names alone miss merged functions and the C runtime's unnamed `.text` sections.
    if let Ok(map) = std::env::var("CNI_PLUGINS_LINK_MAP") {
        if !map.is_empty() {
            println!("cargo:rustc-link-arg-bins=-Wl,-Map={map}");
        }
    }
    let Ok(script) = std::env::var("CNI_PLUGINS_TEXT_ORDER") else {
        return;
    };
    if script.is_empty() {
        return;
    }
    println!("cargo:rerun-if-changed={script}");
    // An INSERT script augments the default one instead of replacing it (GNU ld and lld).
    println!("cargo:rustc-link-arg-bins=-Wl,-T,{script}");
}
