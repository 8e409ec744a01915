//! Two things at once on two CPUs, for the few milliseconds a plugin lives.
//!
//! Linux usually queues a new thread on its parent's CPU and does not preempt the parent
//! for it: unless the parent blocks, the thread waits there while another CPU idles,
//! until a load balance moves it (up to a scheduler tick). Measured on a 2-vCPU VM: a
//! thread spawned by a parent that stayed busy for 1 ms started on the parent's CPU 85%
//! of the time, after 1006 us on average. Sometimes it is placed on another CPU (when
//! the parent's already has a queue), so moving the caller away instead is no cure:
//! it can land behind the very thread it made room for. [`run_beside`] moves the new
//! thread itself, which is right in both cases; and on a machine whose CPUs are all
//! busy it does not make a thread at all.

use nix::sched::{sched_getaffinity, sched_getcpu, sched_setaffinity, CpuSet};
use nix::unistd::Pid;
use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
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
/// When no CPU is free for the new thread (as many runnable tasks on the machine as the
/// caller has CPUs, itself included), both run here one after the other, `main` first
/// (a panic in it then skips `side`): a second thread would only add its own cost
/// (creation, migration, the wake-ups at join); with 4 ADDs at once on 2 vCPUs the
/// bridge's ipMasq ADD p50 was 0.8-1.7 ms higher on two threads than one after the other
/// (four alternating runs).
///
/// On two threads, a panic in either is resumed here after both have ended.
pub fn run_beside<A, B>(side: impl FnOnce() -> A + Send, main: impl FnOnce() -> B) -> (A, B)
where
    A: Send,
{
    beside(side, main, false)
}

/// [`run_beside`] for a `side` that mostly waits for I/O (an fsync). On two threads, that
/// thread is not counted as a busy CPU by a `run_beside` nested in `main` (the delegated
/// bridge's): it is runnable only for instants (its start, the syscalls around the wait,
/// its exit, which outlasts its closure), and counting it made the chain's bridge run its
/// two parts one after the other in 219 of 224 ADDs of a traced run. With no CPU free it
/// runs after `main`: at 4 ADDs at once on 2 vCPUs a thread's start and exit cost more
/// than the 0.1-0.4 ms directory write it would hide.
pub fn run_beside_io<A, B>(side: impl FnOnce() -> A + Send, main: impl FnOnce() -> B) -> (A, B)
where
    A: Send,
{
    beside(side, main, true)
}

/// Threads of this process started by [`run_beside_io`] that have not been joined yet.
static IO_WAITERS: AtomicUsize = AtomicUsize::new(0);

/// One [`IO_WAITERS`] count, given back on every path (a panic in `main` included).
struct IoWaiter;

impl IoWaiter {
    fn enter() -> Self {
        IO_WAITERS.fetch_add(1, Ordering::Relaxed);
        IoWaiter
    }
}

impl Drop for IoWaiter {
    fn drop(&mut self) {
        IO_WAITERS.fetch_sub(1, Ordering::Relaxed);
    }
}

fn beside<A, B>(side: impl FnOnce() -> A + Send, main: impl FnOnce() -> B, io: bool) -> (A, B)
where
    A: Send,
{
    let mask = sched_getaffinity(Pid::from_raw(0)).ok();
    let cpus = mask.map_or(1, |m| {
        (0..CpuSet::count())
            .filter(|&c| m.is_set(c).unwrap_or(false))
            .count()
    });
    let busy = running_tasks().map(|n| n.saturating_sub(IO_WAITERS.load(Ordering::Relaxed)));
    match mask {
        Some(mask) if busy.is_some_and(|n| n < cpus) => {
            // Counted from before the thread starts until after its join.
            let _waiter = io.then(IoWaiter::enter);
            on_two_threads(mask, side, main)
        }
        _ => {
            let b = main();
            (side(), b)
        }
    }
}

fn on_two_threads<A, B>(
    mask: CpuSet,
    side: impl FnOnce() -> A + Send,
    main: impl FnOnce() -> B,
) -> (A, B)
where
    A: Send,
{
    // Kept here so a failed spawn can still run it; the thread takes it out.
    let slot = Mutex::new(Some(side));
    // The thread must not exit before its CPU mask is set: the kernel zeroes the tid
    // that pthread_setaffinity_np uses when a thread exits, and a tid of 0 means the
    // caller, which would pin the caller instead.
    let placed = AtomicBool::new(false);
    let thread = || {
        while !placed.load(Ordering::Acquire) {
            std::thread::yield_now();
        }
        // Errors are ignored: the thread then keeps the narrower mask for the few
        // milliseconds it lives.
        let _ = sched_setaffinity(Pid::from_raw(0), &mask);
        let side = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
        side.map(|f| f())
    };
    // SAFETY: `spawn_unchecked` lets the thread borrow from this frame (`slot`, `placed`,
    // `mask` and what `side` borrows). That is sound if the thread is joined before this
    // function returns or unwinds, which `Joined` guarantees: it is dropped on every path
    // out of this function (its `Drop` joins when `join` below was not reached, e.g.
    // `main` panicked). A failed spawn hands no borrow to any thread.
    let spawned = unsafe { std::thread::Builder::new().spawn_unchecked(thread) };
    let mut guard = match spawned {
        Ok(handle) => {
            send_elsewhere(&handle, &mask);
            Joined(Some(handle))
        }
        Err(_) => Joined(None),
    };
    placed.store(true, Ordering::Release);
    let main_result = main();
    let side_result = match guard.join() {
        Some(Ok(Some(a))) => a,
        Some(Err(panic)) => std::panic::resume_unwind(panic),
        // No thread (EAGAIN: out of threads or memory): the same work, one after the other.
        Some(Ok(None)) | None => match slot.lock().unwrap_or_else(|p| p.into_inner()).take() {
            Some(side) => side(),
            None => unreachable!("the side part was taken but did not return"),
        },
    };
    (side_result, main_result)
}

/// Runnable tasks on the whole machine, this one included: the fourth field of
/// /proc/loadavg ("running/total"), a sum over the CPUs' run queues at the time of the
/// read. `None` if it cannot be read (no /proc).
fn running_tasks() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    parse_running(&text)
}

fn parse_running(loadavg: &str) -> Option<usize> {
    let field = loadavg.split_ascii_whitespace().nth(3)?;
    field.split_once('/')?.0.parse().ok()
}

struct Joined<A>(Option<JoinHandle<A>>);

impl<A> Joined<A> {
    fn join(&mut self) -> Option<std::thread::Result<A>> {
        self.0.take().map(JoinHandle::join)
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
    // SAFETY: the pthread_t comes from a JoinHandle that is neither joined nor detached,
    // and the thread has not exited (it waits for `placed`, set after this call), so its
    // tid is the thread's. The set is a cpu_set_t (nix's CpuSet is a repr(transparent)
    // wrapper of one) that the call only reads. An error (a CPU gone offline) leaves the
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
    use std::sync::atomic::AtomicUsize;

    fn cpus(set: &CpuSet) -> Vec<usize> {
        (0..CpuSet::count())
            .filter(|&c| set.is_set(c).unwrap())
            .collect()
    }

    fn mask() -> CpuSet {
        sched_getaffinity(Pid::from_raw(0)).unwrap()
    }

    #[test]
    fn both_run_borrowing_the_callers_data_and_masks_are_restored() {
        let before = mask();
        let mut owned = vec![1, 2, 3];
        let shared = AtomicUsize::new(0);
        let (side_mask, sum) = on_two_threads(
            before,
            || {
                shared.fetch_add(1, Ordering::SeqCst);
                mask()
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
        assert_eq!(
            cpus(&mask()),
            cpus(&before),
            "the caller's mask is untouched"
        );
        // Whichever way run_beside chooses here, both parts run once.
        let (a, b) = run_beside(|| shared.fetch_add(1, Ordering::SeqCst), || 7);
        assert_eq!((a, b), (1, 7));
    }

    #[test]
    fn a_panic_on_either_side_is_resumed_after_both_ended() {
        let ended = AtomicUsize::new(0);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            on_two_threads(
                mask(),
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
            on_two_threads(
                mask(),
                || panic!("side"),
                || ended.fetch_add(1, Ordering::SeqCst),
            )
        }));
        assert!(r.is_err());
        assert_eq!(ended.load(Ordering::SeqCst), 2, "main ran to its end");
    }

    #[test]
    fn io_waiters_are_counted_until_joined() {
        let before = IO_WAITERS.load(Ordering::Relaxed);
        let (seen, ()) = run_beside_io(|| IO_WAITERS.load(Ordering::Relaxed), || ());
        // On two threads the side saw itself counted; one after the other it did not.
        assert!(seen == before || seen == before + 1, "{seen} vs {before}");
        assert_eq!(IO_WAITERS.load(Ordering::Relaxed), before);
        let caught = std::panic::catch_unwind(|| run_beside_io(|| (), || panic!("main")));
        assert!(caught.is_err());
        assert_eq!(
            IO_WAITERS.load(Ordering::Relaxed),
            before,
            "given back on panic"
        );
    }

    #[test]
    fn loadavg_running_field() {
        assert_eq!(parse_running("2.79 1.77 1.54 1/113 13656\n"), Some(1));
        assert_eq!(parse_running("0.00 0.00 0.00 12/300 1"), Some(12));
        assert_eq!(parse_running("0.00 0.00 0.00"), None);
        assert_eq!(parse_running("0.00 0.00 0.00 x/3 1"), None);
        assert!(
            running_tasks().is_some_and(|n| n >= 1),
            "this test is running"
        );
    }

    #[test]
    fn single_cpu_mask_stays_single() {
        std::thread::spawn(|| {
            let here = sched_getcpu().unwrap();
            let mut one = CpuSet::new();
            one.set(here).unwrap();
            sched_setaffinity(Pid::from_raw(0), &one).unwrap();
            let (side, ()) = on_two_threads(one, mask, || ());
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
