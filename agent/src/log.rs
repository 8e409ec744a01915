//! Minimal stderr logging with flanneld-like level letters and a timestamp; `-v N`
//! raises the verbosity of debug lines. No logging framework: one agent, one stream.

use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

static VERBOSITY: AtomicU8 = AtomicU8::new(0);

pub fn set_verbosity(v: u8) {
    VERBOSITY.store(v, Ordering::Relaxed);
}

fn emit(level: char, msg: &str) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    eprintln!(
        "{level} {h:02}:{m:02}:{s:02}.{:06} {msg}",
        now.subsec_micros()
    );
}

pub fn info(msg: &str) {
    emit('I', msg);
}

pub fn warn(msg: &str) {
    emit('W', msg);
}

pub fn error(msg: &str) {
    emit('E', msg);
}

/// Shown with `-v 1` or more.
pub fn debug(msg: &str) {
    if VERBOSITY.load(Ordering::Relaxed) > 0 {
        emit('D', msg);
    }
}
