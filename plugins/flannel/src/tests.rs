//! Flow tests: every verb through `cni::skel::run_with` (so version gating and result
//! conversion are the binary's), with an in-memory filesystem and a delegator that
//! records each call and answers as scripted.

use super::*;
use cni::delegate::{DelegateOutput, Delegator};
use cni::result::{Interface, IpConfig};
use cni::skel::{run_with, Output};
use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

const SUBNET_FILE: &str = "/test/run/flannel/subnet.env";
const DATA_DIR: &str = "/test/var/lib/cni/flannel";
const V4_ENV: &str = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";
const KUBE_DELEGATE: &str = r#"{"cniVersion":"0.3.1","hairpinMode":true,"ipMasq":false,"ipam":{"ranges":[[{"subnet":"10.244.1.0/24"}]],"routes":[{"dst":"10.244.0.0/16"}],"type":"host-local"},"isDefaultGateway":true,"isGateway":true,"mtu":1450,"name":"cbr0","type":"bridge"}"#;

#[derive(Default)]
pub(crate) struct MemFs {
    files: Mutex<BTreeMap<PathBuf, Vec<u8>>>,
    /// Paths whose load answers InvalidData (a planted symlink, say).
    invalid: Mutex<Vec<PathBuf>>,
    fail_save: Mutex<bool>,
    fail_sync: Mutex<bool>,
    /// Every save and sync, in order: ("save" | "sync", id).
    writes: Mutex<Vec<(&'static str, String)>>,
    fail_remove: Mutex<bool>,
    reads: Mutex<Vec<PathBuf>>,
    /// Directories GC swept for unused shared copies.
    sweeps: Mutex<Vec<PathBuf>>,
}

impl MemFs {
    fn with_subnet_env(text: &str) -> Arc<MemFs> {
        let fs = Arc::new(MemFs::default());
        fs.put(SUBNET_FILE, text.as_bytes());
        fs
    }
    fn put(&self, path: &str, data: &[u8]) {
        self.files
            .lock()
            .unwrap()
            .insert(PathBuf::from(path), data.to_vec());
    }
    fn get(&self, path: &str) -> Option<Vec<u8>> {
        self.files.lock().unwrap().get(Path::new(path)).cloned()
    }
    fn saved(&self, cid: &str) -> Option<String> {
        self.get(&format!("{DATA_DIR}/{cid}"))
            .map(|b| String::from_utf8(b).unwrap())
    }
}

impl Fs for MemFs {
    fn read_limited(&self, path: &Path, limit: usize) -> io::Result<Vec<u8>> {
        self.reads.lock().unwrap().push(path.to_owned());
        match self.files.lock().unwrap().get(path) {
            Some(b) => Ok(b[..b.len().min(limit)].to_vec()),
            None => Err(io::ErrorKind::NotFound.into()),
        }
    }
    fn save(&self, dir: &Path, id: &str, data: &[u8]) -> io::Result<()> {
        if *self.fail_save.lock().unwrap() {
            return Err(io::Error::from_raw_os_error(28));
        }
        self.writes.lock().unwrap().push(("save", id.to_owned()));
        self.files
            .lock()
            .unwrap()
            .insert(dir.join(id), data.to_vec());
        Ok(())
    }
    fn sync(&self, dir: &Path, id: &str, _data: &[u8]) -> io::Result<()> {
        if *self.fail_sync.lock().unwrap() {
            return Err(io::Error::from_raw_os_error(5));
        }
        assert!(
            self.files.lock().unwrap().contains_key(&dir.join(id)),
            "sync of a config that was never saved"
        );
        self.writes.lock().unwrap().push(("sync", id.to_owned()));
        Ok(())
    }
    fn load(&self, dir: &Path, id: &str) -> io::Result<Option<Vec<u8>>> {
        let p = dir.join(id);
        if self.invalid.lock().unwrap().contains(&p) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "it is a symbolic link",
            ));
        }
        Ok(self.files.lock().unwrap().get(&p).cloned())
    }
    fn remove(&self, dir: &Path, id: &str) -> io::Result<()> {
        if *self.fail_remove.lock().unwrap() {
            return Err(io::Error::from_raw_os_error(13));
        }
        let p = dir.join(id);
        self.files.lock().unwrap().remove(&p);
        self.invalid.lock().unwrap().retain(|x| x != &p);
        Ok(())
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let files = self.files.lock().unwrap();
        Ok(files
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
            .filter(|n| cni::env::is_valid_id(n))
            .collect())
    }
    fn sweep_shared(&self, dir: &Path) -> io::Result<usize> {
        self.sweeps.lock().unwrap().push(dir.to_owned());
        Ok(0)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Call {
    plugin_type: String,
    command: Command,
    stdin: String,
    container_id: String,
    ifname: String,
    netns: String,
}

type Responder = Box<dyn Fn(&Call) -> DelegateOutput + Send + Sync>;

pub(crate) struct FakeDelegator {
    calls: Mutex<Vec<Call>>,
    respond: Responder,
}

impl FakeDelegator {
    fn new(respond: impl Fn(&Call) -> DelegateOutput + Send + Sync + 'static) -> FakeDelegator {
        FakeDelegator {
            calls: Mutex::new(Vec::new()),
            respond: Box::new(respond),
        }
    }
    /// A bridge that succeeds, answering ADD in the version of the config it got.
    fn ok() -> FakeDelegator {
        FakeDelegator::new(bridge_answer)
    }
    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }
}

impl Delegator for FakeDelegator {
    fn delegate(
        &self,
        plugin_type: &str,
        command: Command,
        stdin: &[u8],
        env: &Env,
    ) -> DelegateOutput {
        let call = Call {
            plugin_type: plugin_type.to_owned(),
            command,
            stdin: String::from_utf8_lossy(stdin).into_owned(),
            container_id: env.container_id.clone(),
            ifname: env.ifname.clone(),
            netns: env.netns.clone(),
        };
        self.calls.lock().unwrap().push(call.clone());
        (self.respond)(&call)
    }
}

fn bridge_answer(call: &Call) -> DelegateOutput {
    if call.command != Command::Add {
        return Ok(None);
    }
    let conf: Value = serde_json::from_str(&call.stdin).unwrap();
    let version = conf["cniVersion"].as_str().unwrap_or("").to_owned();
    let result = CniResult {
        interfaces: vec![
            Interface {
                name: "cni0".into(),
                mac: Some("0a:58:0a:f4:01:01".into()),
                ..Default::default()
            },
            Interface {
                name: "veth1234abcd".into(),
                mac: Some("aa:aa:aa:aa:aa:aa".into()),
                ..Default::default()
            },
            Interface {
                name: "eth0".into(),
                mac: Some("0a:58:0a:f4:01:02".into()),
                sandbox: Some("/var/run/netns/p".into()),
                ..Default::default()
            },
        ],
        ips: vec![IpConfig {
            address: "10.244.1.2/24".parse().unwrap(),
            gateway: Some("10.244.1.1".parse().unwrap()),
            interface: Some(2),
        }],
        ..Default::default()
    };
    result.to_value(&version).map(Some)
}

fn kube_conf(version: &str) -> String {
    format!(
        r#"{{"cniVersion":"{version}","name":"cbr0","type":"flannel","subnetFile":"{SUBNET_FILE}","dataDir":"{DATA_DIR}","delegate":{{"hairpinMode":true,"isDefaultGateway":true}}}}"#
    )
}

fn vars(cmd: &str, cid: &str) -> EnvMap {
    let mut m = EnvMap::new();
    m.insert("CNI_COMMAND".into(), cmd.into());
    m.insert("CNI_PATH".into(), "/opt/cni/bin".into());
    if matches!(cmd, "ADD" | "DEL" | "CHECK") {
        m.insert("CNI_CONTAINERID".into(), cid.into());
        m.insert("CNI_IFNAME".into(), "eth0".into());
        // skel wants a real network namespace for ADD/CHECK; ours, with the override
        // that lets a test use it (flannel itself never enters it).
        m.insert("CNI_NETNS".into(), "/proc/self/ns/net".into());
        m.insert("CNI_NETNS_OVERRIDE".into(), "1".into());
    }
    m
}

fn run(fs: &MemFs, d: &FakeDelegator, cmd: &str, cid: &str, conf: &str) -> Output {
    run_with(&Flannel { fs }, vars(cmd, cid), conf.as_bytes(), d)
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

#[track_caller]
fn expect_err(out: &Output, code: u64) -> String {
    assert_eq!(out.exit_code, 1, "{}", String::from_utf8_lossy(&out.stdout));
    let v = json(out);
    assert_eq!(v["code"].as_u64(), Some(code), "{v}");
    v["msg"].as_str().unwrap().to_owned()
}

#[track_caller]
fn expect_ok(out: &Output) {
    assert_eq!(out.exit_code, 0, "{}", String::from_utf8_lossy(&out.stdout));
}

// ---------------------------------------------------------------- ADD

#[test]
fn add_saves_exact_bytes_before_delegating() {
    let fs = MemFs::with_subnet_env(V4_ENV);
    let seen = fs.clone();
    let d = FakeDelegator::new(move |call| {
        // The file must already be on disk when the delegate runs: DEL after a crash
        // mid-ADD depends on it.
        assert_eq!(seen.saved("c1").as_deref(), Some(call.stdin.as_str()));
        bridge_answer(call)
    });
    let out = run(&fs, &d, "ADD", "c1", &kube_conf("0.3.1"));
    expect_ok(&out);
    assert_eq!(fs.saved("c1").as_deref(), Some(KUBE_DELEGATE));
    let calls = d.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(
        (calls[0].plugin_type.as_str(), calls[0].command),
        ("bridge", Command::Add)
    );
    assert_eq!(calls[0].stdin, KUBE_DELEGATE);
    let v = json(&out);
    assert_eq!(v["cniVersion"], "0.3.1");
    assert_eq!(v["ips"][0]["version"], "4");
    assert_eq!(v["ips"][0]["address"], "10.244.1.2/24");
    assert_eq!(v["ips"][0]["interface"], 2);
}

#[test]
fn add_result_is_in_the_config_version() {
    for version in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
        let fs = MemFs::with_subnet_env(V4_ENV);
        let d = FakeDelegator::ok();
        let out = run(&fs, &d, "ADD", "c1", &kube_conf(version));
        expect_ok(&out);
        let v = json(&out);
        assert_eq!(v["cniVersion"], version);
        assert_eq!(
            v["ips"][0].get("version").is_some(),
            version < "1.0.0",
            "{v}"
        );
        assert!(d.calls()[0]
            .stdin
            .contains(&format!("\"cniVersion\":\"{version}\"")));
    }
    // Delegates answering in another version are converted to ours.
    let fs = MemFs::with_subnet_env(V4_ENV);
    let d = FakeDelegator::new(|_| {
        Ok(Some(
            serde_json::json!({"cniVersion":"0.4.0","ips":[{"version":"4","address":"10.244.1.9/24"}]}),
        ))
    });
    let v = json(&run(&fs, &d, "ADD", "c1", &kube_conf("1.1.0")));
    assert_eq!(v["cniVersion"], "1.1.0");
    assert!(v["ips"][0].get("version").is_none());
}

#[test]
fn add_without_subnet_env_is_code_11_naming_path_and_key() {
    let fs = Arc::new(MemFs::default());
    let d = FakeDelegator::ok();
    let msg = expect_err(&run(&fs, &d, "ADD", "c1", &kube_conf("0.3.1")), 11);
    assert!(
        msg.starts_with("failed to load flannel 'subnet.env' file: "),
        "{msg}"
    );
    assert!(msg.contains(SUBNET_FILE), "{msg}");
    assert!(msg.contains("has not written it yet"), "{msg}");
    assert!(msg.contains("\"subnetFile\""), "{msg}");
    assert!(msg.contains("Try again later"), "{msg}");
    assert!(d.calls().is_empty());
    assert_eq!(fs.saved("c1"), None);
}

#[test]
fn add_with_bad_subnet_env_names_file_line_key() {
    let fs = MemFs::with_subnet_env("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU\nFLANNEL_IPMASQ=true\n");
    let d = FakeDelegator::ok();
    let msg = expect_err(&run(&fs, &d, "ADD", "c1", &kube_conf("0.3.1")), 999);
    assert!(
        msg.contains(&format!("{SUBNET_FILE}: line 3: FLANNEL_MTU: no '='")),
        "{msg}"
    );
    let fs = MemFs::with_subnet_env("FLANNEL_MTU=1450\n");
    let msg = expect_err(&run(&fs, &d, "ADD", "c1", &kube_conf("0.3.1")), 999);
    assert!(msg.contains(&format!("{SUBNET_FILE} is missing FLANNEL_NETWORK, FLANNEL_IPV6_NETWORK, FLANNEL_SUBNET, FLANNEL_IPV6_SUBNET, FLANNEL_IPMASQ")), "{msg}");
    assert!(d.calls().is_empty());
}

#[test]
fn add_invalid_config_touches_nothing() {
    let fs = MemFs::with_subnet_env(V4_ENV);
    let d = FakeDelegator::ok();
    let conf = format!(
        r#"{{"cniVersion":"0.3.1","name":"cbr0","dataDir":"{DATA_DIR}","subnetFile":"{SUBNET_FILE}","delegate":{{"ipam":{{}}}}}}"#
    );
    let msg = expect_err(&run(&fs, &d, "ADD", "c1", &conf), 7);
    assert_eq!(
        msg,
        "'delegate' dictionary must not have 'ipam' field, it'll be set by flannel"
    );
    assert!(d.calls().is_empty() && fs.saved("c1").is_none());
}

#[test]
fn add_save_failure_does_not_delegate() {
    let fs = MemFs::with_subnet_env(V4_ENV);
    *fs.fail_save.lock().unwrap() = true;
    let d = FakeDelegator::ok();
    let msg = expect_err(&run(&fs, &d, "ADD", "c1", &kube_conf("0.3.1")), 999);
    assert!(msg.contains(&format!("{DATA_DIR}/c1")), "{msg}");
    assert!(d.calls().is_empty());
}

#[test]
fn add_succeeds_only_once_the_saved_config_is_durable() {
    let fs = MemFs::with_subnet_env(V4_ENV);
    let d = FakeDelegator::ok();
    let out = run(&fs, &d, "ADD", "c1", &kube_conf("0.3.1"));
    assert_eq!(out.exit_code, 0, "{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(
        *fs.writes.lock().unwrap(),
        [("save", "c1".to_owned()), ("sync", "c1".to_owned())]
    );
}

#[test]
fn add_whose_saved_config_cannot_be_made_durable_is_rolled_back() {
    let fs = MemFs::with_subnet_env(V4_ENV);
    *fs.fail_sync.lock().unwrap() = true;
    let d = FakeDelegator::ok();
    let msg = expect_err(&run(&fs, &d, "ADD", "c1", &kube_conf("0.3.1")), 999);
    assert!(msg.contains(&format!("{DATA_DIR}/c1")), "{msg}");
    assert!(msg.contains("sync"), "{msg}");
    let calls = d.calls();
    assert_eq!(
        calls.iter().map(|c| c.command).collect::<Vec<_>>(),
        vec![Command::Add, Command::Del]
    );
    assert_eq!(fs.saved("c1"), None);
}

#[test]
fn add_failure_rolls_back_with_same_bytes_and_removes_file() {
    let fs = MemFs::with_subnet_env(V4_ENV);
    let d = FakeDelegator::new(|call| {
        match call.command {
        Command::Add => Err(CniError::new(11, "failed to allocate for range 0: no IP addresses available in range set: 10.244.1.2-10.244.1.254")),
        _ => Ok(None),
    }
    });
    let out = run(&fs, &d, "ADD", "c1", &kube_conf("0.3.1"));
    let msg = expect_err(&out, 11);
    assert!(
        msg.starts_with("failed to allocate for range 0"),
        "typed error passes through: {msg}"
    );
    let calls = d.calls();
    assert_eq!(
        calls.iter().map(|c| c.command).collect::<Vec<_>>(),
        vec![Command::Add, Command::Del]
    );
    assert_eq!(calls[0].stdin, calls[1].stdin);
    assert_eq!(fs.saved("c1"), None, "P13: no scratch file left behind");
}

#[test]
fn add_unreadable_result_is_rolled_back_too() {
    let fs = MemFs::with_subnet_env(V4_ENV);
    let d = FakeDelegator::new(|call| match call.command {
        Command::Add => Ok(Some(
            serde_json::json!({"cniVersion":"1.0.0","ips":[{"address":"bogus"}]}),
        )),
        _ => Ok(None),
    });
    expect_err(&run(&fs, &d, "ADD", "c1", &kube_conf("1.0.0")), 6);
    assert_eq!(d.calls().len(), 2);
    assert_eq!(fs.saved("c1"), None);
}

#[test]
fn add_failure_with_failing_rollback_keeps_file_for_the_runtime_del() {
    let fs = MemFs::with_subnet_env(V4_ENV);
    let d = FakeDelegator::new(|call| match call.command {
        Command::Add => Err(CniError::new(999, "boom")),
        _ => Err(CniError::new(999, "del boom")),
    });
    assert_eq!(
        expect_err(&run(&fs, &d, "ADD", "c1", &kube_conf("0.3.1")), 999),
        "boom"
    );
    assert_eq!(fs.saved("c1").as_deref(), Some(KUBE_DELEGATE));
}

// ---------------------------------------------------------------- DEL

#[test]
fn del_replays_saved_bytes_without_subnet_env() {
    let fs = Arc::new(MemFs::default());
    // The Go plugin's one-line file, and an older key order: replayed verbatim.
    let go_file = r#"{"type":"bridge","name":"cbr0","cniVersion":"0.3.1","ipam":{"type":"host-local","ranges":[[{"subnet":"10.244.7.0/24"}]]},"mtu":1450}"#;
    fs.put(&format!("{DATA_DIR}/c1"), go_file.as_bytes());
    let d = FakeDelegator::ok();
    expect_ok(&run(&fs, &d, "DEL", "c1", &kube_conf("0.3.1")));
    let calls = d.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(
        (calls[0].plugin_type.as_str(), calls[0].command),
        ("bridge", Command::Del)
    );
    assert_eq!(calls[0].stdin, go_file);
    assert_eq!(fs.saved("c1"), None);
    assert!(
        fs.reads.lock().unwrap().is_empty(),
        "DEL must not read subnet.env"
    );
}

#[test]
fn del_failure_keeps_file_and_passes_error() {
    let fs = Arc::new(MemFs::default());
    fs.put(&format!("{DATA_DIR}/c1"), KUBE_DELEGATE.as_bytes());
    let fail = Arc::new(Mutex::new(true));
    let f2 = fail.clone();
    let d = FakeDelegator::new(move |_| {
        if *f2.lock().unwrap() {
            Err(CniError::new(5, "cannot take lock"))
        } else {
            Ok(None)
        }
    });
    assert_eq!(
        expect_err(&run(&fs, &d, "DEL", "c1", &kube_conf("0.3.1")), 5),
        "cannot take lock"
    );
    assert_eq!(
        fs.saved("c1").as_deref(),
        Some(KUBE_DELEGATE),
        "P14: kept for the retry"
    );
    *fail.lock().unwrap() = false;
    expect_ok(&run(&fs, &d, "DEL", "c1", &kube_conf("0.3.1")));
    assert_eq!(d.calls().len(), 2);
    assert_eq!(fs.saved("c1"), None);
}

#[test]
fn del_without_file_succeeds_silently_for_the_delegate() {
    let fs = Arc::new(MemFs::default());
    let d = FakeDelegator::ok();
    expect_ok(&run(&fs, &d, "DEL", "c1", &kube_conf("0.3.1")));
    assert!(d.calls().is_empty());
}

#[test]
fn del_with_removal_failure_still_succeeds() {
    let fs = Arc::new(MemFs::default());
    fs.put(&format!("{DATA_DIR}/c1"), KUBE_DELEGATE.as_bytes());
    *fs.fail_remove.lock().unwrap() = true;
    let d = FakeDelegator::ok();
    expect_ok(&run(&fs, &d, "DEL", "c1", &kube_conf("0.3.1")));
}

#[test]
fn del_with_damaged_file_rebuilds_from_subnet_env() {
    for damaged in [
        &b""[..],
        b"{\"cniVersion\":\"0.3",
        b"[1]",
        b"{\"name\":\"cbr0\"}",
        b"\0\0\0",
    ] {
        let fs = MemFs::with_subnet_env(V4_ENV);
        fs.put(&format!("{DATA_DIR}/c1"), damaged);
        let d = FakeDelegator::ok();
        expect_ok(&run(&fs, &d, "DEL", "c1", &kube_conf("0.3.1")));
        let calls = d.calls();
        assert_eq!(calls.len(), 1, "{damaged:?}");
        assert_eq!(calls[0].command, Command::Del);
        assert_eq!(calls[0].stdin, KUBE_DELEGATE);
        assert_eq!(calls[0].container_id, "c1");
        assert_eq!(fs.saved("c1"), None);
    }
    // A planted symlink (InvalidData from the store) is treated the same way.
    let fs = MemFs::with_subnet_env(V4_ENV);
    fs.invalid
        .lock()
        .unwrap()
        .push(PathBuf::from(format!("{DATA_DIR}/c1")));
    let d = FakeDelegator::ok();
    expect_ok(&run(&fs, &d, "DEL", "c1", &kube_conf("0.3.1")));
    assert_eq!(d.calls().len(), 1);
    assert!(
        fs.invalid.lock().unwrap().is_empty(),
        "the link itself was removed"
    );
}

#[test]
fn del_with_damaged_file_and_no_subnet_env_keeps_it() {
    let fs = Arc::new(MemFs::default());
    fs.put(&format!("{DATA_DIR}/c1"), b"");
    let d = FakeDelegator::ok();
    expect_ok(&run(&fs, &d, "DEL", "c1", &kube_conf("0.3.1")));
    assert!(d.calls().is_empty());
    assert_eq!(fs.saved("c1").as_deref(), Some(""));
}

#[test]
fn del_with_damaged_file_and_failing_rebuilt_del_keeps_it() {
    let fs = MemFs::with_subnet_env(V4_ENV);
    fs.put(&format!("{DATA_DIR}/c1"), b"{");
    let d = FakeDelegator::new(|_| Err(CniError::new(999, "nope")));
    expect_ok(&run(&fs, &d, "DEL", "c1", &kube_conf("0.3.1")));
    assert_eq!(d.calls().len(), 1);
    assert_eq!(fs.saved("c1").as_deref(), Some("{"));
}

#[test]
fn del_ignores_a_bad_delegate_section() {
    let fs = Arc::new(MemFs::default());
    fs.put(&format!("{DATA_DIR}/c1"), KUBE_DELEGATE.as_bytes());
    let d = FakeDelegator::ok();
    let conf = format!(
        r#"{{"cniVersion":"0.3.1","name":"cbr0","dataDir":"{DATA_DIR}","delegate":{{"name":"x"}}}}"#
    );
    expect_ok(&run(&fs, &d, "DEL", "c1", &conf));
    assert_eq!(d.calls().len(), 1);
}

// ---------------------------------------------------------------- CHECK

#[test]
fn check_delegates_saved_config_with_prev_result() {
    let fs = Arc::new(MemFs::default());
    fs.put(&format!("{DATA_DIR}/c1"), KUBE_DELEGATE.as_bytes());
    let d = FakeDelegator::ok();
    let conf = format!(
        r#"{{"cniVersion":"1.0.0","name":"cbr0","dataDir":"{DATA_DIR}","prevResult":{{"cniVersion":"1.0.0","ips":[{{"address":"10.244.1.2/24"}}]}}}}"#
    );
    expect_ok(&run(&fs, &d, "CHECK", "c1", &conf));
    let calls = d.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(
        (calls[0].plugin_type.as_str(), calls[0].command),
        ("bridge", Command::Check)
    );
    let sent: Value = serde_json::from_str(&calls[0].stdin).unwrap();
    assert_eq!(sent["cniVersion"], "1.0.0");
    assert_eq!(sent["prevResult"]["ips"][0]["address"], "10.244.1.2/24");
    assert_eq!(sent["ipam"]["ranges"][0][0]["subnet"], "10.244.1.0/24");
    assert_eq!(
        fs.saved("c1").as_deref(),
        Some(KUBE_DELEGATE),
        "CHECK changes nothing"
    );

    let d = FakeDelegator::new(|_| Err(CniError::new(999, "eth0 has no address 10.244.1.2/24")));
    let msg = expect_err(&run(&fs, &d, "CHECK", "c1", &conf), 999);
    assert!(msg.contains("eth0 has no address"), "{msg}");
}

#[test]
fn check_without_saved_config_is_an_error() {
    let fs = Arc::new(MemFs::default());
    let d = FakeDelegator::ok();
    let conf = format!(r#"{{"cniVersion":"0.4.0","name":"cbr0","dataDir":"{DATA_DIR}"}}"#);
    let msg = expect_err(&run(&fs, &d, "CHECK", "c1", &conf), 3);
    assert!(msg.contains(&format!("{DATA_DIR}/c1")), "{msg}");
    fs.put(&format!("{DATA_DIR}/c1"), b"");
    let msg = expect_err(&run(&fs, &d, "CHECK", "c1", &conf), 999);
    assert!(msg.contains("damaged"), "{msg}");
    assert!(d.calls().is_empty());
}

// ---------------------------------------------------------------- STATUS

fn status_conf() -> String {
    kube_conf("1.1.0")
}

#[test]
fn status_is_50_while_subnet_env_is_missing_or_bad() {
    let fs = Arc::new(MemFs::default());
    let d = FakeDelegator::ok();
    let msg = expect_err(&run(&fs, &d, "STATUS", "", &status_conf()), 50);
    assert!(msg.contains(SUBNET_FILE), "{msg}");
    fs.put(SUBNET_FILE, b"FLANNEL_NETWORK=banana\n");
    let msg = expect_err(&run(&fs, &d, "STATUS", "", &status_conf()), 50);
    assert!(msg.contains("line 1: FLANNEL_NETWORK"), "{msg}");
    assert!(d.calls().is_empty());
}

#[test]
fn status_delegates_with_rebuilt_config() {
    let fs = MemFs::with_subnet_env(V4_ENV);
    let d = FakeDelegator::ok();
    expect_ok(&run(&fs, &d, "STATUS", "", &status_conf()));
    let calls = d.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].command, Command::Status);
    assert_eq!(calls[0].stdin, KUBE_DELEGATE.replace("0.3.1", "1.1.0"));
    let d = FakeDelegator::new(|_| Err(CniError::new(51, "exhausted")));
    assert_eq!(
        expect_err(&run(&fs, &d, "STATUS", "", &status_conf()), 51),
        "exhausted"
    );
}

// ---------------------------------------------------------------- GC

fn gc_conf(valid: &str) -> String {
    format!(
        r#"{{"cniVersion":"1.1.0","name":"cbr0","subnetFile":"{SUBNET_FILE}","dataDir":"{DATA_DIR}","delegate":{{"hairpinMode":true,"isDefaultGateway":true}},"cni.dev/valid-attachments":{valid},"cni.dev/attachments":{valid}}}"#
    )
}

fn saved_for(subnet: &str) -> String {
    KUBE_DELEGATE.replace("10.244.1.0/24", subnet)
}

#[test]
fn gc_releases_and_removes_stale_saved_configs_then_forwards() {
    let fs = MemFs::with_subnet_env(V4_ENV);
    fs.put(
        &format!("{DATA_DIR}/keep"),
        saved_for("10.244.1.0/24").as_bytes(),
    );
    fs.put(
        &format!("{DATA_DIR}/stale"),
        saved_for("10.244.9.0/24").as_bytes(),
    );
    fs.put(&format!("{DATA_DIR}/broken"), b"");
    fs.put(&format!("{DATA_DIR}/.stale.0123.tmp"), b"partial");
    let d = FakeDelegator::ok();
    let valid = r#"[{"containerID":"keep","ifname":"net1"}]"#;
    expect_ok(&run(&fs, &d, "GC", "", &gc_conf(valid)));

    let calls = d.calls();
    let dels: Vec<&Call> = calls.iter().filter(|c| c.command == Command::Del).collect();
    assert_eq!(dels.len(), 2);
    let broken = dels.iter().find(|c| c.container_id == "broken").unwrap();
    assert_eq!(
        broken.stdin,
        KUBE_DELEGATE.replace("0.3.1", "1.1.0"),
        "rebuilt"
    );
    let stale = dels.iter().find(|c| c.container_id == "stale").unwrap();
    assert_eq!(
        stale.stdin,
        saved_for("10.244.9.0/24"),
        "the old subnet's own bytes"
    );
    for c in &dels {
        assert_eq!((c.ifname.as_str(), c.netns.as_str()), ("eth0", ""));
    }
    let gc = calls.last().unwrap();
    assert_eq!(gc.command, Command::Gc);
    let sent: Value = serde_json::from_str(&gc.stdin).unwrap();
    assert_eq!(sent["cni.dev/valid-attachments"][0]["containerID"], "keep");
    assert_eq!(sent["cni.dev/attachments"][0]["ifname"], "net1");
    assert_eq!(sent["ipam"]["ranges"][0][0]["subnet"], "10.244.1.0/24");

    assert!(fs.saved("keep").is_some());
    assert!(fs.saved("stale").is_none() && fs.saved("broken").is_none());
    assert!(
        fs.get(&format!("{DATA_DIR}/.stale.0123.tmp")).is_some(),
        "temp files untouched"
    );
    assert_eq!(*fs.sweeps.lock().unwrap(), [PathBuf::from(DATA_DIR)]);
}

#[test]
fn gc_without_subnet_env_still_cleans_then_reports() {
    let fs = Arc::new(MemFs::default());
    fs.put(&format!("{DATA_DIR}/stale"), KUBE_DELEGATE.as_bytes());
    fs.put(&format!("{DATA_DIR}/broken"), b"{");
    let d = FakeDelegator::ok();
    let msg = expect_err(&run(&fs, &d, "GC", "", &gc_conf("[]")), 11);
    assert!(msg.contains(SUBNET_FILE), "{msg}");
    let calls = d.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(
        (calls[0].command, calls[0].container_id.as_str()),
        (Command::Del, "stale")
    );
    assert!(fs.saved("stale").is_none());
    assert!(fs.saved("broken").is_some(), "cannot rebuild: kept");
}

#[test]
fn gc_collects_errors_and_keeps_going() {
    let fs = MemFs::with_subnet_env(V4_ENV);
    for cid in ["a", "b", "c"] {
        fs.put(&format!("{DATA_DIR}/{cid}"), KUBE_DELEGATE.as_bytes());
    }
    let d = FakeDelegator::new(|call| match (call.command, call.container_id.as_str()) {
        (Command::Del, "b") => Err(CniError::new(999, "veth busy")),
        (Command::Gc, _) => Err(CniError::new(999, "gc failed")),
        _ => Ok(None),
    });
    let msg = expect_err(&run(&fs, &d, "GC", "", &gc_conf("null")), 999);
    assert!(
        msg.contains("stale container b") && msg.contains("veth busy"),
        "{msg}"
    );
    assert!(msg.contains("gc failed"), "{msg}");
    assert!(fs.saved("a").is_none() && fs.saved("c").is_none());
    assert!(fs.saved("b").is_some(), "kept for the next GC or DEL");
}

#[test]
fn gc_leaves_other_networks_alone() {
    let fs = MemFs::with_subnet_env(V4_ENV);
    fs.put(
        &format!("{DATA_DIR}/other"),
        KUBE_DELEGATE.replace("cbr0", "net2").as_bytes(),
    );
    let d = FakeDelegator::ok();
    expect_ok(&run(&fs, &d, "GC", "", &gc_conf("[]")));
    assert!(fs.saved("other").is_some());
    assert!(d.calls().iter().all(|c| c.command == Command::Gc));
}

#[test]
fn gc_with_malformed_list_touches_nothing() {
    let fs = MemFs::with_subnet_env(V4_ENV);
    fs.put(&format!("{DATA_DIR}/a"), KUBE_DELEGATE.as_bytes());
    let d = FakeDelegator::ok();
    expect_err(
        &run(&fs, &d, "GC", "", &gc_conf(r#"[{"containerID":1}]"#)),
        7,
    );
    assert!(d.calls().is_empty());
    assert!(fs.saved("a").is_some());
}

#[test]
fn gc_reads_the_old_attachments_key() {
    let fs = MemFs::with_subnet_env(V4_ENV);
    fs.put(&format!("{DATA_DIR}/a"), KUBE_DELEGATE.as_bytes());
    let d = FakeDelegator::ok();
    let conf = format!(
        r#"{{"cniVersion":"1.1.0","name":"cbr0","subnetFile":"{SUBNET_FILE}","dataDir":"{DATA_DIR}","cni.dev/attachments":[{{"containerID":"a","ifname":"eth0"}}]}}"#
    );
    expect_ok(&run(&fs, &d, "GC", "", &conf));
    assert!(fs.saved("a").is_some());
    assert_eq!(d.calls().len(), 1);
    assert_eq!(d.calls()[0].command, Command::Gc);
}

// ---------------------------------------------------------------- no panics

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn line() -> impl Strategy<Value = String> {
        let key = prop_oneof![
            Just("FLANNEL_NETWORK"),
            Just("FLANNEL_SUBNET"),
            Just("FLANNEL_IPV6_NETWORK"),
            Just("FLANNEL_IPV6_SUBNET"),
            Just("FLANNEL_MTU"),
            Just("FLANNEL_IPMASQ"),
            Just("OTHER"),
        ];
        let value = prop_oneof![
            Just("10.244.0.0/16".to_owned()),
            Just("10.244.1.1/24".to_owned()),
            Just("fd00::/56,fd00::1/56".to_owned()),
            Just("1450".to_owned()),
            Just("true".to_owned()),
            "[ -~]{0,20}",
            "[0-9./:,a-f]{0,24}",
        ];
        (key, prop::option::of(value), any::<bool>()).prop_map(|(k, v, crlf)| {
            let mut s = match v {
                Some(v) => format!("{k}={v}"),
                None => k.to_owned(),
            };
            if crlf {
                s.push('\r');
            }
            s
        })
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            "[ -~]{0,10}".prop_map(Value::String),
            Just(Value::String("bridge".into())),
            Just(Value::String("10.0.0.0/8".into())),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("type".to_owned()),
                        Just("name".to_owned()),
                        Just("ipam".to_owned()),
                        Just("routes".to_owned()),
                        Just("dst".to_owned()),
                        Just("gw".to_owned()),
                        Just("mtu".to_owned()),
                        Just("ipMasq".to_owned()),
                        "[a-z]{1,5}",
                    ],
                    inner,
                    0..4
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn subnet_env_never_panics(lines in prop::collection::vec(line(), 0..10), bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let p = Path::new("/x/subnet.env");
            if let Ok(e) = subnet_env::parse(p, lines.join("\n").as_bytes()) {
                prop_assert!(!(e.networks.is_empty() && e.ipv6_networks.is_empty()));
                prop_assert!(e.subnet.is_some() || e.ipv6_subnet.is_some());
            }
            let _ = subnet_env::parse(p, &bytes);
        }

        #[test]
        fn random_configs_never_panic(
            delegate in json_value(),
            ipam in json_value(),
            runtime in json_value(),
            data_dir in prop_oneof![Just(Value::String(DATA_DIR.into())), json_value()],
            saved in prop::option::of(prop::collection::vec(any::<u8>(), 0..40)),
            version in prop_oneof![Just("0.3.1"), Just("0.4.0"), Just("1.0.0"), Just("1.1.0"), Just("")],
        ) {
            let mut conf = serde_json::Map::new();
            conf.insert("name".into(), "cbr0".into());
            conf.insert("cniVersion".into(), version.into());
            conf.insert("subnetFile".into(), SUBNET_FILE.into());
            conf.insert("dataDir".into(), data_dir);
            conf.insert("delegate".into(), delegate);
            conf.insert("ipam".into(), ipam);
            conf.insert("runtimeConfig".into(), runtime);
            conf.insert("prevResult".into(), serde_json::json!({}));
            let text = serde_json::to_string(&Value::Object(conf)).unwrap();
            for cmd in ["ADD", "DEL", "CHECK", "STATUS", "GC"] {
                let fs = MemFs::with_subnet_env(V4_ENV);
                if let Some(s) = &saved {
                    fs.put(&format!("{DATA_DIR}/c1"), s);
                }
                let d = FakeDelegator::ok();
                let out = run(&fs, &d, cmd, "c1", &text);
                if cmd == "ADD" && out.exit_code == 0 {
                    // Wherever dataDir pointed (null and "" mean the default).
                    let sent = d.calls()[0].stdin.clone();
                    let parsed = cni::NetConf::parse(text.as_bytes()).unwrap();
                    let dir = Locations::from_netconf(&parsed).unwrap().data_dir;
                    let saved = fs.files.lock().unwrap().get(&dir.join("c1")).cloned();
                    prop_assert_eq!(saved, Some(sent.clone().into_bytes()));
                    let v: Value = serde_json::from_str(&sent).unwrap();
                    prop_assert_eq!(&v["name"], "cbr0");
                }
            }
        }
    }
}
