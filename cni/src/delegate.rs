//! Delegation: finding a plugin in `CNI_PATH`, running it with our environment, and
//! reading its answer. Behind a trait so plugin logic can be tested without exec.

use crate::env::{Command, Env};
use crate::error::{code, CniError};
use crate::result::CniResult;
use serde_json::Value;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// What a delegate answered: its stdout JSON on success (None when it printed nothing).
pub type DelegateOutput = Result<Option<Value>, CniError>;

pub trait Delegator: Sync {
    /// Runs plugin `plugin_type` for `command` with `stdin`, in `env` (the caller's whole
    /// environment; only `CNI_COMMAND` is replaced, as the spec requires).
    fn delegate(
        &self,
        plugin_type: &str,
        command: Command,
        stdin: &[u8],
        env: &Env,
    ) -> DelegateOutput;

    /// Checks, without running it, that `plugin_type` can be delegated to, so a plugin can
    /// refuse a request before it creates anything. The default (fakes) says yes.
    fn preflight(&self, plugin_type: &str, env: &Env) -> Result<(), CniError> {
        let _ = (plugin_type, env);
        Ok(())
    }
}

/// ADD through a delegate, its result read in whatever version it printed.
pub fn delegate_add(
    d: &dyn Delegator,
    plugin_type: &str,
    stdin: &[u8],
    env: &Env,
    conf_version: &str,
) -> Result<CniResult, CniError> {
    match d.delegate(plugin_type, Command::Add, stdin, env)? {
        Some(v) => CniResult::from_value(&v, conf_version)
            .map(|(r, _)| r)
            .map_err(|e| {
                e.context(format!(
                    "plugin {plugin_type:?} returned an unreadable result"
                ))
            }),
        None => Err(CniError::internal(format!(
            "plugin {plugin_type:?} succeeded but printed no result"
        ))),
    }
}

/// DEL/CHECK/STATUS/GC through a delegate; its stdout is ignored, as libcni does.
pub fn delegate_simple(
    d: &dyn Delegator,
    plugin_type: &str,
    command: Command,
    stdin: &[u8],
    env: &Env,
) -> Result<(), CniError> {
    d.delegate(plugin_type, command, stdin, env).map(|_| ())
}

/// Finds `name` in the `CNI_PATH` directories, in order; the first regular file wins.
pub fn find_plugin(name: &str, path: &[PathBuf]) -> Result<PathBuf, CniError> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(CniError::invalid_config(format!(
            "invalid plugin name {name:?}"
        )));
    }
    if path.is_empty() {
        return Err(CniError::invalid_env(format!(
            "failed to find plugin {name:?}: CNI_PATH is empty"
        )));
    }
    for dir in path {
        let candidate = dir.join(name);
        if std::fs::metadata(&candidate).is_ok_and(|m| m.is_file()) {
            return Ok(candidate);
        }
    }
    Err(CniError::invalid_config(format!(
        "failed to find plugin {name:?} in path {:?}",
        path.iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
    )))
}

/// Runs delegates as child processes, exactly as libcni's `invoke` does.
#[derive(Debug, Default, Clone, Copy)]
pub struct ExecDelegator;

/// libcni retries on ETXTBSY: a runtime may exec a binary while an installer is still
/// writing it.
const TEXT_BUSY_RETRIES: u32 = 5;

impl Delegator for ExecDelegator {
    fn delegate(
        &self,
        plugin_type: &str,
        command: Command,
        stdin: &[u8],
        env: &Env,
    ) -> DelegateOutput {
        let path = find_plugin(plugin_type, &env.path)?;
        exec_plugin(&path, command, stdin, env)
    }

    fn preflight(&self, plugin_type: &str, env: &Env) -> Result<(), CniError> {
        find_plugin(plugin_type, &env.path).map(|_| ())
    }
}

/// Delegation for the multi-call binary: when the plugin found in `CNI_PATH` is this very
/// executable (same inode as /proc/self/exe, as when the three names are hard links or
/// symlinks to one file), the delegate runs in-process through the same `skel` path a
/// fresh process would take, with the same environment (only CNI_COMMAND replaced) and the
/// same stdin; anything else is exec'd exactly as the spec says. A fork+exec costs about
/// as much as the kernel work of a whole pod ADD, so a three-plugin chain saves most of
/// its latency, and neither the runtime nor a foreign delegate can tell the difference.
pub struct MultiCallDelegator<'a> {
    pub plugins: &'a [&'a dyn crate::skel::Plugin],
}

impl Delegator for MultiCallDelegator<'_> {
    fn delegate(
        &self,
        plugin_type: &str,
        command: Command,
        stdin: &[u8],
        env: &Env,
    ) -> DelegateOutput {
        let path = find_plugin(plugin_type, &env.path)?;
        let builtin = self.plugins.iter().find(|p| p.name() == plugin_type);
        match builtin {
            Some(plugin) if is_this_executable(&path) => {
                let mut vars = env.vars.clone();
                vars.insert("CNI_COMMAND".into(), command.as_str().into());
                let out = crate::skel::run_with(*plugin, vars, stdin, self);
                parse_output(&path, Some(out.exit_code), &out.stdout, b"")
            }
            _ => exec_plugin(&path, command, stdin, env),
        }
    }

    fn preflight(&self, plugin_type: &str, env: &Env) -> Result<(), CniError> {
        find_plugin(plugin_type, &env.path).map(|_| ())
    }
}

/// Whether `path` (symlinks followed) is the file this process runs from.
pub fn is_this_executable(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    static SELF_ID: std::sync::OnceLock<Option<(u64, u64)>> = std::sync::OnceLock::new();
    let me = *SELF_ID.get_or_init(|| {
        std::fs::metadata("/proc/self/exe")
            .ok()
            .map(|m| (m.dev(), m.ino()))
    });
    match (me, std::fs::metadata(path)) {
        (Some(me), Ok(m)) => me == (m.dev(), m.ino()),
        _ => false,
    }
}

/// Execs `path` with the caller's environment (only CNI_COMMAND replaced) and parses its
/// answer. The child's stderr is copied to ours.
pub fn exec_plugin(path: &Path, command: Command, stdin: &[u8], env: &Env) -> DelegateOutput {
    let mut attempt = 0;
    let parent = std::process::id() as libc::pid_t;
    let mut child = loop {
        let mut cmd = std::process::Command::new(path);
        cmd.env_clear()
            .envs(&env.vars)
            .env("CNI_COMMAND", command.as_str())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // A runtime that gives up on us (timeout, SIGKILL) must not leave our delegate
        // running on: an orphaned ADD would finish after the runtime's DEL and leak what
        // it created. The delegate dies with us instead, so the runtime's DEL sees a
        // settled state.
        //
        // SAFETY: the closure runs in the forked child before exec; it only makes the
        // async-signal-safe syscalls prctl(2) and getppid(2), allocates nothing and takes
        // no locks.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // We may have died between fork and prctl: then nobody would kill the child.
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let spawned = cmd.spawn();
        match spawned {
            Ok(c) => break c,
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && attempt < TEXT_BUSY_RETRIES => {
                attempt += 1;
                std::thread::sleep(Duration::from_secs(1));
            }
            Err(e) => {
                return Err(CniError::internal(format!(
                    "failed to execute plugin {}: {e}",
                    path.display()
                )))
            }
        }
    };
    let mut child_stdin = child.stdin.take();
    let mut child_stdout = child.stdout.take();
    let mut child_stderr = child.stderr.take();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    // Writing stdin and draining both pipes concurrently: a plugin that logs a lot to
    // stderr before reading stdin would otherwise deadlock against us.
    std::thread::scope(|s| {
        s.spawn(|| {
            if let Some(mut w) = child_stdin.take() {
                let _ = w.write_all(stdin);
            }
        });
        s.spawn(|| {
            if let Some(mut r) = child_stderr.take() {
                let _ = r.read_to_end(&mut err);
            }
        });
        if let Some(mut r) = child_stdout.take() {
            let _ = r.read_to_end(&mut out);
        }
    });
    let status = child.wait().map_err(|e| {
        CniError::internal(format!("failed to wait for plugin {}: {e}", path.display()))
    })?;
    if !err.is_empty() {
        let _ = std::io::stderr().write_all(&err);
    }
    parse_output(path, status.code(), &out, &err)
}

/// Interprets a plugin's stdout and exit status the way libcni does.
pub fn parse_output(path: &Path, exit: Option<i32>, out: &[u8], err: &[u8]) -> DelegateOutput {
    let trimmed = out.trim_ascii();
    if exit == Some(0) {
        if trimmed.is_empty() {
            return Ok(None);
        }
        return serde_json::from_slice(trimmed).map(Some).map_err(|e| {
            CniError::new(
                code::DECODE_FAILURE,
                format!("plugin {} printed invalid JSON: {e}", path.display()),
            )
        });
    }
    let status = match exit {
        Some(c) => format!("exit status {c}"),
        None => "killed by a signal".to_owned(),
    };
    if trimmed.is_empty() {
        let stderr = String::from_utf8_lossy(err.trim_ascii());
        return Err(if stderr.is_empty() {
            CniError::internal(format!("netplugin failed with no error message: {status}"))
        } else {
            CniError::internal(format!("netplugin failed: {stderr:?}"))
        });
    }
    // A typed error from the delegate passes through with its own code and message, as
    // libcni >= 1.2 does: runtimes act on the inner code.
    #[derive(serde::Deserialize)]
    struct Wire {
        code: u32,
        #[serde(default)]
        msg: String,
        #[serde(default)]
        details: String,
    }
    match serde_json::from_slice::<Wire>(trimmed) {
        Ok(w) => Err(CniError::new(w.code, w.msg).with_details(w.details)),
        Err(_) => Err(CniError::internal(format!(
            "netplugin {} failed ({status}) but error parsing its diagnostic message {:?}",
            path.display(),
            String::from_utf8_lossy(&trimmed[..trimmed.len().min(512)])
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn env_with_path(dir: &Path) -> Env {
        let mut vars = crate::env::EnvMap::new();
        vars.insert("CNI_COMMAND".into(), "ADD".into());
        vars.insert("CNI_CONTAINERID".into(), "c1".into());
        vars.insert("CNI_NETNS".into(), "/proc/self/ns/net".into());
        vars.insert("CNI_IFNAME".into(), "eth0".into());
        vars.insert("CNI_PATH".into(), format!("/nonexistent:{}", dir.display()));
        vars.insert("MARKER".into(), "kept".into());
        Env::from_map(vars).unwrap()
    }

    fn script(dir: &Path, name: &str, body: &str) {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn finds_in_order_and_reports_paths() {
        let d = tempfile::tempdir().unwrap();
        script(d.path(), "p", "true");
        let env = env_with_path(d.path());
        assert_eq!(find_plugin("p", &env.path).unwrap(), d.path().join("p"));
        let e = find_plugin("missing", &env.path).unwrap_err();
        assert!(
            e.msg.contains("failed to find plugin \"missing\""),
            "{}",
            e.msg
        );
        assert!(find_plugin("../p", &env.path).is_err());
    }

    #[test]
    fn passes_env_stdin_and_reads_result() {
        let d = tempfile::tempdir().unwrap();
        script(
            d.path(),
            "p",
            r#"in=$(cat); printf '{"cniVersion":"0.3.1","ips":[{"version":"4","address":"10.0.0.9/24"}],"dns":{"domain":"%s-%s-%s"}}' "$CNI_COMMAND" "$MARKER" "$(echo "$in" | head -c 5)""#,
        );
        let env = env_with_path(d.path());
        let r = delegate_add(&ExecDelegator, "p", b"hello world", &env, "1.0.0").unwrap();
        assert_eq!(r.dns.domain, "ADD-kept-hello");
        assert_eq!(r.ips[0].address.to_string(), "10.0.0.9/24");
    }

    #[test]
    fn typed_errors_pass_through() {
        let d = tempfile::tempdir().unwrap();
        script(
            d.path(),
            "p",
            r#"echo '{"code":11,"msg":"later","details":"d"}'; exit 1"#,
        );
        script(d.path(), "q", "echo oops >&2; exit 3");
        script(d.path(), "r", "exit 2");
        script(d.path(), "s", "echo notjson; exit 1");
        let env = env_with_path(d.path());
        let e = delegate_simple(&ExecDelegator, "p", Command::Del, b"{}", &env).unwrap_err();
        assert_eq!(
            (e.code, e.msg.as_str(), e.details.as_str()),
            (11, "later", "d")
        );
        let e = delegate_simple(&ExecDelegator, "q", Command::Del, b"{}", &env).unwrap_err();
        assert!(e.msg.contains("oops"), "{}", e.msg);
        let e = delegate_simple(&ExecDelegator, "r", Command::Del, b"{}", &env).unwrap_err();
        assert!(
            e.msg.contains("no error message: exit status 2"),
            "{}",
            e.msg
        );
        let e = delegate_simple(&ExecDelegator, "s", Command::Del, b"{}", &env).unwrap_err();
        assert!(e.msg.contains("diagnostic"), "{}", e.msg);
    }

    struct Echo;
    impl crate::skel::Plugin for Echo {
        fn name(&self) -> &'static str {
            "echo"
        }
        fn add(&self, req: &crate::skel::Request) -> Result<CniResult, CniError> {
            let mut r = CniResult::default();
            r.dns.domain = format!("{}-{}", req.env.command, req.env.vars["MARKER"]);
            Ok(r)
        }
        fn del(&self, _: &crate::skel::Request) -> Result<(), CniError> {
            Err(CniError::new(11, "busy"))
        }
        fn check(&self, _: &crate::skel::Request) -> Result<(), CniError> {
            Ok(())
        }
        fn status(&self, _: &crate::skel::Request) -> Result<(), CniError> {
            Ok(())
        }
        fn gc(&self, _: &crate::skel::Request) -> Result<(), CniError> {
            Ok(())
        }
    }

    #[test]
    fn multicall_runs_its_own_binary_in_process() {
        let d = tempfile::tempdir().unwrap();
        // A link to the running test binary stands for a hard-linked multi-call install.
        std::os::unix::fs::symlink("/proc/self/exe", d.path().join("echo")).unwrap();
        std::os::unix::fs::symlink(
            std::fs::read_link("/proc/self/exe").unwrap(),
            d.path().join("echo2"),
        )
        .unwrap();
        assert!(is_this_executable(&d.path().join("echo2")));
        assert!(!is_this_executable(Path::new("/bin/sh")));
        let mut env = env_with_path(d.path());
        env.vars.insert("CNI_NETNS_OVERRIDE".into(), "1".into());
        let plugins: [&dyn crate::skel::Plugin; 1] = [&Echo];
        let mc = MultiCallDelegator { plugins: &plugins };
        let conf = br#"{"cniVersion":"1.0.0","name":"n","type":"echo"}"#;
        let r = delegate_add(&mc, "echo", conf, &env, "1.0.0").unwrap();
        assert_eq!(r.dns.domain, "ADD-kept");
        let e = delegate_simple(&mc, "echo", Command::Del, conf, &env).unwrap_err();
        assert_eq!((e.code, e.msg.as_str()), (11, "busy"));
        // A name we do not implement is exec'd as usual.
        script(d.path(), "other", "true");
        assert!(delegate_simple(&mc, "other", Command::Del, conf, &env).is_ok());
    }
}
