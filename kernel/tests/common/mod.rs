//! Private network namespaces for kernel tests.
//!
//! Every test calls [`isolate`] first: it moves the test's own thread (libtest
//! gives each test a fresh thread) into a new, empty network namespace, so
//! nothing a test creates can reach the machine's root namespace, and the
//! namespace disappears with the thread. [`PodNs`] adds a second namespace,
//! held by a parked thread and addressed as /proc/<pid>/task/<tid>/ns/net,
//! which leaves nothing behind in /run/netns.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::mpsc;
use std::thread::JoinHandle;

use kernel::NetNs;
use nix::sched::{unshare, CloneFlags};

/// Moves the calling thread into a fresh network namespace and returns a
/// handle to it, or None (test skipped) when not running as root.
pub fn isolate() -> Option<NetNs> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: kernel tests need root");
        return None;
    }
    let root = NetNs::open("/proc/self/ns/net").expect("open main thread netns");
    unshare(CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
    let ns = NetNs::current().expect("open own netns");
    assert_ne!(
        ns.id().unwrap(),
        root.id().unwrap(),
        "test thread must not be in the root netns"
    );
    Some(ns)
}

/// A second namespace kept alive by a parked thread.
pub struct PodNs {
    pub path: PathBuf,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl PodNs {
    pub fn new() -> Self {
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            unshare(CloneFlags::CLONE_NEWNET).expect("unshare pod netns");
            ready_tx.send(nix::unistd::gettid().as_raw()).unwrap();
            // Parked until the sender is dropped.
            let _ = stop_rx.recv();
        });
        let tid = ready_rx.recv().expect("pod thread started");
        PodNs {
            path: PathBuf::from(format!("/proc/{}/task/{tid}/ns/net", std::process::id())),
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    pub fn open(&self) -> NetNs {
        NetNs::open(&self.path).expect("open pod netns")
    }

    /// Runs a command inside the pod namespace and returns its stdout.
    pub fn run(&self, args: &[&str]) -> String {
        let net = format!("--net={}", self.path.display());
        let mut all = vec![net.as_str()];
        all.extend_from_slice(args);
        run("nsenter", &all)
    }
}

impl Drop for PodNs {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs a command in the calling thread's namespace (children inherit the
/// thread's netns) and returns stdout; panics with stderr on failure.
pub fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
