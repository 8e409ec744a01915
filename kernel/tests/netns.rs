//! Namespace handles, the guard and run_in_netns against real namespaces.

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process::{Command, Stdio};

use common::{isolate, PodNs};
use kernel::{run_in_netns, Error, NetNs};

fn current_id() -> (u64, u64) {
    NetNs::current().unwrap().id().unwrap()
}

#[test]
fn guard_switches_back_on_drop_and_on_panic() {
    let Some(own) = isolate() else { return };
    let own_id = own.id().unwrap();
    let pod = PodNs::new();
    let pod_ns = pod.open();
    let pod_id = pod_ns.id().unwrap();
    assert_ne!(own_id, pod_id);

    {
        let _guard = pod_ns.enter().unwrap();
        assert_eq!(current_id(), pod_id);
    }
    assert_eq!(current_id(), own_id);

    let result = catch_unwind(AssertUnwindSafe(|| {
        let _guard = pod_ns.enter().unwrap();
        assert_eq!(current_id(), pod_id);
        panic!("failure while inside the pod namespace");
    }));
    assert!(result.is_err());
    assert_eq!(current_id(), own_id, "unwinding must switch back");
}

#[test]
fn run_in_netns_never_moves_the_caller() {
    let Some(own) = isolate() else { return };
    let pod = PodNs::new();
    let pod_ns = pod.open();
    let seen = run_in_netns(&pod_ns, current_id).unwrap();
    assert_eq!(seen, pod_ns.id().unwrap());
    assert_eq!(current_id(), own.id().unwrap());
    let panicked = catch_unwind(AssertUnwindSafe(|| {
        run_in_netns(&pod_ns, || panic!("inside"))
    }));
    assert!(panicked.is_err());
    assert_eq!(current_id(), own.id().unwrap());
}

#[test]
fn opens_proc_pid_and_task_paths() {
    let Some(_own) = isolate() else { return };
    // /proc/<pid>/task/<tid>/ns/net of a thread holding a namespace.
    let pod = PodNs::new();
    assert!(pod.path.to_string_lossy().contains("/task/"));
    let by_task = NetNs::open(&pod.path).unwrap();

    // /proc/<pid>/ns/net of a process that has its own namespace.
    let mut child = Command::new("unshare")
        .args(["-n", "sleep", "30"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let path = format!("/proc/{}/ns/net", child.id());
    let mut opened = None;
    for _ in 0..100 {
        // Until unshare has run, the child still shares our namespace.
        let ns = NetNs::open(&path).unwrap();
        if ns.id().unwrap() != NetNs::current().unwrap().id().unwrap() {
            opened = Some(ns);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
    let by_pid = opened.expect("child entered its own namespace");
    assert_ne!(by_pid.id().unwrap(), by_task.id().unwrap());
    // The handle keeps the namespace usable after its last process exited.
    assert!(run_in_netns(&by_pid, || ()).is_ok());
    // The path itself is gone now.
    assert!(matches!(
        NetNs::open(&path),
        Err(Error::NetnsNotFound { .. })
    ));
}
