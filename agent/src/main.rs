//! `flanneld`: the overlay agent binary. Flags follow flanneld's names; each can also
//! come from `FLANNELD_<FLAG>` (upper case, `-` → `_`), flags winning.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use flanneld_rs::agent::{Agent, AgentOptions, DEFAULT_LEASE_TTL};
use flanneld_rs::backend::hostgw::HostGwBackend;
use flanneld_rs::backend::vxlan::{read_mac_file, VxlanBackend};
use flanneld_rs::backend::{Backend, BackendError};
use flanneld_rs::config::NetworkConfig;
use flanneld_rs::health::{self, Status};
use flanneld_rs::iface::{self, IfaceOptions};
use flanneld_rs::lease::{LeaseAttrs, SubnetKey};
use flanneld_rs::log;
use flanneld_rs::store::etcd::{EtcdStore, DEFAULT_PREFIX};
use flanneld_rs::store::file::FileStore;
use flanneld_rs::store::{Store, StoreError};
use kernel::firewall::{AgentFirewall, NftAgentFirewall};
use kernel::{ProcSysctl, RouteSocket};

const USAGE: &str = "usage: flanneld [flags]

lease store (embedded unless --etcd-endpoints is given):
  --etcd-endpoints=URLS            comma-separated http:// etcd v3 endpoints
  --etcd-prefix=PATH               key prefix (default /coreos.com/network)
  --store-dir=DIR                  embedded store directory (default /var/lib/flannel/store)
  --net-config-path=FILE           embedded store: network config to install if none is there
interface:
  --iface=NAME|IP                  external interface (repeatable)
  --iface-regex=RE                 interface by address or name regex (repeatable)
  --public-ip=IP                   address advertised to peers
  --public-ipv6=IP                 IPv6 address advertised to peers (EnableIPv6)
lease and files:
  --subnet-file=FILE               default /run/flannel/subnet.env
  --subnet-lease-renew-margin=MIN  renew this many minutes before expiry (1..1439, default 60)
  --subnet-lease-ttl=SECONDS       TTL of our lease (default 86400)
  --vtep-mac-file=FILE             where the vxlan MAC is kept across reboots
                                   (default /var/lib/flannel/vtep-<VNI>.mac)
rules:
  --ip-masq                        masquerade traffic leaving the cluster network
  --ip-masq-fully-random-disable   masquerade without fully-random ports
  --iptables-forward-rules=BOOL    accept forwarding to/from the network (default true)
  --iptables-resync=SECONDS        firewall check period (default 5)
  --reconcile-interval=SECONDS     data-plane reconcile period (default 10)
health:
  --healthz-ip=IP                  default 127.0.0.1
  --healthz-port=PORT              0 = off (default)
  -v=N                             debug logging when N > 0
";

static SIGNALLED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    SIGNALLED.store(true, Ordering::SeqCst);
}

#[derive(Debug, thiserror::Error)]
enum MainError {
    #[error("{0}\n\n{USAGE}")]
    Usage(String),
    #[error("{0}")]
    Fatal(String),
}

/// Parsed flags: a name → values map (repeatable flags keep every value).
struct Flags {
    values: Vec<(String, String)>,
}

const KNOWN: &[&str] = &[
    "etcd-endpoints",
    "etcd-prefix",
    "store-dir",
    "net-config-path",
    "iface",
    "iface-regex",
    "public-ip",
    "public-ipv6",
    "subnet-file",
    "subnet-lease-renew-margin",
    "subnet-lease-ttl",
    "vtep-mac-file",
    "ip-masq",
    "ip-masq-fully-random-disable",
    "iptables-forward-rules",
    "iptables-resync",
    "reconcile-interval",
    "healthz-ip",
    "healthz-port",
    "v",
];
const BOOLS: &[&str] = &[
    "ip-masq",
    "ip-masq-fully-random-disable",
    "iptables-forward-rules",
];

impl Flags {
    fn parse(args: &[String]) -> Result<Flags, MainError> {
        let mut values = Vec::new();
        let mut i = 0;
        while i < args.len() {
            let a = &args[i];
            i += 1;
            let Some(body) = a.strip_prefix("--").or_else(|| a.strip_prefix('-')) else {
                return Err(MainError::Usage(format!("unexpected argument {a:?}")));
            };
            let (name, inline) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v.to_owned())),
                None => (body, None),
            };
            if name == "help" || name == "h" {
                return Err(MainError::Usage("help".into()));
            }
            if !KNOWN.contains(&name) {
                return Err(MainError::Usage(format!("unknown flag --{name}")));
            }
            let value = match inline {
                Some(v) => v,
                None if BOOLS.contains(&name) => "true".into(),
                None => {
                    let v = args
                        .get(i)
                        .ok_or_else(|| MainError::Usage(format!("--{name} needs a value")))?;
                    i += 1;
                    v.clone()
                }
            };
            values.push((name.to_owned(), value));
        }
        // FLANNELD_* for flags not given on the command line.
        for name in KNOWN {
            if values.iter().any(|(n, _)| n == name) {
                continue;
            }
            let var = format!("FLANNELD_{}", name.to_uppercase().replace('-', "_"));
            if let Ok(v) = std::env::var(&var) {
                values.push(((*name).to_owned(), v));
            }
        }
        Ok(Flags { values })
    }

    fn all(&self, name: &str) -> Vec<String> {
        self.values
            .iter()
            .filter(|(n, _)| n == name)
            .flat_map(|(_, v)| {
                v.split(',')
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn one(&self, name: &str) -> Option<&str> {
        self.values
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn parsed<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T, MainError> {
        match self.one(name) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| MainError::Usage(format!("--{name}={v:?}: not a valid value"))),
        }
    }

    fn flag(&self, name: &str, default: bool) -> Result<bool, MainError> {
        match self.one(name) {
            None => Ok(default),
            Some("true" | "1" | "yes") => Ok(true),
            Some("false" | "0" | "no") => Ok(false),
            Some(v) => Err(MainError::Usage(format!(
                "--{name}={v:?}: expected true or false"
            ))),
        }
    }
}

fn install_signal_handlers() -> Result<(), MainError> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGTERM, Signal::SIGINT] {
        // SAFETY: the handler only stores to a static atomic, which is
        // async-signal-safe; no other handler for these signals is relied upon.
        unsafe { sigaction(sig, &action) }
            .map_err(|e| MainError::Fatal(format!("install {sig} handler: {e}")))?;
    }
    Ok(())
}

fn open_store(flags: &Flags) -> Result<Box<dyn Store>, MainError> {
    let endpoints = flags.all("etcd-endpoints");
    if !endpoints.is_empty() {
        let prefix = flags.one("etcd-prefix").unwrap_or(DEFAULT_PREFIX);
        return EtcdStore::new(&endpoints, prefix)
            .map(|s| Box::new(s) as Box<dyn Store>)
            .map_err(|e| MainError::Usage(e.to_string()));
    }
    let dir = flags.one("store-dir").unwrap_or("/var/lib/flannel/store");
    let store = FileStore::open(dir).map_err(|e| MainError::Fatal(e.to_string()))?;
    if let Some(path) = flags.one("net-config-path") {
        let text = std::fs::read_to_string(path)
            .map_err(|e| MainError::Fatal(format!("read --net-config-path {path}: {e}")))?;
        NetworkConfig::parse(&text).map_err(|e| MainError::Fatal(format!("{path}: {e}")))?;
        if store
            .init_config(&text)
            .map_err(|e| MainError::Fatal(e.to_string()))?
        {
            log::info(&format!(
                "installed network config from {path} into the embedded store"
            ));
        }
    }
    Ok(Box::new(store))
}

/// flanneld retries the config fetch every second forever; so do we, until stopped.
fn fetch_config(store: &dyn Store, stop: &AtomicBool) -> Result<Option<NetworkConfig>, MainError> {
    let mut logged = String::new();
    loop {
        if stop.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let problem = match store.network_config() {
            Ok(text) => match NetworkConfig::parse(&text) {
                Ok(c) => return Ok(Some(c)),
                Err(e) => e.to_string(),
            },
            Err(e) => e.to_string(),
        };
        if problem != logged {
            log::warn(&format!("network config: {problem}; retrying every second"));
            logged = problem;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn run(args: &[String]) -> Result<(), MainError> {
    let flags = Flags::parse(args)?;
    log::set_verbosity(flags.parsed("v", 0u8)?);
    let margin_min: u64 = flags.parsed("subnet-lease-renew-margin", 60)?;
    if !(1..=1439).contains(&margin_min) {
        return Err(MainError::Usage(
            "--subnet-lease-renew-margin must be between 1 and 1439 minutes".into(),
        ));
    }
    let ttl = Duration::from_secs(flags.parsed("subnet-lease-ttl", DEFAULT_LEASE_TTL.as_secs())?);
    if ttl < Duration::from_secs(2) {
        return Err(MainError::Usage(
            "--subnet-lease-ttl must be at least 2 seconds".into(),
        ));
    }
    let public_ip = flags
        .one("public-ip")
        .map(|v| {
            v.parse::<Ipv4Addr>()
                .map_err(|_| MainError::Usage(format!("--public-ip {v:?} is not an IPv4 address")))
        })
        .transpose()?;
    let public_ipv6 = flags
        .one("public-ipv6")
        .map(|v| {
            v.parse::<Ipv6Addr>().map_err(|_| {
                MainError::Usage(format!("--public-ipv6 {v:?} is not an IPv6 address"))
            })
        })
        .transpose()?;

    install_signal_handlers()?;
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || loop {
                if SIGNALLED.load(Ordering::SeqCst) {
                    log::info("SIGTERM/SIGINT received; shutting down");
                    stop.store(true, Ordering::SeqCst);
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            })
            .map_err(|e| MainError::Fatal(format!("start signal thread: {e}")))?;
    }

    let status = Status::new();
    let port: u16 = flags.parsed("healthz-port", 0)?;
    if port != 0 {
        let ip: IpAddr = flags.parsed("healthz-ip", IpAddr::V4(Ipv4Addr::LOCALHOST))?;
        let bound = health::serve(SocketAddr::new(ip, port), status.clone())
            .map_err(|e| MainError::Fatal(format!("healthz on {ip}:{port}: {e}")))?;
        log::info(&format!(
            "health endpoint on http://{bound}/healthz and /readyz"
        ));
    }

    let store = open_store(&flags)?;
    log::info(&format!("lease store: {}", store.describe()));
    let Some(config) = fetch_config(store.as_ref(), &stop)? else {
        return Ok(());
    };

    let mut nl = RouteSocket::open().map_err(|e| MainError::Fatal(e.to_string()))?;
    let ext = iface::select(
        &mut nl,
        &IfaceOptions {
            iface: flags.all("iface"),
            iface_regex: flags.all("iface-regex"),
            public_ip,
            public_ipv6,
        },
    )
    .map_err(|e| MainError::Fatal(format!("choose external interface: {e}")))?;
    let network6 = config
        .ipv6
        .as_ref()
        .filter(|_| config.enable_ipv6)
        .map(|c| c.network);
    if let Some(net6) = network6 {
        let Some(addr6) = ext.addr6 else {
            return Err(MainError::Fatal(format!(
                "EnableIPv6: interface {} has no usable global IPv6 address",
                ext.name
            )));
        };
        log::info(&format!(
            "IPv6 overlay {net6}: interface address {addr6} public IPv6 {}",
            ext.public_ipv6.unwrap_or(addr6)
        ));
    }
    log::info(&format!(
        "external interface {} (#{}) address {} public IP {} mtu {}",
        ext.name, ext.index, ext.addr, ext.public_ip, ext.mtu
    ));

    let backend: Box<dyn Backend> = match config.backend.kind.as_str() {
        "vxlan" => {
            let mac_file = flags
                .one("vtep-mac-file")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(format!("/var/lib/flannel/vtep-{}.mac", config.backend.vni))
                });
            let hint = read_mac_file(&mac_file);
            let mut b = VxlanBackend::new(
                nl,
                Box::new(ProcSysctl::default()),
                config.backend.clone(),
                config.network,
                ext.clone(),
                hint,
            )
            .with_mac_file(mac_file);
            if let Some(net6) = network6 {
                b = b.with_ipv6(net6);
            }
            Box::new(b)
        }
        "host-gw" => {
            let mut b = HostGwBackend::new(nl, config.network, ext.clone());
            if let Some(net6) = network6 {
                b = b.with_ipv6(net6);
            }
            Box::new(b)
        }
        other => {
            return Err(MainError::Fatal(
                BackendError::Unsupported(other.to_owned()).to_string(),
            ))
        }
    };

    let ip_masq = flags.flag("ip-masq", false)?;
    let forward = flags.flag("iptables-forward-rules", true)?;
    let firewall: Option<Box<dyn AgentFirewall + Send>> = (ip_masq || forward)
        .then(|| Box::new(NftAgentFirewall::new()) as Box<dyn AgentFirewall + Send>);
    let opts = AgentOptions {
        subnet_file: PathBuf::from(
            flags
                .one("subnet-file")
                .unwrap_or("/run/flannel/subnet.env"),
        ),
        ip_masq,
        fully_random: !flags.flag("ip-masq-fully-random-disable", false)?,
        forward_rules: forward,
        lease_ttl: ttl,
        renew_margin: Duration::from_secs(margin_min * 60),
        reconcile_interval: Duration::from_secs_f64(
            flags.parsed("reconcile-interval", 10.0f64)?.max(0.1),
        ),
        rules_resync: Duration::from_secs_f64(flags.parsed("iptables-resync", 5.0f64)?.max(0.1)),
    };
    let agent = Agent {
        store,
        backend,
        firewall,
        config,
        ext,
        opts,
        status,
        stop,
    };
    match agent.run() {
        Ok(()) | Err(flanneld_rs::agent::AgentError::Stopped) => Ok(()),
        Err(e) => Err(MainError::Fatal(e.to_string())),
    }
}

const STORE_USAGE: &str = "usage: flanneld store --store-dir=DIR COMMAND
  list                         print every lease as KEY VALUE
  config                       print the network config
  set-config FILE              install FILE as the network config (validated)
  put [--ttl=SECONDS]          read `KEY VALUE` lines from stdin, write them in one
                               transaction (no --ttl: no expiry, a reservation)
  delete KEY...                delete leases
";

/// `flanneld store ...`: etcdctl's role for the embedded store.
fn store_command(args: &[String]) -> Result<(), MainError> {
    let usage = |m: &str| MainError::Usage(format!("{m}\n\n{STORE_USAGE}"));
    let mut dir = None;
    let mut ttl = None;
    let mut rest = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if let Some(v) = a.strip_prefix("--store-dir=") {
            dir = Some(v.to_owned());
        } else if a == "--store-dir" {
            dir = it.next().cloned();
        } else if let Some(v) = a.strip_prefix("--ttl=") {
            ttl = Some(Duration::from_secs(
                v.parse().map_err(|_| usage("bad --ttl"))?,
            ));
        } else {
            rest.push(a.clone());
        }
    }
    let dir = dir.ok_or_else(|| usage("--store-dir is required"))?;
    let store = FileStore::open(&dir).map_err(|e| MainError::Fatal(e.to_string()))?;
    let fatal = |e: StoreError| MainError::Fatal(e.to_string());
    match rest.first().map(String::as_str) {
        Some("list") => {
            for l in store.list().map_err(fatal)?.leases {
                println!("{} {}", l.key, l.attrs.to_json());
            }
        }
        Some("config") => print!("{}", store.network_config().map_err(fatal)?),
        Some("set-config") => {
            let path = rest
                .get(1)
                .ok_or_else(|| usage("set-config needs a file"))?;
            let text = std::fs::read_to_string(path)
                .map_err(|e| MainError::Fatal(format!("read {path}: {e}")))?;
            NetworkConfig::parse(&text).map_err(|e| MainError::Fatal(format!("{path}: {e}")))?;
            store.set_config(&text).map_err(fatal)?;
        }
        Some("put") => {
            let mut input = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut input)
                .map_err(|e| MainError::Fatal(format!("read stdin: {e}")))?;
            let mut entries = Vec::new();
            for line in input.lines().filter(|l| !l.trim().is_empty()) {
                let (k, v) = line
                    .trim()
                    .split_once(' ')
                    .ok_or_else(|| usage(&format!("bad line {line:?}")))?;
                let key = SubnetKey::parse(k).ok_or_else(|| usage(&format!("bad key {k:?}")))?;
                let attrs =
                    LeaseAttrs::from_json(v.trim()).map_err(|e| usage(&format!("{k}: {e}")))?;
                entries.push((key, attrs));
            }
            store.put_many(&entries, ttl).map_err(fatal)?;
        }
        Some("delete") => {
            for k in &rest[1..] {
                let key = SubnetKey::parse(k).ok_or_else(|| usage(&format!("bad key {k:?}")))?;
                store.delete(&key).map_err(fatal)?;
            }
        }
        _ => return Err(usage("unknown store command")),
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("store") => store_command(&args[1..]),
        _ => run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(MainError::Usage(msg)) if msg == "help" => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            log::error(&e.to_string());
            ExitCode::from(1)
        }
    }
}
