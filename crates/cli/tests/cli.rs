//! End-to-end tests of the `pbft` binary: real replica processes on
//! 127.0.0.1, real client processes. Every process is bounded in time and
//! killed when its guard drops. Cluster tests run one at a time (a lock) so
//! that a small machine is not swamped.

use serde_json::{json, Value};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_pbft");

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A child process killed (SIGKILL) and reaped on drop.
struct Proc(Option<Child>);

impl Proc {
    fn kill(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `pbft args...` to completion within `limit` (killed and failed otherwise).
fn run(args: &[&str], limit: Duration) -> Output {
    let child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pbft");
    wait(child, limit, args)
}

fn wait(child: Child, limit: Duration, args: &[&str]) -> Output {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.expect("wait for pbft"),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("pbft {args:?} did not finish within {limit:?}");
        }
    }
}

fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A testnet with its replica processes.
struct Cluster {
    dir: tempfile::TempDir,
    nodes: Vec<Proc>,
}

impl Cluster {
    fn start(extra: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().to_str().expect("utf-8 path").to_string();
        let mut args = vec!["testnet", "--replicas", "4", "--out", &out];
        args.extend_from_slice(extra);
        let o = run(&args, Duration::from_secs(20));
        assert_eq!(code(&o), 0, "testnet: {}", stderr(&o));
        let mut nodes = Vec::new();
        for i in 0..4 {
            let log = std::fs::File::create(dir.path().join(format!("node-{i}.log"))).expect("log");
            let child = Command::new(BIN)
                .arg("node")
                .arg("--config")
                .arg(dir.path().join(format!("node-{i}.toml")))
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .expect("spawn node");
            nodes.push(Proc(Some(child)));
        }
        let cluster = Cluster { dir, nodes };
        cluster.wait_all_reachable();
        cluster
    }

    fn client_toml(&self) -> String {
        self.dir
            .path()
            .join("client.toml")
            .to_str()
            .expect("utf-8")
            .to_string()
    }

    fn status(&self) -> Value {
        let o = run(
            &[
                "status",
                "--json",
                "--use-config-key",
                "--config",
                &self.client_toml(),
            ],
            Duration::from_secs(30),
        );
        serde_json::from_str(stdout(&o).trim()).unwrap_or(Value::Null)
    }

    fn wait_all_reachable(&self) {
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            let s = self.status();
            let ok = s["replicas"]
                .as_array()
                .is_some_and(|r| r.len() == 4 && r.iter().all(|r| r["reachable"] == true));
            if ok {
                return;
            }
            assert!(
                Instant::now() < until,
                "replicas not reachable: {s}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn logs(&self) -> String {
        (0..4)
            .map(|i| {
                let p = self.dir.path().join(format!("node-{i}.log"));
                let text = std::fs::read_to_string(p).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(5).collect();
                format!("--- node {i}:\n{}", tail.join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Starts `pbft client --json <args>` without waiting.
    fn spawn_client(&self, args: &[&str]) -> Child {
        let config = self.client_toml();
        let mut all = vec!["client", "--json", "--config", &config];
        all.extend_from_slice(args);
        Command::new(BIN)
            .args(&all)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn client")
    }

    /// Runs several clients at once; returns (exit code, parsed stdout) each.
    fn clients(&self, ops: &[Vec<String>]) -> Vec<(i32, Value, String)> {
        let children: Vec<Child> = ops
            .iter()
            .map(|a| self.spawn_client(&a.iter().map(String::as_str).collect::<Vec<_>>()))
            .collect();
        children
            .into_iter()
            .map(|c| {
                let o = wait(c, Duration::from_secs(60), &["client"]);
                let v = serde_json::from_str(stdout(&o).trim()).unwrap_or(Value::Null);
                (code(&o), v, stderr(&o))
            })
            .collect()
    }

    fn client(&self, args: &[&str]) -> (i32, Value, String) {
        let ops = vec![args.iter().map(|s| s.to_string()).collect()];
        self.clients(&ops).remove(0)
    }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

#[test]
fn testnet_files_load_and_bad_sizes_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("net");
    let out_s = out.to_str().expect("utf-8");
    let o = run(
        &[
            "testnet",
            "--replicas",
            "4",
            "--out",
            out_s,
            "--base-port",
            "17000",
        ],
        Duration::from_secs(20),
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let cluster = pbft_config::ClusterFile::load(&out.join("cluster.toml")).expect("cluster");
    assert_eq!(cluster.n(), 4);
    for i in 0..4 {
        let node = pbft_config::NodeFile::load(&out.join(format!("node-{i}.toml"))).expect("node");
        assert_eq!(node.id.0, i as u32);
        assert_eq!(node.listen.port(), 17000 + i as u16);
        assert_eq!(node.data_dir, out.join(format!("data/node-{i}")));
        // Initialised: a replica refuses a data directory that never was.
        assert!(node.data_dir.join("PBFT-INIT").is_file());
        assert!(node.data_dir.join("log-00000000000000000001.seg").is_file());
        let key = pbft_crypto::keyfile::read_secret(&node.key).expect("node key (0600)");
        assert_eq!(key.public(), node.cluster.keys[i]);
    }
    let client = pbft_config::ClientFile::load(&out.join("client.toml")).expect("client");
    pbft_crypto::keyfile::read_secret(&client.key).expect("client key (0600)");
    // Paths inside the files are relative.
    let text = std::fs::read_to_string(out.join("node-0.toml")).expect("read");
    assert!(!text.contains(out_s), "{text}");

    // Not overwritten.
    let o = run(&["testnet", "--out", out_s], Duration::from_secs(20));
    assert_eq!(code(&o), 2);
    assert!(
        stderr(&o).contains("refusing to overwrite"),
        "{}",
        stderr(&o)
    );

    // n must be 3f+1.
    let other = dir.path().join("five");
    let o = run(
        &[
            "testnet",
            "--replicas",
            "5",
            "--out",
            other.to_str().expect("utf-8"),
        ],
        Duration::from_secs(20),
    );
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("3f+1"), "{}", stderr(&o));
    assert!(!other.join("cluster.toml").exists());

    // keygen refuses to overwrite.
    let prefix = dir.path().join("me");
    let p = prefix.to_str().expect("utf-8");
    assert_eq!(
        code(&run(&["keygen", "--out", p], Duration::from_secs(10))),
        0
    );
    pbft_crypto::keyfile::read_secret(&dir.path().join("me.key")).expect("0600 key");
    pbft_crypto::keyfile::read_public(&dir.path().join("me.pub")).expect("public key");
    let o = run(&["keygen", "--out", p], Duration::from_secs(10));
    assert_ne!(code(&o), 0);
    assert!(
        stderr(&o).contains("refusing to overwrite"),
        "{}",
        stderr(&o)
    );
}

/// The read mode is the cluster's: `pbft testnet --read-mode` writes it into
/// cluster.toml (ordered by default), and the help of `client get` says the
/// fast path depends on it.
#[test]
fn testnet_read_mode_goes_into_the_cluster_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (flag, mode) in [
        (None, pbft_core::ReadMode::Ordered),
        (Some("ordered"), pbft_core::ReadMode::Ordered),
        (Some("fast"), pbft_core::ReadMode::Fast),
    ] {
        let out = dir.path().join(flag.unwrap_or("default"));
        let mut args = vec!["testnet", "--out", out.to_str().expect("utf-8")];
        if let Some(flag) = flag {
            args.extend(["--read-mode", flag]);
        }
        let o = run(&args, Duration::from_secs(20));
        assert_eq!(code(&o), 0, "{args:?}: {}", stderr(&o));
        assert!(
            stdout(&o).contains(&format!("read mode: {mode}")),
            "{}",
            stdout(&o)
        );
        let cluster = pbft_config::ClusterFile::load(&out.join("cluster.toml")).expect("cluster");
        assert_eq!(cluster.read_mode, mode, "{args:?}");
        let client = pbft_config::ClientFile::load(&out.join("client.toml")).expect("client");
        assert_eq!(
            client.cluster.read_mode, mode,
            "the client sees the cluster's mode"
        );
    }
    let bad = dir.path().join("bad");
    let o = run(
        &[
            "testnet",
            "--out",
            bad.to_str().expect("utf-8"),
            "--read-mode",
            "fsat",
        ],
        Duration::from_secs(10),
    );
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("fsat"), "{}", stderr(&o));
    assert!(!bad.join("cluster.toml").exists());

    let o = run(&["client", "get", "--help"], Duration::from_secs(10));
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).contains("read_mode"), "{}", stdout(&o));
}

#[test]
fn bad_usage_exits_2_and_help_works() {
    for args in [
        vec!["frobnicate"],
        vec!["client"],
        vec!["client", "--config", "x.toml"],
        vec!["client", "--config", "x.toml", "put", "only-key"],
        vec!["bench", "--clients", "many"],
        vec!["bench", "--replicas", "5"],
        vec!["bench", "--read-share", "2"],
        vec!["bench", "--duration", "0"],
        vec!["bench", "--metrics", "127.0.0.1:9"],
        vec!["status", "--config", "/nonexistent/client.toml"],
        vec!["demo", "--rejoin-max", "0"],
    ] {
        let o = run(&args, Duration::from_secs(10));
        assert_eq!(code(&o), 2, "{args:?}: {}", stderr(&o));
        assert!(!stderr(&o).is_empty());
    }
    for cmd in [
        "keygen", "testnet", "node", "client", "status", "bench", "demo",
    ] {
        let o = run(&[cmd, "--help"], Duration::from_secs(10));
        assert_eq!(code(&o), 0, "{cmd} --help");
        assert!(stdout(&o).contains("Usage"), "{cmd}: {}", stdout(&o));
    }
}

#[test]
fn cluster_serves_concurrent_clients_sharing_one_client_toml() {
    let _serial = serial();
    let cluster = Cluster::start(&[]);

    // Eight concurrent puts.
    let puts: Vec<Vec<String>> = (0..8)
        .map(|i| strings(&["put", &format!("k{i}"), &format!("v{i}")]))
        .collect();
    for (i, (c, v, err)) in cluster.clients(&puts).into_iter().enumerate() {
        assert_eq!(c, 0, "put {i}: {err}");
        assert_eq!(v, json!({"op": "put", "key": format!("k{i}"), "ok": true}));
    }
    // Eight concurrent gets, and one of an absent key.
    let mut gets: Vec<Vec<String>> = (0..8)
        .map(|i| strings(&["get", &format!("k{i}")]))
        .collect();
    gets.push(strings(&["get", "absent"]));
    let results = cluster.clients(&gets);
    for (i, (c, v, err)) in results.iter().take(8).enumerate() {
        assert_eq!(*c, 0, "get {i}: {err}");
        assert_eq!(
            *v,
            json!({"op": "get", "key": format!("k{i}"), "value": format!("v{i}")})
        );
    }
    assert_eq!(
        results[8].1,
        json!({"op": "get", "key": "absent", "value": null})
    );

    // Exact output text.
    let o = run(
        &[
            "client",
            "--json",
            "--config",
            &cluster.client_toml(),
            "get",
            "k1",
        ],
        Duration::from_secs(60),
    );
    assert_eq!(
        stdout(&o),
        "{\"op\":\"get\",\"key\":\"k1\",\"value\":\"v1\"}\n"
    );

    // Four concurrent cas on an absent key: exactly one wins.
    let cas: Vec<Vec<String>> = (0..4)
        .map(|i| strings(&["cas", "--absent", "lock", &format!("owner{i}")]))
        .collect();
    let results = cluster.clients(&cas);
    let winners = results
        .iter()
        .filter(|(c, v, err)| {
            assert_eq!(*c, 0, "{err}");
            assert_eq!(v["op"], "cas");
            assert_eq!(v["key"], "lock");
            v["swapped"] == true
        })
        .count();
    assert_eq!(winners, 1, "{results:?}");

    let (c, v, _) = cluster.client(&["cas", "k0", "v0", "w0"]);
    assert_eq!(
        (c, v),
        (0, json!({"op": "cas", "key": "k0", "swapped": true}))
    );
    let (c, v, _) = cluster.client(&["cas", "k0", "v0", "x0"]);
    assert_eq!(
        (c, v),
        (0, json!({"op": "cas", "key": "k0", "swapped": false}))
    );
    let (c, v, _) = cluster.client(&["delete", "k7"]);
    assert_eq!(
        (c, v),
        (0, json!({"op": "delete", "key": "k7", "existed": true}))
    );
    let (c, v, _) = cluster.client(&["delete", "k7"]);
    assert_eq!(
        (c, v),
        (0, json!({"op": "delete", "key": "k7", "existed": false}))
    );
    let (c, v, _) = cluster.client(&["scan", "k0", "k3"]);
    assert_eq!(
        (c, v),
        (
            0,
            json!({"op": "scan", "items": [["k0", "w0"], ["k1", "v1"], ["k2", "v2"]]})
        )
    );

    // An error reply from the service: exit code 1.
    let long_key = "x".repeat(2000);
    let (c, _, err) = cluster.client(&["put", &long_key, "v"]);
    assert_eq!(c, 1, "{err}");
    assert!(err.contains("key longer than"), "{err}");

    // Status shape.
    let s = cluster.status();
    let replicas = s["replicas"].as_array().expect("replicas");
    assert_eq!(replicas.len(), 4);
    for (i, r) in replicas.iter().enumerate() {
        assert_eq!(r["id"], i);
        assert_eq!(r["reachable"], true);
        for field in ["view", "primary", "last_executed", "stable_checkpoint"] {
            assert!(r[field].is_u64(), "{field} in {r}");
        }
        assert_eq!(r["state_digest"].as_str().map(str::len), Some(64), "{r}");
    }
}

#[test]
fn operations_continue_after_the_primary_is_killed() {
    let _serial = serial();
    let mut cluster = Cluster::start(&["--timeout-base-ms", "500"]);
    let (c, _, err) = cluster.client(&["put", "before", "1"]);
    assert_eq!(c, 0, "{err}");
    let s = cluster.status();
    let primary = s["replicas"][1]["primary"].as_u64().expect("primary") as usize;
    cluster.nodes[primary].kill();

    let puts: Vec<Vec<String>> = (0..4)
        .map(|i| strings(&["put", &format!("after{i}"), "2"]))
        .collect();
    for (c, v, err) in cluster.clients(&puts) {
        assert_eq!(c, 0, "put after the crash: {err}\n{}", cluster.logs());
        assert_eq!(v["ok"], true);
    }
    let (c, v, err) = cluster.client(&["get", "before"]);
    assert_eq!((c, v["value"].clone()), (0, json!("1")), "{err}");

    // The survivors moved to a new view and agree.
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let s = cluster.status();
        let live: Vec<&Value> = s["replicas"]
            .as_array()
            .map(|r| r.iter().filter(|r| r["reachable"] == true).collect())
            .unwrap_or_default();
        let agreed = live.len() == 3
            && live.iter().all(|r| {
                r["view"].as_u64() > Some(0)
                    && r["state_digest"] == live[0]["state_digest"]
                    && r["last_executed"] == live[0]["last_executed"]
            });
        if agreed {
            break;
        }
        assert!(Instant::now() < until, "no agreement after the crash: {s}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn refused_client_key_exits_3_with_a_clear_message() {
    let _serial = serial();
    let cluster = Cluster::start(&["--only-config-client"]);
    // The configured key is admitted.
    let (c, _, err) = cluster.client(&["--use-config-key", "put", "k", "v"]);
    assert_eq!(c, 0, "{err}");
    // A fresh key is not.
    let (c, v, err) = cluster.client(&["--timeout-ms", "3000", "put", "k", "w"]);
    assert_eq!(c, 3, "{err}");
    assert_eq!(v, Value::Null, "nothing on stdout");
    assert!(err.contains("outcome is unknown"), "{err}");
    assert!(err.contains("refuse this client's key"), "{err}");
}

#[test]
fn bench_starts_a_cluster_and_reports_json_from_its_metrics() {
    let _serial = serial();
    let o = run(
        &[
            "bench",
            "--replicas",
            "4",
            "--clients",
            "3",
            "--warmup",
            "0.5",
            "--duration",
            "2",
            "--payload",
            "16",
            "--read-share",
            "0.5",
            "--json",
            "--quiet",
        ],
        Duration::from_secs(120),
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v: Value = serde_json::from_str(stdout(&o).trim()).expect("one JSON object");
    assert_eq!(
        (v["replicas"].as_u64(), v["clients"].as_u64()),
        (Some(4), Some(3))
    );
    assert_eq!(v["mode"], "closed");
    assert_eq!(v["failed"], 0);
    let ops = v["ops"].as_u64().expect("ops");
    assert!(ops > 0, "{v}");
    let seconds = v["seconds"].as_f64().expect("seconds");
    assert!((1.9..4.0).contains(&seconds), "measured {seconds} s of 2");
    let throughput = v["throughput"].as_f64().expect("throughput");
    assert!((throughput - ops as f64 / seconds).abs() < 1e-6 * throughput.max(1.0));
    let lat = &v["latency_us"];
    let (p50, p99, max) = (
        lat["p50"].as_u64().expect("p50"),
        lat["p99"].as_u64().expect("p99"),
        lat["max"].as_u64().expect("max"),
    );
    assert!(0 < p50 && p50 <= p99 && p99 <= max, "{lat}");
    assert!(lat["p90"].is_u64() && lat["p99_9"].is_u64(), "{lat}");
    // From the replicas' metrics: every replica executed batches of at
    // least one request, each checked at least one signature and fsynced.
    assert!(
        v["batch_size_mean"].as_f64().expect("batch size") >= 1.0,
        "{v}"
    );
    assert!(
        v["signatures_per_request"].as_f64().expect("signatures") >= 1.0,
        "{v}"
    );
    assert!(
        v["fsyncs_per_request"].as_f64().expect("fsyncs") > 0.0,
        "{v}"
    );
    assert_eq!(v["view_changes"].as_f64(), Some(0.0));
    let per_replica = v["per_replica"].as_array().expect("per replica");
    assert_eq!(per_replica.len(), 4);
    for r in per_replica {
        assert!(r["executed"].as_f64().expect("executed") > 0.0, "{r}");
        assert!(r["cpu_s"].as_f64().expect("cpu") > 0.0, "{r}");
    }
    assert!(v["cpu_s"]["client"].as_f64().expect("client cpu") > 0.0);
    for phase in ["queued", "prepare", "commit", "execute", "reply", "total"] {
        let p = &v["phases_ms"][phase];
        assert!(p["count"].as_f64().expect("count") > 0.0, "{phase}: {p}");
        assert!(p["mean"].as_f64().expect("mean") >= 0.0, "{phase}: {p}");
    }
    let c = &v["crypto"];
    let cost = c["batched_verify_us"].as_f64().expect("batched cost");
    let cores = c["cores"].as_f64().expect("cores");
    let ceiling = c["ceiling_ops"].as_f64().expect("ceiling");
    assert!(
        (ceiling - cores / (4.0 * cost * 1e-6)).abs() < 1e-6 * ceiling,
        "{c}"
    );
    assert!((c["ceiling_share"].as_f64().expect("share") - throughput / ceiling).abs() < 1e-9);
    assert!(c["single_verify_us"].as_f64().expect("single") > 0.0);
}

#[test]
fn demo_completes_with_equal_digests() {
    let _serial = serial();
    let o = run(&["demo", "--ops", "40"], Duration::from_secs(120));
    let out = stdout(&o);
    assert_eq!(code(&o), 0, "{out}\n{}", stderr(&o));
    assert!(out.contains("view change: view 0 -> 1"), "{out}");
    // The killed primary is restarted and catches up with the others.
    assert!(
        out.contains("restarted replica 0 (same configuration"),
        "{out}"
    );
    assert!(
        out.contains("rejoin            replica 0 restarted"),
        "{out}"
    );
    assert!(
        out.contains("digests equal     yes (4 of 4 replicas running)"),
        "{out}"
    );
}
