//! etcd v3 through its JSON gRPC gateway (etcd 3.4's `/v3/...` paths), on the tiny
//! HTTP client next door: no gRPC stack, no async runtime.
//!
//! Key layout and values are flanneld's (`<prefix>/config`,
//! `<prefix>/subnets/<a.b.c.d-len>`, `LeaseAttrs` JSON), and leases are created the way
//! flanneld creates them (grant a 24 h etcd lease, then a transaction "create if
//! version == 0"), so real flanneld nodes and this agent share one etcd. Unlike
//! flanneld, renewal is a keepalive of the same etcd lease (peers see no event) and a
//! key without an etcd lease is honoured as a permanent reservation.

use std::io::Read;
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};

use super::base64;
use super::http::{self, Endpoint, HttpError};
use super::{decode_lease, Listing, Store, StoreError, Watch, WatchBatch, WatchEvent};
use crate::lease::{Lease, LeaseAttrs, SubnetKey};
use crate::log;

/// flanneld's default `--etcd-prefix`.
pub const DEFAULT_PREFIX: &str = "/coreos.com/network";
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// etcd v3 store.
#[derive(Debug)]
pub struct EtcdStore {
    endpoints: Vec<Endpoint>,
    urls: Vec<String>,
    prefix: String,
    /// Index of the endpoint that answered last; tried first next time.
    current: AtomicUsize,
}

/// int64 fields come as JSON strings from the gateway; accept numbers too.
fn int(v: &Value, key: &str) -> i64 {
    match v.get(key) {
        Some(Value::String(s)) => s.parse().unwrap_or(0),
        Some(Value::Number(n)) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

fn b64(s: &str) -> String {
    base64::encode(s.as_bytes())
}

fn unb64(v: &Value, key: &str) -> Option<String> {
    let text = v.get(key)?.as_str()?;
    String::from_utf8(base64::decode(text)?).ok()
}

/// The smallest key greater than every key starting with `prefix` (etcd's
/// `WithPrefix`).
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

impl EtcdStore {
    /// `urls`: `http://host:port` endpoints (tried in turn); `prefix`: flanneld's
    /// `--etcd-prefix`.
    pub fn new(urls: &[String], prefix: &str) -> Result<Self, StoreError> {
        let endpoints = urls
            .iter()
            .map(|u| Endpoint::parse(u.trim()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|reason| StoreError::Protocol {
                op: "parse",
                object: "--etcd-endpoints".into(),
                reason,
            })?;
        if endpoints.is_empty() {
            return Err(StoreError::Protocol {
                op: "parse",
                object: "--etcd-endpoints".into(),
                reason: "no endpoint given".into(),
            });
        }
        Ok(EtcdStore {
            endpoints,
            urls: urls.to_vec(),
            prefix: prefix.trim_end_matches('/').to_owned(),
            current: AtomicUsize::new(0),
        })
    }

    fn subnets_prefix(&self) -> String {
        format!("{}/subnets/", self.prefix)
    }

    fn lease_key(&self, key: &SubnetKey) -> String {
        format!("{}{key}", self.subnets_prefix())
    }

    /// Runs `f` against each endpoint, starting with the last good one, until one
    /// gives an answer that is not a connection failure.
    fn with_endpoint<T>(
        &self,
        op: &'static str,
        object: &str,
        f: impl Fn(&Endpoint) -> Result<T, HttpError>,
    ) -> Result<T, StoreError> {
        let start = self.current.load(Ordering::Relaxed);
        let n = self.endpoints.len();
        let mut last = None;
        for i in 0..n {
            let idx = (start + i) % n;
            match f(&self.endpoints[idx]) {
                Ok(v) => {
                    self.current.store(idx, Ordering::Relaxed);
                    return Ok(v);
                }
                Err(HttpError::Io(e)) => last = Some((idx, e)),
                Err(HttpError::Status { status, body }) => {
                    let parsed: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                    let message = parsed
                        .get("message")
                        .or_else(|| parsed.get("error"))
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                        .unwrap_or(body);
                    return Err(StoreError::Server {
                        op,
                        object: object.to_owned(),
                        code: parsed
                            .get("code")
                            .and_then(Value::as_i64)
                            .unwrap_or(i64::from(status)),
                        message,
                    });
                }
                Err(HttpError::Protocol(reason)) => {
                    return Err(StoreError::Protocol {
                        op,
                        object: format!("{object} at {}", self.urls[idx]),
                        reason,
                    })
                }
            }
        }
        let (idx, source) = last.unwrap_or((0, std::io::Error::other("no endpoint")));
        Err(StoreError::Io {
            op,
            object: format!("{object} (etcd {}, last tried)", self.urls[idx]),
            source,
        })
    }

    fn call(
        &self,
        op: &'static str,
        object: &str,
        path: &str,
        body: Value,
    ) -> Result<Value, StoreError> {
        self.with_endpoint(op, object, |ep| ep.post(path, &body, REQUEST_TIMEOUT))
    }

    fn grant(&self, ttl: Duration, object: &str) -> Result<i64, StoreError> {
        let r = self.call(
            "grant lease for",
            object,
            "/v3/lease/grant",
            json!({"TTL": ttl.as_secs().max(1)}),
        )?;
        match int(&r, "ID") {
            0 => Err(StoreError::Protocol {
                op: "grant lease for",
                object: object.to_owned(),
                reason: format!("no lease ID in {r}"),
            }),
            id => Ok(id),
        }
    }

    fn revoke(&self, id: i64, object: &str) {
        if let Err(e) = self.call(
            "revoke lease for",
            object,
            "/v3/lease/revoke",
            json!({"ID": id}),
        ) {
            log::debug(&format!("{e}"));
        }
    }

    /// The kv of one key, if present.
    fn get(&self, key: &str) -> Result<Option<Value>, StoreError> {
        let r = self.call("get", key, "/v3/kv/range", json!({"key": b64(key)}))?;
        Ok(r.get("kvs")
            .and_then(Value::as_array)
            .and_then(|a| a.first())
            .cloned())
    }

    fn put(&self, key: &str, value: &str, lease: i64) -> Result<(), StoreError> {
        let mut body = json!({"key": b64(key), "value": b64(value)});
        if lease != 0 {
            body["lease"] = json!(lease.to_string());
        }
        self.call("put", key, "/v3/kv/put", body).map(drop)
    }

    fn kv_to_lease(&self, kv: &Value, expiration: Option<SystemTime>) -> Option<Lease> {
        kv_to_lease(&self.subnets_prefix(), kv, expiration)
    }
}

/// The conditions of a lease's creating txn.
/// - No key in `[<v4>, <v4>')`: that range holds exactly the v4-only key and every
///   dual-stack key `<v4>&…` (`'` follows `&`; digits, which would continue the prefix
///   length, sort after both), so a node never gets another's IPv4 subnet.
/// - In dual stack, with the listing's revision known: no lease key modified after
///   it. The IPv6 subnet is the key's suffix, which no range compare can reach; this
///   makes the creation fail, and the caller re-list, whenever anything (another
///   node's creation) could have taken it since. Not used for IPv4 alone, where it
///   would only serialise nodes joining at once. Our renewals are lease keep-alives,
///   which leave keys' revisions alone.
fn create_compares(subnets_prefix: &str, key: &SubnetKey, planned_at: Option<i64>) -> Vec<Value> {
    let v4 = format!("{subnets_prefix}{}", SubnetKey::v4(key.v4));
    let mut compare = vec![json!({
        "key": b64(&v4),
        "range_end": b64(&format!("{v4}'")),
        "target": "VERSION",
        "result": "EQUAL",
        "version": "0",
    })];
    if let (Some(_), Some(rev)) = (key.v6, planned_at) {
        compare.push(json!({
            "key": b64(subnets_prefix),
            "range_end": base64::encode(&prefix_end(subnets_prefix)),
            "target": "MOD",
            "result": "LESS",
            "mod_revision": (rev + 1).to_string(),
        }));
    }
    compare
}

/// A lease from a gateway kv under `subnets_prefix`; None (logged) for anything else.
fn kv_to_lease(subnets_prefix: &str, kv: &Value, expiration: Option<SystemTime>) -> Option<Lease> {
    let key = unb64(kv, "key")?;
    let name = key.strip_prefix(subnets_prefix)?;
    let value = unb64(kv, "value").unwrap_or_default();
    match decode_lease(name, &value, expiration, int(kv, "lease")) {
        Ok(l) => Some(l),
        Err(why) => {
            log::warn(&format!("etcd: skipping {key}: {why}"));
            None
        }
    }
}

impl Store for EtcdStore {
    fn describe(&self) -> String {
        format!("etcd {} prefix {}", self.urls.join(","), self.prefix)
    }

    fn network_config(&self) -> Result<String, StoreError> {
        let key = format!("{}/config", self.prefix);
        let kv = self.get(&key)?.ok_or_else(|| StoreError::ConfigNotFound {
            location: format!(
                "etcd v3 key {key} (a config written with the etcd v2 API is invisible to v3)"
            ),
        })?;
        unb64(&kv, "value").ok_or_else(|| StoreError::Protocol {
            op: "get",
            object: key,
            reason: "value is not UTF-8 base64".into(),
        })
    }

    fn list(&self) -> Result<Listing, StoreError> {
        let prefix = self.subnets_prefix();
        let r = self.call(
            "list",
            &prefix,
            "/v3/kv/range",
            json!({"key": b64(&prefix), "range_end": base64::encode(&prefix_end(&prefix))}),
        )?;
        let leases = r
            .get("kvs")
            .and_then(Value::as_array)
            .map(|kvs| {
                kvs.iter()
                    .filter_map(|kv| self.kv_to_lease(kv, None))
                    .collect()
            })
            .unwrap_or_default();
        let revision = r.get("header").map(|h| int(h, "revision")).unwrap_or(0);
        Ok(Listing { leases, revision })
    }

    fn create(
        &self,
        key: &SubnetKey,
        attrs: &LeaseAttrs,
        ttl: Duration,
        planned_at: Option<i64>,
    ) -> Result<Option<Lease>, StoreError> {
        let k = self.lease_key(key);
        let compare = create_compares(&self.subnets_prefix(), key, planned_at);
        let id = self.grant(ttl, &k)?;
        let value = attrs.to_json();
        let txn = json!({
            "compare": compare,
            "success": [{"request_put": {"key": b64(&k), "value": b64(&value), "lease": id.to_string()}}],
        });
        let outcome = self.call("create", &k, "/v3/kv/txn", txn);
        match outcome {
            Ok(r) if r.get("succeeded").and_then(Value::as_bool) == Some(true) => Ok(Some(Lease {
                key: *key,
                attrs: attrs.clone(),
                expiration: Some(SystemTime::now() + ttl),
                ttl_handle: id,
            })),
            Ok(_) => {
                self.revoke(id, &k);
                Ok(None)
            }
            Err(e) => {
                self.revoke(id, &k);
                Err(e)
            }
        }
    }

    fn overwrite(
        &self,
        existing: &Lease,
        attrs: &LeaseAttrs,
        ttl: Duration,
    ) -> Result<Lease, StoreError> {
        let k = self.lease_key(&existing.key);
        let value = attrs.to_json();
        let current = self.get(&k)?;
        let reservation = current.as_ref().is_some_and(|kv| int(kv, "lease") == 0);
        if reservation {
            self.put(&k, &value, 0)?;
            return Ok(Lease {
                key: existing.key,
                attrs: attrs.clone(),
                expiration: None,
                ttl_handle: 0,
            });
        }
        let id = self.grant(ttl, &k)?;
        if let Err(e) = self.put(&k, &value, id) {
            self.revoke(id, &k);
            return Err(e);
        }
        // The old etcd lease held only this key, which now hangs off the new one.
        if let Some(old) = current
            .map(|kv| int(&kv, "lease"))
            .filter(|&l| l != 0 && l != id)
        {
            self.revoke(old, &k);
        }
        Ok(Lease {
            key: existing.key,
            attrs: attrs.clone(),
            expiration: Some(SystemTime::now() + ttl),
            ttl_handle: id,
        })
    }

    fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Lease, StoreError> {
        let k = self.lease_key(&lease.key);
        let lost = || StoreError::LeaseLost { key: k.clone() };
        let kv = self.get(&k)?.ok_or_else(lost)?;
        let attached = int(&kv, "lease");
        if attached == 0 {
            // A reservation: nothing expires.
            return self.kv_to_lease(&kv, None).ok_or_else(lost);
        }
        if attached != lease.ttl_handle {
            return Err(lost());
        }
        let r = self.call(
            "keep alive lease of",
            &k,
            "/v3/lease/keepalive",
            json!({"ID": attached}),
        )?;
        let result = r.get("result").unwrap_or(&r);
        let granted = int(result, "TTL");
        if granted <= 0 {
            return Err(lost());
        }
        let _ = ttl; // etcd renews to the TTL the lease was granted with.
        Ok(Lease {
            key: lease.key,
            attrs: lease.attrs.clone(),
            expiration: Some(SystemTime::now() + Duration::from_secs(granted as u64)),
            ttl_handle: attached,
        })
    }

    fn delete(&self, key: &SubnetKey) -> Result<(), StoreError> {
        let k = self.lease_key(key);
        self.call("delete", &k, "/v3/kv/deleterange", json!({"key": b64(&k)}))
            .map(drop)
    }

    fn watch(&self, revision: i64) -> Result<Box<dyn Watch>, StoreError> {
        let prefix = self.subnets_prefix();
        let body = json!({"create_request": {
            "key": b64(&prefix),
            "range_end": base64::encode(&prefix_end(&prefix)),
            "start_revision": (revision + 1).to_string(),
            "progress_notify": true,
        }});
        let (reader, conn) = self.with_endpoint("watch", &prefix, |ep| {
            ep.post_stream("/v3/watch", &body, REQUEST_TIMEOUT)
        })?;
        let (tx, rx) = mpsc::channel();
        let subnets_prefix = prefix.clone();
        std::thread::Builder::new()
            .name("etcd-watch".into())
            .spawn(move || read_watch_stream(reader, &subnets_prefix, tx))
            .map_err(|source| StoreError::Io {
                op: "start watch thread for",
                object: prefix.clone(),
                source,
            })?;
        Ok(Box::new(EtcdWatch { rx, conn, prefix }))
    }
}

/// Decodes the gateway's stream of `{"result": WatchResponse}` objects onto `tx`
/// until the connection ends or the receiver goes away.
fn read_watch_stream(
    reader: Box<dyn Read + Send>,
    prefix: &str,
    tx: mpsc::Sender<Result<WatchBatch, StoreError>>,
) {
    let stream = serde_json::Deserializer::from_reader(reader).into_iter::<Value>();
    let fail = |reason: String| StoreError::Protocol {
        op: "watch",
        object: prefix.to_owned(),
        reason,
    };
    for item in stream {
        let msg = match item {
            Ok(v) => v,
            Err(e) => {
                let _ = tx.send(Err(fail(format!("stream ended: {e}"))));
                return;
            }
        };
        if let Some(err) = msg.get("error") {
            let _ = tx.send(Err(fail(format!("server error: {err}"))));
            return;
        }
        let result = msg.get("result").unwrap_or(&msg);
        if int(result, "compact_revision") != 0 {
            let _ = tx.send(Ok(WatchBatch::Compacted));
            return;
        }
        if result.get("canceled").and_then(Value::as_bool) == Some(true) {
            let reason = result
                .get("cancel_reason")
                .and_then(Value::as_str)
                .unwrap_or("canceled");
            let _ = tx.send(Err(fail(format!("watch canceled: {reason}"))));
            return;
        }
        let revision = result
            .get("header")
            .map(|h| int(h, "revision"))
            .unwrap_or(0);
        let events = result
            .get("events")
            .and_then(Value::as_array)
            .map(|evs| {
                evs.iter()
                    .filter_map(|ev| decode_event(prefix, ev))
                    .collect()
            })
            .unwrap_or_default();
        // The "created" answer carries the current revision before any replayed
        // history: resuming from it after a break would skip those events.
        if result.get("created").and_then(Value::as_bool) == Some(true) {
            continue;
        }
        if tx
            .send(Ok(WatchBatch::Events { events, revision }))
            .is_err()
        {
            return;
        }
    }
    let _ = tx.send(Err(fail("stream closed by the server".into())));
}

fn decode_event(prefix: &str, ev: &Value) -> Option<WatchEvent> {
    let kv = ev.get("kv")?;
    let key = unb64(kv, "key")?;
    let name = key.strip_prefix(prefix)?;
    // The gateway omits enum zero values: no "type" means PUT.
    if ev.get("type").and_then(Value::as_str) == Some("DELETE") {
        return SubnetKey::parse(name).map(WatchEvent::Delete);
    }
    kv_to_lease(prefix, kv, None).map(WatchEvent::Put)
}

struct EtcdWatch {
    rx: mpsc::Receiver<Result<WatchBatch, StoreError>>,
    conn: TcpStream,
    prefix: String,
}

impl Watch for EtcdWatch {
    fn next(&mut self, timeout: Duration) -> Result<Option<WatchBatch>, StoreError> {
        match self.rx.recv_timeout(timeout) {
            Ok(r) => r.map(Some),
            Err(mpsc::RecvTimeoutError::Timeout) => Ok(None),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(StoreError::Protocol {
                op: "watch",
                object: self.prefix.clone(),
                reason: "watch thread ended".into(),
            }),
        }
    }
}

impl Drop for EtcdWatch {
    fn drop(&mut self) {
        // Unblocks the reader thread, which then exits.
        http::shutdown(&self.conn);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ranges() {
        assert_eq!(
            prefix_end("/coreos.com/network/subnets/"),
            b"/coreos.com/network/subnets0".to_vec()
        );
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80".to_vec());
    }

    #[test]
    fn gateway_values_decode() {
        let store = EtcdStore::new(&["http://127.0.0.1:1".into()], DEFAULT_PREFIX).unwrap();
        let value = r#"{"PublicIP":"192.0.2.11","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"3e:41:9c:07:d2:10"}}"#;
        let kv = json!({
            "key": b64("/coreos.com/network/subnets/10.5.52.0-24"),
            "value": b64(value),
            "lease": "7587899071680942341",
            "mod_revision": "5",
        });
        let l = store.kv_to_lease(&kv, None).unwrap();
        assert_eq!(l.key.to_string(), "10.5.52.0-24");
        assert_eq!(l.ttl_handle, 7587899071680942341);
        assert_eq!(l.attrs.to_json(), value);
        let put = decode_event("/coreos.com/network/subnets/", &json!({"kv": kv})).unwrap();
        assert!(matches!(put, WatchEvent::Put(_)));
        let del = json!({"type": "DELETE", "kv": {"key": b64("/coreos.com/network/subnets/10.5.52.0-24")}});
        assert_eq!(
            decode_event("/coreos.com/network/subnets/", &del),
            Some(WatchEvent::Delete(
                SubnetKey::parse("10.5.52.0-24").unwrap()
            ))
        );
        let other = json!({"kv": {"key": b64("/coreos.com/network/config"), "value": b64("{}")}});
        assert_eq!(decode_event("/coreos.com/network/subnets/", &other), None);
        assert!(EtcdStore::new(&[], DEFAULT_PREFIX).is_err());
        assert!(EtcdStore::new(&["https://x:1".into()], DEFAULT_PREFIX).is_err());
    }

    #[test]
    fn unreachable_endpoint_is_an_io_error_naming_it() {
        let store = EtcdStore::new(&["http://127.0.0.1:1".into()], DEFAULT_PREFIX).unwrap();
        let e = store.network_config().unwrap_err();
        assert!(matches!(e, StoreError::Io { .. }), "{e}");
        assert!(e.to_string().contains("127.0.0.1:1"), "{e}");
    }
}
