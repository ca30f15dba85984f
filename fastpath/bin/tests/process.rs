//! `fastpath-proxy` end to end, as a benchmark script drives it: started with files, ready
//! when it says so, reloaded by SIGHUP (a bad config refused, the old one serving on), and
//! stopped by SIGTERM. One sidecar calls itself through its own mTLS listener, so a single
//! process covers outbound, mTLS with a pinned identity, inbound authorization and the app.

// The same test PKI as fastpath-core's integration tests (files are all this test needs).
#[allow(dead_code)]
#[path = "../../core/tests/common/pki.rs"]
mod pki;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_fastpath-proxy");
const API_ID: &str = "spiffe://test.local/ns/b/sa/api";
/// Generous: the proxy answers in milliseconds; this only bounds a broken run.
const WAIT: Duration = Duration::from_secs(10);

/// A directory of its own under the system's temp dir, removed afterwards.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }

    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).expect("write scratch file");
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// b/api: its inbound port allows its own namespace; it routes `api.b:8080` to `endpoints`.
fn config(revision: &str, endpoints: &[String]) -> String {
    json!({
        "schemaVersion": "weft.dev/proxyconfig/v1",
        "revision": revision,
        "trustDomain": "test.local",
        "mtls": "STRICT",
        "workload": {
            "namespace": "b", "service": "api", "serviceAccount": "api", "spiffeId": API_ID,
        },
        "inbound": [{
            "name": "http", "port": 8080, "targetPort": 8080, "protocol": "http",
            "rules": [{"policy": "b/self", "action": "ALLOW", "peers": {"namespaces": ["b"]}}],
            "defaultAction": "DENY", "defaultPolicy": "default deny",
        }],
        "outbound": {
            "http": [{"service": "b/api", "hostnames": ["api.b"], "port": 8080, "routes": [{
                "name": "b/api#0",
                "matches": [],
                "backends": [{"cluster": "b/api", "weight": 100}],
            }]}],
            "tcp": [],
            "egress": [],
            "clusters": [{
                "name": "b/api", "service": "b/api", "spiffeId": API_ID, "protocol": "http",
                "loadBalancer": "ROUND_ROBIN", "endpoints": {"static": endpoints, "port": 8080},
            }],
        },
        "telemetry": {"samplingPercent": 0.0},
    })
    .to_string()
}

/// An app that answers every request `200 hello`, counting them.
fn app() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind app");
    let addr = listener.local_addr().expect("app address");
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let mut head = Vec::new();
            let mut byte = [0u8];
            while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).is_ok_and(|n| n == 1) {
                head.push(byte[0]);
            }
            counted.fetch_add(1, Ordering::SeqCst);
            let _ = conn.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello",
            );
        }
    });
    (addr, hits)
}

/// The app's request through the sidecar's outbound listener: status line and body.
fn get(outbound: &str) -> (String, String) {
    let mut conn = TcpStream::connect(outbound).expect("connect to outbound");
    conn.set_read_timeout(Some(WAIT)).expect("timeout");
    conn.write_all(b"GET /x HTTP/1.1\r\nhost: api.b:8080\r\nconnection: close\r\n\r\n")
        .expect("send request");
    let mut reply = String::new();
    conn.read_to_string(&mut reply).expect("read reply");
    let (head, body) = reply.split_once("\r\n\r\n").expect("an HTTP reply");
    (
        head.lines().next().unwrap_or_default().to_owned(),
        body.to_owned(),
    )
}

fn signal(child: &Child, name: &str) {
    let sent = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(sent.success(), "kill -{name}");
}

/// Stdout's JSON lines, one event at a time.
struct Events(mpsc::Receiver<Value>);

impl Events {
    fn of(stdout: ChildStdout) -> Events {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let event = serde_json::from_str(&line).expect("stdout is JSON lines");
                if tx.send(event).is_err() {
                    break;
                }
            }
        });
        Events(rx)
    }

    fn next(&self) -> Value {
        self.0.recv_timeout(WAIT).expect("an event on stdout")
    }
}

fn start(files: &[(&str, &Path)]) -> Child {
    let mut cmd = Command::new(BIN);
    for (option, path) in files {
        cmd.arg(option).arg(path);
    }
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start fastpath-proxy")
}

fn wait_for_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        assert!(Instant::now() < deadline, "fastpath-proxy did not exit");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn ready_reload_refusal_and_drain_as_a_script_sees_them() {
    let dir = Scratch::new("fastpath-proxy-e2e");
    let api = pki::Ca::new("weft test CA").issue(API_ID);
    let (app_addr, hits) = app();
    let config_path = dir.write("config.json", &config("r1", &[]));
    let files = [
        ("--config", config_path.clone()),
        ("--cert-chain", dir.write("chain.pem", &api.chain)),
        ("--key", dir.write("key.pem", &api.key)),
        ("--bundle", dir.write("bundle.pem", &api.bundle)),
        (
            "--listeners",
            dir.write(
                "listeners.json",
                &json!({
                    "inbound": {"http": "127.0.0.1:0"},
                    "app": {"http": app_addr.to_string()},
                    "outboundHttp": "127.0.0.1:0",
                })
                .to_string(),
            ),
        ),
    ];
    let files: Vec<(&str, &Path)> = files.iter().map(|(o, p)| (*o, p.as_path())).collect();
    let mut proxy = start(&files);
    let events = Events::of(proxy.stdout.take().expect("stdout"));
    let mut stderr = proxy.stderr.take().expect("stderr");

    let ready = events.next();
    assert_eq!(
        (&ready["ready"], &ready["revision"]),
        (&json!(true), &json!("r1"))
    );
    let outbound = ready["bound"]["outbound:http"]
        .as_str()
        .expect("outbound bound")
        .to_owned();
    let inbound = ready["bound"]["inbound:http"]
        .as_str()
        .expect("inbound bound")
        .to_owned();
    let (status, _) = get(&outbound);
    assert_eq!(
        status, "HTTP/1.1 503 Service Unavailable",
        "r1 has no endpoints"
    );

    std::fs::write(&config_path, config("r2", &[inbound])).expect("write r2");
    signal(&proxy, "HUP");
    assert_eq!(events.next(), json!({"reloaded": true, "revision": "r2"}));
    assert_eq!(get(&outbound), ("HTTP/1.1 200 OK".into(), "hello".into()));
    assert_eq!(hits.load(Ordering::SeqCst), 1);

    std::fs::write(
        &config_path,
        r#"{"schemaVersion": "weft.dev/proxyconfig/v9"}"#,
    )
    .expect("write a bad config");
    signal(&proxy, "HUP");
    let refused = events.next();
    assert_eq!(
        (&refused["reloaded"], &refused["revision"]),
        (&json!(false), &json!("r2"))
    );
    assert_eq!(get(&outbound).0, "HTTP/1.1 200 OK", "r2 keeps serving");

    signal(&proxy, "TERM");
    assert_eq!(events.next(), json!({"stopped": true}));
    assert!(wait_for_exit(&mut proxy).success());
    let mut errors = String::new();
    stderr.read_to_string(&mut errors).expect("stderr");
    assert!(
        errors.contains("config refused, revision r2 keeps serving")
            && errors.contains("unsupported schemaVersion \"weft.dev/proxyconfig/v9\""),
        "{errors}"
    );
}

#[test]
fn a_start_that_fails_says_why_and_exits_non_zero() {
    let dir = Scratch::new("fastpath-proxy-bad-start");
    let missing = dir.0.join("missing.pem");
    let config = dir.write("config.json", &config("r1", &[]));
    let listeners = dir.write("listeners.json", "{}");
    let mut proxy = start(&[
        ("--config", &config),
        ("--cert-chain", &missing),
        ("--key", &missing),
        ("--bundle", &missing),
        ("--listeners", &listeners),
    ]);
    assert_eq!(wait_for_exit(&mut proxy).code(), Some(1));
    let mut errors = String::new();
    proxy
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut errors)
        .expect("stderr");
    assert_eq!(
        errors,
        format!(
            "fastpath-proxy: read {}: No such file or directory (os error 2)\n",
            missing.display()
        )
    );
}
