//! Command dispatch: what every plugin binary does around its own logic (read env and
//! stdin, validate, gate by version, dispatch, print the answer, set the exit status).

use crate::config::NetConf;
use crate::delegate::{Delegator, ExecDelegator};
use crate::env::{Command, Env, EnvMap};
use crate::error::{code, CniError};
use crate::log;
use crate::result::CniResult;
use crate::version::{self, Version};
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::time::Instant;

/// One invocation, as a plugin sees it.
pub struct Request<'a> {
    pub env: &'a Env,
    pub conf: &'a NetConf,
    /// The exact bytes received: delegates get them unchanged.
    pub stdin: &'a [u8],
    pub delegator: &'a dyn Delegator,
}

/// A plugin's logic. Verbs a plugin has nothing to do for still get a deliberate
/// implementation: a silent success would hide leaks (Go's bridge has no GC, and
/// flannel's CHECK/STATUS/GC answer success without asking anyone).
pub trait Plugin: Sync {
    /// The binary name (`bridge`, `host-local`, `flannel`).
    fn name(&self) -> &'static str;
    fn add(&self, req: &Request) -> Result<CniResult, CniError>;
    fn del(&self, req: &Request) -> Result<(), CniError>;
    fn check(&self, req: &Request) -> Result<(), CniError>;
    fn status(&self, req: &Request) -> Result<(), CniError>;
    fn gc(&self, req: &Request) -> Result<(), CniError>;
}

/// What the process prints on stdout and its exit status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub stdout: Vec<u8>,
    pub exit_code: i32,
}

pub fn about(plugin: &dyn Plugin) -> String {
    format!(
        "CNI {} plugin (flannel-cni-rs {})\nCNI protocol versions supported: {}",
        plugin.name(),
        env!("CARGO_PKG_VERSION"),
        version::SUPPORTED.join(", ")
    )
}

/// Runs one invocation with an explicit environment and stdin, so the same path serves
/// the real binary, in-process delegation and tests.
pub fn run_with(
    plugin: &dyn Plugin,
    vars: EnvMap,
    stdin: &[u8],
    delegator: &dyn Delegator,
) -> Output {
    let started = Instant::now();
    let env = match Env::from_map(vars) {
        Ok(env) => env,
        Err(e) => return error_output(&e, &peek_version(stdin)),
    };
    if env.command == Command::Version {
        return json_output(&version::version_answer(stdin), 0);
    }
    let conf = match NetConf::parse(stdin) {
        Ok(c) => c,
        Err(e) => return error_output(&e, &peek_version(stdin)),
    };
    let req = Request {
        env: &env,
        conf: &conf,
        stdin,
        delegator,
    };
    let outcome = dispatch(plugin, &req);
    log_invocation(plugin, &req, &outcome, started);
    match outcome {
        Ok(Some(v)) => json_output(&v, 0),
        Ok(None) => Output {
            stdout: Vec::new(),
            exit_code: 0,
        },
        Err(e) => error_output(&e, &conf.cni_version),
    }
}

fn dispatch(plugin: &dyn Plugin, req: &Request) -> Result<Option<serde_json::Value>, CniError> {
    let (cmd, v) = (req.env.command, req.conf.version);
    let gate = |min: Version| -> Result<(), CniError> {
        if v < min {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!("config version does not allow {cmd}"),
            )
            .with_details(format!("cniVersion is {:?}", req.conf.cni_version)));
        }
        Ok(())
    };
    match cmd {
        Command::Check => gate(Version::V0_4_0)?,
        Command::Status | Command::Gc => gate(Version::V1_1_0)?,
        _ => {}
    }
    if matches!(cmd, Command::Add | Command::Check) {
        check_is_netns(&req.env.netns)?;
    }
    if matches!(cmd, Command::Add | Command::Check | Command::Del) {
        check_not_own_netns(req.env)?;
    }
    match cmd {
        Command::Add => {
            let result = plugin.add(req)?;
            result.to_value(&req.conf.cni_version).map(Some)
        }
        Command::Del => plugin.del(req).map(|_| None),
        Command::Check => plugin.check(req).map(|_| None),
        Command::Status => plugin.status(req).map(|_| None),
        Command::Gc => plugin.gc(req).map(|_| None),
        Command::Version => Ok(None),
    }
}

/// ADD and CHECK act inside CNI_NETNS, so it must be a network namespace: refusing
/// anything else here, before any plugin acts, means a bad path can never leave half an
/// attachment behind (a saved config, a reservation, a veth) for DEL to find. DEL gets no
/// such check: it must succeed when the namespace is gone or was never one.
fn check_is_netns(path: &str) -> Result<(), CniError> {
    use std::os::fd::AsRawFd;
    let bad = |why: String| {
        CniError::invalid_env(format!(
            "CNI_NETNS {path:?} is not a network namespace: {why}"
        ))
    };
    if !path.starts_with('/') {
        return Err(bad("the path must be absolute".into()));
    }
    let f = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
    // NS_GET_NSTYPE (`_IO(0xb7, 0x3)`, <linux/nsfs.h>) answers only on namespace files
    // (ENOTTY elsewhere) and tells a network namespace from a mount or pid one.
    const NS_GET_NSTYPE: libc::c_ulong = 0xb703;
    // SAFETY: NS_GET_NSTYPE takes no argument and writes no memory; the fd is owned by
    // `f` and stays open for the duration of the call.
    let kind = unsafe { libc::ioctl(f.as_raw_fd(), NS_GET_NSTYPE as _) };
    if kind < 0 {
        return Err(bad(format!(
            "not a namespace file ({})",
            std::io::Error::last_os_error()
        )));
    }
    if kind != libc::CLONE_NEWNET {
        return Err(bad("it is another kind of namespace".into()));
    }
    Ok(())
}

/// Go's skel refuses a CNI_NETNS that is the plugin's own namespace (code 8), since
/// configuring "the pod" would then rewire the node. Unlike skel, we check before acting.
fn check_not_own_netns(env: &Env) -> Result<(), CniError> {
    if env.netns.is_empty() {
        return Ok(());
    }
    let overridden = env
        .vars
        .get("CNI_NETNS_OVERRIDE")
        .is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if overridden {
        return Ok(());
    }
    // The calling thread's namespace, not the process's: an in-process delegate may run
    // on a helper thread while the main thread is inside the pod's namespace for a
    // moment (bridge's pod sysctls), and that is not the namespace this plugin works in.
    let (Ok(target), Ok(own)) = (
        std::fs::metadata(&env.netns),
        std::fs::metadata("/proc/thread-self/ns/net"),
    ) else {
        // A missing netns is the plugin's business (DEL must still release IPAM).
        return Ok(());
    };
    if target.dev() == own.dev() && target.ino() == own.ino() {
        return Err(CniError::new(
            code::INVALID_NETNS,
            "plugin's netns and netns from CNI_NETNS should not be the same",
        )
        .with_details(env.netns.clone()));
    }
    Ok(())
}

fn log_invocation(
    plugin: &dyn Plugin,
    req: &Request,
    outcome: &Result<Option<serde_json::Value>, CniError>,
    started: Instant,
) {
    let Some(path) = req.conf.get("logFile").and_then(|v| v.as_str()) else {
        return;
    };
    let configured = log::Level::parse(
        req.conf
            .get("logLevel")
            .and_then(|v| v.as_str())
            .unwrap_or("info"),
    );
    let env = req.env;
    let mut line = format!(
        "plugin={} cmd={} net={} cid={:?} ifname={:?} netns={:?}",
        plugin.name(),
        env.command,
        req.conf.name,
        env.container_id,
        env.ifname,
        env.netns
    );
    let level = match outcome {
        Ok(Some(v)) => {
            line.push_str(&format!(" result=ok answer={v}"));
            log::Level::Info
        }
        Ok(None) => {
            line.push_str(" result=ok");
            log::Level::Info
        }
        Err(e) => {
            line.push_str(&format!(
                " result=error code={} msg={:?}",
                e.code,
                e.to_string()
            ));
            log::Level::Error
        }
    };
    line.push_str(&format!(
        " duration_ms={:.3}",
        started.elapsed().as_secs_f64() * 1000.0
    ));
    log::append(path, configured, level, &line);
}

fn peek_version(stdin: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_owned))
        .filter(|v| version::SUPPORTED.contains(&v.as_str()))
        .unwrap_or_else(|| version::CURRENT.to_owned())
}

fn json_output(v: &serde_json::Value, exit_code: i32) -> Output {
    // Go prints results and errors with 4-space indentation; keep the look operators know.
    let mut stdout = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut stdout, fmt);
    if serde::Serialize::serialize(v, &mut ser).is_err() {
        stdout = v.to_string().into_bytes();
    }
    stdout.push(b'\n');
    Output { stdout, exit_code }
}

fn error_output(e: &CniError, cni_version: &str) -> Output {
    json_output(&e.to_json(cni_version), 1)
}

/// The binary's whole `main`: real environment, real stdin, exec delegation.
pub fn main(plugin: &dyn Plugin) -> ! {
    main_with(plugin, &ExecDelegator)
}

pub fn main_with(plugin: &dyn Plugin, delegator: &dyn Delegator) -> ! {
    install_panic_hook();
    let vars: EnvMap = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    if vars.get("CNI_COMMAND").is_none_or(|c| c.is_empty()) {
        eprintln!("{}", about(plugin));
        std::process::exit(0);
    }
    let mut stdin = Vec::new();
    let read = std::io::stdin()
        .lock()
        .take(crate::config::MAX_CONFIG_BYTES as u64 + 1)
        .read_to_end(&mut stdin);
    let out = match read {
        Ok(_) => run_with(plugin, vars, &stdin, delegator),
        Err(e) => error_output(
            &CniError::new(code::IO_FAILURE, format!("error reading from stdin: {e}")),
            version::CURRENT,
        ),
    };
    let mut so = std::io::stdout().lock();
    let _ = so.write_all(&out.stdout);
    let _ = so.flush();
    std::process::exit(out.exit_code);
}

/// `main` of the multi-call binary: the plugin is chosen by the name it was invoked as
/// (the runtime execs `<CNI_PATH dir>/<type>`), and delegates that are this same binary
/// run in-process.
pub fn multicall_main(plugins: &[&dyn Plugin]) -> ! {
    let argv0 = std::env::args_os().next().unwrap_or_default();
    let name = std::path::Path::new(&argv0)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match plugins.iter().find(|p| p.name() == name) {
        Some(plugin) => main_with(*plugin, &crate::delegate::MultiCallDelegator { plugins }),
        None => {
            let names: Vec<&str> = plugins.iter().map(|p| p.name()).collect();
            eprintln!(
                "this is the multi-call binary of flannel-cni-rs {}; install it under one of the names {:?} (hard links or symlinks) and let the runtime exec that name",
                env!("CARGO_PKG_VERSION"),
                names
            );
            std::process::exit(2);
        }
    }
}

/// A panic must still produce an error JSON on stdout: libcni reports an empty stdout as
/// "netplugin failed with no error message" (cni#732), which tells the operator nothing.
/// The hook runs before the abort of `panic = "abort"` builds too.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let msg = format!("internal error (this is a bug in the plugin): {info}");
        let e = CniError::internal(msg.clone());
        let out = error_output(&e, version::CURRENT);
        let _ = std::io::stdout().write_all(&out.stdout);
        let _ = std::io::stdout().flush();
        eprintln!("{msg}");
    }));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::result::IpConfig;

    struct Fake;
    impl Plugin for Fake {
        fn name(&self) -> &'static str {
            "fake"
        }
        fn add(&self, req: &Request) -> Result<CniResult, CniError> {
            if req.env.container_id == "fail" {
                return Err(CniError::new(11, "try later"));
            }
            Ok(CniResult {
                ips: vec![IpConfig {
                    address: "10.0.0.2/24".parse().unwrap(),
                    gateway: None,
                    interface: None,
                }],
                ..Default::default()
            })
        }
        fn del(&self, _: &Request) -> Result<(), CniError> {
            Ok(())
        }
        fn check(&self, _: &Request) -> Result<(), CniError> {
            Ok(())
        }
        fn status(&self, _: &Request) -> Result<(), CniError> {
            Err(CniError::new(50, "not ready"))
        }
        fn gc(&self, _: &Request) -> Result<(), CniError> {
            Ok(())
        }
    }

    fn vars(cmd: &str, cid: &str) -> EnvMap {
        [
            ("CNI_COMMAND", cmd),
            ("CNI_CONTAINERID", cid),
            ("CNI_NETNS", "/proc/self/ns/net"),
            ("CNI_NETNS_OVERRIDE", "1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/opt/cni/bin"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    fn run(cmd: &str, cid: &str, stdin: &str) -> (serde_json::Value, i32) {
        let out = run_with(&Fake, vars(cmd, cid), stdin.as_bytes(), &ExecDelegator);
        let v = if out.stdout.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&out.stdout).unwrap()
        };
        (v, out.exit_code)
    }

    #[test]
    fn add_prints_in_config_version() {
        let (v, code) = run(
            "ADD",
            "c1",
            r#"{"cniVersion":"0.3.1","name":"n","type":"fake"}"#,
        );
        assert_eq!(code, 0);
        assert_eq!(v["cniVersion"], "0.3.1");
        assert_eq!(v["ips"][0]["version"], "4");
        let (v, _) = run("ADD", "c1", r#"{"cniVersion":"0.2.0","name":"n"}"#);
        assert_eq!(v["ip4"]["ip"], "10.0.0.2/24");
    }

    #[test]
    fn errors_are_json_with_codes() {
        let (v, code) = run("ADD", "fail", r#"{"cniVersion":"1.0.0","name":"n"}"#);
        assert_eq!((code, v["code"].as_u64()), (1, Some(11)));
        let (v, _) = run("ADD", "c1", "not json");
        assert_eq!(v["code"], 6);
        let (v, _) = run("ADD", "bad/id", r#"{"cniVersion":"1.0.0","name":"n"}"#);
        assert_eq!(v["code"], 4);
        let (v, _) = run("CHECK", "c1", r#"{"cniVersion":"0.3.1","name":"n"}"#);
        assert_eq!(v["code"], 1);
        let (v, _) = run("GC", "c1", r#"{"cniVersion":"1.0.0","name":"n"}"#);
        assert_eq!(v["code"], 1);
        let (v, code) = run("STATUS", "", r#"{"cniVersion":"1.1.0","name":"n"}"#);
        assert_eq!((code, v["code"].as_u64()), (1, Some(50)));
    }

    #[test]
    fn version_never_fails() {
        let (v, code) = run("VERSION", "", "");
        assert_eq!(code, 0);
        assert_eq!(v["supportedVersions"].as_array().unwrap().len(), 7);
    }

    #[test]
    fn own_netns_is_refused() {
        let mut env = vars("ADD", "c1");
        env.remove("CNI_NETNS_OVERRIDE");
        let out = run_with(
            &Fake,
            env.clone(),
            br#"{"cniVersion":"1.0.0","name":"n"}"#,
            &ExecDelegator,
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["code"], 8);
        env.insert("CNI_NETNS_OVERRIDE".into(), "true".into());
        let out = run_with(
            &Fake,
            env,
            br#"{"cniVersion":"1.0.0","name":"n"}"#,
            &ExecDelegator,
        );
        assert_eq!(out.exit_code, 0);
    }

    /// The check looks at the calling thread's namespace: an in-process delegate runs on a
    /// helper thread while the main thread may be inside the pod's namespace.
    #[test]
    fn own_netns_is_the_calling_threads() {
        std::thread::spawn(|| {
            // SAFETY: unshare only changes this thread's namespace; no memory is involved.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                eprintln!("skipped: unshare(CLONE_NEWNET) needs root");
                return;
            }
            let stdin = br#"{"cniVersion":"1.0.0","name":"n"}"#;
            let mut env = vars("ADD", "c1");
            env.remove("CNI_NETNS_OVERRIDE");
            env.insert("CNI_NETNS".into(), "/proc/thread-self/ns/net".into());
            let out = run_with(&Fake, env.clone(), stdin, &ExecDelegator);
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(v["code"], 8, "this thread's own namespace is refused");
            // The main thread's namespace is another one now: a pod's, to this thread.
            env.insert("CNI_NETNS".into(), "/proc/self/ns/net".into());
            let out = run_with(&Fake, env, stdin, &ExecDelegator);
            assert_eq!(out.exit_code, 0, "{}", String::from_utf8_lossy(&out.stdout));
        })
        .join()
        .unwrap();
    }

    #[test]
    fn log_file_records_invocations() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("cni.log");
        let conf = format!(
            r#"{{"cniVersion":"1.0.0","name":"n","logFile":{:?}}}"#,
            log.to_str().unwrap()
        );
        run("ADD", "c1", &conf);
        run("ADD", "fail", &conf);
        let text = std::fs::read_to_string(&log).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(
            lines[0].contains("cmd=ADD")
                && lines[0].contains("result=ok")
                && lines[0].contains("10.0.0.2/24")
        );
        assert!(lines[1].contains("level=error") && lines[1].contains("code=11"));
    }

    #[test]
    fn add_needs_a_network_namespace() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("f");
        std::fs::write(&file, b"").unwrap();
        for bad in [
            file.to_str().unwrap(),
            "/proc/self/ns/mnt",
            "relative",
            "/nonexistent/ns",
        ] {
            let mut env = vars("ADD", "c1");
            env.insert("CNI_NETNS".into(), bad.into());
            let out = run_with(
                &Fake,
                env,
                br#"{"cniVersion":"1.0.0","name":"n"}"#,
                &ExecDelegator,
            );
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(v["code"], 4, "{bad}: {v}");
            assert!(v["msg"].as_str().unwrap().contains(bad));
        }
        // DEL must go through (a gone namespace is normal there).
        let mut env = vars("DEL", "c1");
        env.insert("CNI_NETNS".into(), "/nonexistent/ns".into());
        let out = run_with(
            &Fake,
            env,
            br#"{"cniVersion":"1.0.0","name":"n"}"#,
            &ExecDelegator,
        );
        assert_eq!(out.exit_code, 0);
    }
}
