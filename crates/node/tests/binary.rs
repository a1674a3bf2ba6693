//! The `pbft-node` binary: arguments, one-line errors and exit codes, and a
//! clean exit on SIGTERM. Every wait is bounded.

use pbft_node::testkit::{generate, Spec};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_pbft-node");

/// Runs the binary to completion, killing it after `limit`.
fn run_bounded(args: &[&str], limit: Duration) -> Output {
    let child = Command::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pbft-node");
    let id = child.id();
    let watchdog = std::thread::spawn(move || {
        std::thread::sleep(limit);
        // Harmless if the process is gone (the pid is not reused this fast).
        let _ = Command::new("kill").args(["-9", &id.to_string()]).status();
    });
    let output = child.wait_with_output().expect("wait");
    drop(watchdog);
    output
}

fn wait_bounded(child: &mut Child, limit: Duration) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("pbft-node did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn last_line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .lines()
        .last()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn help_lists_the_options() {
    let out = run_bounded(&["--help"], Duration::from_secs(20));
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("--config") && text.contains("--log-format"),
        "{text}"
    );
}

#[test]
fn missing_config_fails_with_one_line() {
    let out = run_bounded(
        &["--config", "/nonexistent/node-9.toml"],
        Duration::from_secs(20),
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(
            "pbft-node: error: cannot load the node configuration: /nonexistent/node-9.toml"
        ),
        "{stderr}"
    );
}

#[test]
fn key_mismatch_fails_with_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = generate(dir.path(), &Spec::default()).expect("cluster");
    // Replica 0's node file, pointing at replica 1's key.
    let node0 = std::fs::read_to_string(&cluster.node_files[0]).expect("read");
    let swapped = dir.path().join("swapped.toml");
    std::fs::write(&swapped, node0.replace("node-0.key", "node-1.key")).expect("write");
    let out = run_bounded(
        &["--config", path(&swapped), "--log-format", "json"],
        Duration::from_secs(20),
    );
    assert_eq!(out.status.code(), Some(1));
    let line = last_line(&out.stderr);
    assert!(
        line.starts_with("pbft-node: error: key mismatch") && line.contains("replica 0"),
        "{line}"
    );
}

#[test]
fn uninitialised_data_dir_is_refused_until_init() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = Spec {
        n: 1,
        ..Spec::default()
    };
    let cluster = generate(dir.path(), &spec).expect("cluster");
    let config = path(&cluster.node_files[0]);
    // As if the data directory (marker and log) had never been made.
    std::fs::remove_dir_all(dir.path().join("data/0")).expect("rm data dir");
    let out = run_bounded(&["--config", config], Duration::from_secs(20));
    assert_eq!(out.status.code(), Some(1));
    let line = last_line(&out.stderr);
    assert!(
        line.contains("not an initialised data directory") && line.contains("--init"),
        "{line}"
    );
    assert!(!dir
        .path()
        .join("data/0/log-00000000000000000001.seg")
        .exists());

    let out = run_bounded(&["--config", config, "--init"], Duration::from_secs(20));
    assert!(out.status.success(), "{}", last_line(&out.stderr));
    assert!(dir
        .path()
        .join("data/0/log-00000000000000000001.seg")
        .exists());
    assert!(dir.path().join("data/0/PBFT-INIT").exists());
    // A second init is refused: it would wipe what the replica voted.
    let out = run_bounded(&["--config", config, "--init"], Duration::from_secs(20));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        last_line(&out.stderr).contains("refusing to initialise"),
        "{}",
        last_line(&out.stderr)
    );

    // A lost log under a marker is corruption, not a fresh start.
    std::fs::remove_file(dir.path().join("data/0/log-00000000000000000001.seg")).expect("rm log");
    let out = run_bounded(&["--config", config], Duration::from_secs(20));
    assert_eq!(out.status.code(), Some(1));
    let line = last_line(&out.stderr);
    assert!(
        line.contains("corrupted") && line.contains("missing"),
        "{line}"
    );
}

#[test]
fn sigterm_exits_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = Spec {
        n: 1,
        ..Spec::default()
    };
    let cluster = generate(dir.path(), &spec).expect("cluster");
    let mut child = Command::new(BIN)
        .args(["--config", path(&cluster.node_files[0])])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn pbft-node");
    // Running once its UDP port is taken.
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::UdpSocket::bind(cluster.addresses[0]).is_ok() {
        assert!(Instant::now() < deadline, "pbft-node never bound its port");
        assert!(
            child.try_wait().expect("try_wait").is_none(),
            "exited early"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let status = wait_bounded(&mut child, Duration::from_secs(20));
    assert!(status.success(), "{status:?}");
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}
