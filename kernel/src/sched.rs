//! Two things at once on two CPUs, for the few milliseconds a plugin lives.
//!
//! Linux usually queues a new thread on its parent's CPU and does not preempt the parent
//! for it: unless the parent blocks, the thread waits there while another CPU idles,
//! until a load balance moves it (up to a scheduler tick). Measured on a 2-vCPU VM: a
//! thread spawned by a parent that stayed busy for 1 ms started on the parent's CPU 85%
//! of the time, after 1006 us on average. Sometimes it is placed on another CPU (when
//! the parent's already has a queue), so moving the caller away instead is no cure:
//! it can land behind the very thread it made room for. [`run_beside`] moves the new
//! thread itself, which is right in both cases.

use nix::sched::{sched_getaffinity, sched_getcpu, sched_setaffinity, CpuSet};
use nix::unistd::Pid;
use std::os::unix::thread::JoinHandleExt;
use std::thread::JoinHandle;

extern "C" {
    // In glibc and musl alike (musl: a `sched_setaffinity` of the thread's tid); the
    // `libc` crate declares it for glibc only.
    fn pthread_setaffinity_np(
        thread: libc::pthread_t,
        size: libc::size_t,
        set: *const libc::cpu_set_t,
    ) -> libc::c_int;
}

/// Runs `side` on a new thread and `main` on the calling thread at the same time, and
/// returns both results. The new thread is sent to a CPU other than the caller's (when
/// the caller may run on another), then given the caller's CPU mask back once it runs;
/// so `main` keeps its CPU and `side` starts after at most an idle CPU's wake-up (about
/// 100 us on a VM) instead of when `main` blocks. Give `main` the longer part.
///
/// A panic in either is resumed here after both have ended.
pub fn run_beside<A, B>(side: impl FnOnce() -> A + Send, main: impl FnOnce() -> B) -> (A, B)
where
    A: Send,
{
    let mask = sched_getaffinity(Pid::from_raw(0)).ok();
    let restore = mask;
    let side = move || {
        if let Some(mask) = restore {
            // Errors are ignored: the thread then keeps the narrower mask for the few
            // milliseconds it lives.
            let _ = sched_setaffinity(Pid::from_raw(0), &mask);
        }
        side()
    };
    // SAFETY: `spawn_unchecked` lets the thread borrow from this frame (`side` is not
    // 'static). That is sound if the thread is joined before this function returns or
    // unwinds, which `Joined` guarantees: it is dropped on every path out of this
    // function (its `Drop` joins when `join` below was not reached, e.g. `main`
    // panicked), and a failed spawn returns before any borrow was handed to a thread.
    let handle = unsafe { std::thread::Builder::new().spawn_unchecked(side) };
    let mut guard = Joined(Some(
        handle.unwrap_or_else(|e| panic!("failed to spawn a thread: {e}")),
    ));
    if let (Some(mask), Some(handle)) = (mask, guard.0.as_ref()) {
        send_elsewhere(handle, &mask);
    }
    let main_result = main();
    let side_result = guard.join();
    match side_result {
        Ok(a) => (a, main_result),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

struct Joined<A>(Option<JoinHandle<A>>);

impl<A> Joined<A> {
    fn join(&mut self) -> std::thread::Result<A> {
        match self.0.take() {
            Some(h) => h.join(),
            None => unreachable!("joined twice"),
        }
    }
}

impl<A> Drop for Joined<A> {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            let _ = h.join();
        }
    }
}

/// Restricts the thread to the CPUs of `mask` other than the caller's, if there are any.
fn send_elsewhere<A>(handle: &JoinHandle<A>, mask: &CpuSet) {
    let Ok(here) = sched_getcpu() else {
        return;
    };
    let mut others = CpuSet::new();
    let mut any = false;
    for cpu in (0..CpuSet::count()).filter(|&c| c != here) {
        if mask.is_set(cpu).unwrap_or(false) && others.set(cpu).is_ok() {
            any = true;
        }
    }
    if !any {
        return;
    }
    // SAFETY: the pthread_t comes from a live JoinHandle (the thread is not joined
    // or detached yet, so the id is valid), and the set is a cpu_set_t (nix's CpuSet
    // is a repr(transparent) wrapper of one) that the call only reads. An error (a CPU gone offline) leaves the
    // thread where it is, which is only slower.
    unsafe {
        let set: *const libc::cpu_set_t = (&others as *const CpuSet).cast();
        // std hands out the id as an integer; musl's pthread_t is a pointer.
        #[allow(clippy::unnecessary_cast)]
        let thread = handle.as_pthread_t() as usize as libc::pthread_t;
        pthread_setaffinity_np(thread, std::mem::size_of::<libc::cpu_set_t>(), set);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn cpus(set: &CpuSet) -> Vec<usize> {
        (0..CpuSet::count())
            .filter(|&c| set.is_set(c).unwrap())
            .collect()
    }

    #[test]
    fn both_run_borrowing_the_callers_data_and_masks_are_restored() {
        let before = sched_getaffinity(Pid::from_raw(0)).unwrap();
        let mut owned = vec![1, 2, 3];
        let shared = AtomicUsize::new(0);
        let (side_mask, sum) = run_beside(
            || {
                shared.fetch_add(1, Ordering::SeqCst);
                sched_getaffinity(Pid::from_raw(0)).unwrap()
            },
            || {
                owned.push(4);
                owned.iter().sum::<i32>()
            },
        );
        assert_eq!(sum, 10);
        assert_eq!(shared.load(Ordering::SeqCst), 1);
        assert_eq!(
            cpus(&side_mask),
            cpus(&before),
            "the side thread got its mask back"
        );
        let after = sched_getaffinity(Pid::from_raw(0)).unwrap();
        assert_eq!(
            cpus(&after),
            cpus(&before),
            "the caller's mask is untouched"
        );
    }

    #[test]
    fn a_panic_on_either_side_is_resumed_after_both_ended() {
        let ended = AtomicUsize::new(0);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run_beside(
                || {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    ended.fetch_add(1, Ordering::SeqCst);
                },
                || panic!("main"),
            )
        }));
        assert!(r.is_err());
        assert_eq!(ended.load(Ordering::SeqCst), 1, "joined before unwinding");
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run_beside(|| panic!("side"), || ended.fetch_add(1, Ordering::SeqCst))
        }));
        assert!(r.is_err());
        assert_eq!(ended.load(Ordering::SeqCst), 2, "main ran to its end");
    }

    #[test]
    fn single_cpu_mask_stays_single() {
        std::thread::spawn(|| {
            let here = sched_getcpu().unwrap();
            let mut one = CpuSet::new();
            one.set(here).unwrap();
            sched_setaffinity(Pid::from_raw(0), &one).unwrap();
            let (side, ()) = run_beside(|| sched_getaffinity(Pid::from_raw(0)).unwrap(), || ());
            assert_eq!(cpus(&side), vec![here]);
            assert_eq!(
                cpus(&sched_getaffinity(Pid::from_raw(0)).unwrap()),
                vec![here]
            );
        })
        .join()
        .unwrap();
    }
}
