//! The optional invocation log (config keys `logFile`, `logLevel`, in the manner of
//! Multus): one line per invocation for operators debugging a node. Never on stdout, and
//! never able to fail the operation.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Debug,
    Info,
    Error,
}

impl Level {
    pub fn parse(s: &str) -> Level {
        match s.to_ascii_lowercase().as_str() {
            "debug" | "verbose" => Level::Debug,
            "error" | "panic" => Level::Error,
            _ => Level::Info,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Error => "error",
        }
    }
}

/// Appends `line` at `level` if the configured level lets it through. One `write` of the
/// whole line on an O_APPEND file keeps lines from concurrent plugins whole. O_NOFOLLOW:
/// the log path is configuration, but a symlink planted at it must not redirect a root
/// process's writes.
pub fn append(path: &str, configured: Level, level: Level, line: &str) {
    if level < configured || path.is_empty() {
        return;
    }
    let mut text = format!(
        "{} level={} {}",
        rfc3339(SystemTime::now()),
        level.as_str(),
        line
    );
    text.retain(|c| c != '\n');
    text.push('\n');
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
    {
        let _ = f.write_all(text.as_bytes());
    }
}

/// UTC timestamp with milliseconds, without pulling in a date crate.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = d.as_secs();
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_795_308_330_123);
        assert_eq!(rfc3339(t), "2026-11-22T00:45:30.123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn appends_whole_lines_and_respects_level() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("log");
        let p = p.to_str().unwrap();
        append(p, Level::Info, Level::Info, "a=1\nb=2");
        append(p, Level::Info, Level::Debug, "hidden");
        append(p, Level::Error, Level::Info, "hidden");
        let text = std::fs::read_to_string(p).unwrap();
        assert_eq!(text.lines().count(), 1);
        assert!(text.ends_with("level=info a=1b=2\n"), "{text}");
        append(
            "/nonexistent-dir/x/log",
            Level::Debug,
            Level::Error,
            "ignored",
        );
    }
}
