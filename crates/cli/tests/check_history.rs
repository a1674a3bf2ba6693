//! `pbft check-history`: exit codes and the operations it names.

use std::process::Command;

fn check(text: &str, json: bool) -> (i32, String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("h.jsonl");
    std::fs::write(&path, text).expect("write");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pbft"));
    cmd.arg("check-history").arg(&path);
    if json {
        cmd.arg("--json");
    }
    let out = cmd.output().expect("run pbft");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const PUT_A: &str = r#"{"client":0,"invoke_us":0,"op":{"put":{"key":"k","value":"a"}},"outcome":"ok","response_us":10,"result":{"put":{"previous":null}}}"#;
const PUT_B: &str = r#"{"client":0,"invoke_us":20,"op":{"put":{"key":"k","value":"b"}},"outcome":"ok","response_us":30,"result":{"put":{"previous":"a"}}}"#;
const GET_B: &str = r#"{"client":1,"invoke_us":40,"op":{"get":{"key":"k"}},"outcome":"ok","response_us":50,"result":{"get":{"value":"b"}}}"#;
const GET_A: &str = r#"{"client":1,"invoke_us":40,"op":{"get":{"key":"k"}},"outcome":"ok","response_us":50,"result":{"get":{"value":"a"}}}"#;
const OTHER: &str = r#"{"client":2,"invoke_us":5,"op":{"cas":{"key":"j","expected":null,"new":"x"}},"outcome":"unknown"}"#;

#[test]
fn a_linearizable_history_exits_0() {
    let (code, out, err) = check(&[PUT_A, PUT_B, GET_B, OTHER].join("\n"), false);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("linearizable: yes"), "{out}");
    assert!(out.contains("1 unknown"), "{out}");
}

#[test]
fn a_stale_read_exits_1_and_names_its_lines() {
    let (code, out, err) = check(&[PUT_A, OTHER, PUT_B, GET_A].join("\n"), false);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("linearizable: NO"), "{out}");
    for line in ["line 1:", "line 3:", "line 4:"] {
        assert!(out.contains(line), "{line} missing: {out}");
    }
    assert!(
        !out.contains("line 2:"),
        "the other key is no part of it: {out}"
    );
    let (code, out, _) = check(&[PUT_A, OTHER, PUT_B, GET_A].join("\n"), true);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON object");
    assert_eq!(v["linearizable"], false);
    assert_eq!(v["violations"][0]["lines"], serde_json::json!([1, 3, 4]));
}

#[test]
fn a_malformed_history_exits_2_with_its_line() {
    let (code, out, err) = check(&format!("{PUT_A}\n{{\"client\":0}}\n"), false);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("line 2"), "{err}");
    let (code, _, err) = check("", false);
    assert_eq!(code, 2);
    assert!(err.contains("no operation"), "{err}");
}
