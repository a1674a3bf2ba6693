//! The history file: one JSON object per line, one line per client operation,
//! in any order (the checker orders by time, not by line).
//!
//! ```text
//! {"client":0,"invoke_us":1200,"op":{"put":{"key":"k1","value":"c0-1"}},"outcome":"ok","response_us":5400,"result":{"put":{"previous":null}}}
//! {"client":1,"invoke_us":1300,"op":{"get":{"key":"k1"}},"outcome":"unknown","error":"timed out"}
//! {"client":2,"invoke_us":1400,"op":{"cas":{"key":"k1","expected":null,"new":"c2-1"}},"outcome":"fail","response_us":1500,"error":"not sent"}
//! ```
//!
//! * `outcome` is `ok` (the client accepted `result` at `response_us`),
//!   `unknown` (no answer was accepted: the operation may or may not have
//!   taken effect; the checker lets it take effect at any time after its
//!   invocation, or never) or `fail` (it certainly did not take effect, e.g.
//!   it was never sent; the checker leaves it out).
//! * Keys and values are JSON strings when they are UTF-8, otherwise
//!   `{"hex":"..."}`. `op` is one of `put {key, value}`, `get {key}`,
//!   `delete {key}`, `cas {key, expected (null: absent), new}`;
//!   `result` one of `put {previous}`, `get {value}`, `delete {existed}`,
//!   `cas {swapped, current}`, `error "<message>"`.
//! * Times are microseconds from any common origin.
//!
//! Unknown fields, a missing field, an `ok` without `result` or
//! `response_us`, a response before its invocation, or a result of another
//! kind than the operation are errors that name the line.

use crate::linearizability::History;
use pbft_app::kv::{KvOp, KvResult};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// A history file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum HistoryFileError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A line is not a valid entry.
    #[error("line {line}: {message}")]
    Line {
        /// The line number, from 1.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The file holds no operation.
    #[error("the history holds no operation")]
    Empty,
}

/// What became of an operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The client accepted `result` at `at` (microseconds).
    Ok {
        /// When.
        at: u64,
        /// The result.
        result: KvResult,
    },
    /// The operation certainly did not take effect.
    Failed {
        /// When the client gave up.
        at: u64,
        /// Why.
        error: String,
    },
    /// No answer was accepted; it may or may not have taken effect.
    Unknown {
        /// Why, if known.
        error: Option<String>,
    },
}

/// One recorded operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The client that issued it.
    pub client: u64,
    /// When it was issued (microseconds).
    pub invoke_us: u64,
    /// The operation.
    pub op: KvOp,
    /// What became of it.
    pub outcome: Outcome,
    /// Its line in the file it was read from (0 if it was not read from one).
    pub line: usize,
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Bytes {
    Text(String),
    Hex { hex: String },
}

impl Bytes {
    fn from(bytes: &[u8]) -> Bytes {
        match std::str::from_utf8(bytes) {
            Ok(s) => Bytes::Text(s.to_string()),
            Err(_) => Bytes::Hex {
                hex: bytes.iter().map(|b| format!("{b:02x}")).collect(),
            },
        }
    }

    fn into_vec(self) -> Result<Vec<u8>, String> {
        match self {
            Bytes::Text(s) => Ok(s.into_bytes()),
            Bytes::Hex { hex } => {
                if hex.len() % 2 != 0 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(format!("not an even number of hex digits: {hex:?}"));
                }
                (0..hex.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).map_err(|e| e.to_string()))
                    .collect()
            }
        }
    }
}

fn opt(bytes: &Option<Vec<u8>>) -> Option<Bytes> {
    bytes.as_deref().map(Bytes::from)
}

fn unopt(bytes: Option<Bytes>) -> Result<Option<Vec<u8>>, String> {
    bytes.map(Bytes::into_vec).transpose()
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum OpLine {
    Put {
        key: Bytes,
        value: Bytes,
    },
    Get {
        key: Bytes,
    },
    Delete {
        key: Bytes,
    },
    Cas {
        key: Bytes,
        expected: Option<Bytes>,
        new: Bytes,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum ResultLine {
    Put {
        previous: Option<Bytes>,
    },
    Get {
        value: Option<Bytes>,
    },
    Delete {
        existed: bool,
    },
    Cas {
        swapped: bool,
        current: Option<Bytes>,
    },
    Error(String),
}

#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum OutcomeTag {
    Ok,
    Fail,
    Unknown,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    client: u64,
    invoke_us: u64,
    op: OpLine,
    outcome: OutcomeTag,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    response_us: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    result: Option<ResultLine>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

fn op_line(op: &KvOp) -> Result<OpLine, String> {
    Ok(match op {
        KvOp::Put { key, value } => OpLine::Put {
            key: Bytes::from(key),
            value: Bytes::from(value),
        },
        KvOp::Get { key } => OpLine::Get {
            key: Bytes::from(key),
        },
        KvOp::Delete { key } => OpLine::Delete {
            key: Bytes::from(key),
        },
        KvOp::Cas { key, expected, new } => OpLine::Cas {
            key: Bytes::from(key),
            expected: opt(expected),
            new: Bytes::from(new),
        },
        KvOp::Scan { .. } => return Err("scans are not part of a checked history".into()),
    })
}

fn result_line(result: &KvResult) -> Result<ResultLine, String> {
    Ok(match result {
        KvResult::Put { previous } => ResultLine::Put {
            previous: opt(previous),
        },
        KvResult::Get { value } => ResultLine::Get { value: opt(value) },
        KvResult::Delete { existed } => ResultLine::Delete { existed: *existed },
        KvResult::Cas { swapped, current } => ResultLine::Cas {
            swapped: *swapped,
            current: opt(current),
        },
        KvResult::Error(e) => ResultLine::Error(e.to_string()),
        KvResult::Scan { .. } => return Err("scans are not part of a checked history".into()),
    })
}

impl Entry {
    /// The entry as one line of JSON (no newline). Scans cannot be recorded.
    pub fn to_line(&self) -> Result<String, String> {
        let (outcome, response_us, result, error) = match &self.outcome {
            Outcome::Ok { at, result } => {
                (OutcomeTag::Ok, Some(*at), Some(result_line(result)?), None)
            }
            Outcome::Failed { at, error } => {
                (OutcomeTag::Fail, Some(*at), None, Some(error.clone()))
            }
            Outcome::Unknown { error } => (OutcomeTag::Unknown, None, None, error.clone()),
        };
        let line = Line {
            client: self.client,
            invoke_us: self.invoke_us,
            op: op_line(&self.op)?,
            outcome,
            response_us,
            result,
            error,
        };
        serde_json::to_string(&line).map_err(|e| e.to_string())
    }

    fn from_line(text: &str, number: usize) -> Result<Entry, HistoryFileError> {
        let bad = |message: String| HistoryFileError::Line {
            line: number,
            message,
        };
        let line: Line = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        let op = match line.op {
            OpLine::Put { key, value } => KvOp::Put {
                key: key.into_vec().map_err(bad)?,
                value: value.into_vec().map_err(bad)?,
            },
            OpLine::Get { key } => KvOp::Get {
                key: key.into_vec().map_err(bad)?,
            },
            OpLine::Delete { key } => KvOp::Delete {
                key: key.into_vec().map_err(bad)?,
            },
            OpLine::Cas { key, expected, new } => KvOp::Cas {
                key: key.into_vec().map_err(bad)?,
                expected: unopt(expected).map_err(bad)?,
                new: new.into_vec().map_err(bad)?,
            },
        };
        let response_us = |what: &str| {
            let at = line.response_us.ok_or_else(|| {
                bad(format!(
                    "an operation with outcome {what} needs response_us"
                ))
            })?;
            if at < line.invoke_us {
                return Err(bad(format!(
                    "response_us {at} is before invoke_us {}",
                    line.invoke_us
                )));
            }
            Ok(at)
        };
        let outcome = match line.outcome {
            OutcomeTag::Ok => {
                let at = response_us("ok")?;
                let result = line
                    .result
                    .ok_or_else(|| bad("an operation with outcome ok needs a result".into()))?;
                let result = match (&op, result) {
                    (KvOp::Put { .. }, ResultLine::Put { previous }) => KvResult::Put {
                        previous: unopt(previous).map_err(bad)?,
                    },
                    (KvOp::Get { .. }, ResultLine::Get { value }) => KvResult::Get {
                        value: unopt(value).map_err(bad)?,
                    },
                    (KvOp::Delete { .. }, ResultLine::Delete { existed }) => {
                        KvResult::Delete { existed }
                    }
                    (KvOp::Cas { .. }, ResultLine::Cas { swapped, current }) => KvResult::Cas {
                        swapped,
                        current: unopt(current).map_err(bad)?,
                    },
                    (_, ResultLine::Error(e)) => {
                        return Err(bad(format!(
                            "an ok outcome with an error result ({e}): record it as fail or unknown"
                        )))
                    }
                    _ => {
                        return Err(bad(
                            "the result is of another kind than the operation".into()
                        ))
                    }
                };
                Outcome::Ok { at, result }
            }
            OutcomeTag::Fail => Outcome::Failed {
                at: response_us("fail")?,
                error: line.error.unwrap_or_default(),
            },
            OutcomeTag::Unknown => {
                if line.result.is_some() {
                    return Err(bad("an operation with outcome unknown has no result".into()));
                }
                Outcome::Unknown { error: line.error }
            }
        };
        Ok(Entry {
            client: line.client,
            invoke_us: line.invoke_us,
            op,
            outcome,
            line: number,
        })
    }
}

/// Parses a whole history file's text (blank lines are skipped).
pub fn parse(text: &str) -> Result<Vec<Entry>, HistoryFileError> {
    let mut entries = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        entries.push(Entry::from_line(line, i + 1)?);
    }
    if entries.is_empty() {
        return Err(HistoryFileError::Empty);
    }
    Ok(entries)
}

/// Reads and parses a history file.
pub fn load(path: &Path) -> Result<Vec<Entry>, HistoryFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| HistoryFileError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text)
}

/// The checkable history of `entries`: failed operations are left out;
/// returns it with, for each of its operations, the index of its entry.
pub fn to_history(entries: &[Entry]) -> (History, Vec<usize>) {
    let mut sorted: Vec<usize> = (0..entries.len()).collect();
    sorted.sort_by_key(|&i| (entries[i].invoke_us, i));
    let mut history = History::new();
    let mut origin = Vec::new();
    for i in sorted {
        let e = &entries[i];
        let client = usize::try_from(e.client).unwrap_or(usize::MAX);
        match &e.outcome {
            Outcome::Failed { .. } => continue,
            Outcome::Ok { at, result } => {
                let k = history.invoke(client, e.op.clone(), e.invoke_us);
                history.respond(k, *at, result.clone());
            }
            Outcome::Unknown { .. } => {
                history.invoke(client, e.op.clone(), e.invoke_us);
            }
        }
        origin.push(i);
    }
    (history, origin)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(op: KvOp, outcome: Outcome) -> Entry {
        Entry {
            client: 3,
            invoke_us: 10,
            op,
            outcome,
            line: 0,
        }
    }

    #[test]
    fn lines_round_trip() {
        let entries = [
            entry(
                KvOp::Put {
                    key: b"k".to_vec(),
                    value: vec![0xff, 0],
                },
                Outcome::Ok {
                    at: 20,
                    result: KvResult::Put { previous: None },
                },
            ),
            entry(
                KvOp::Cas {
                    key: b"k".to_vec(),
                    expected: None,
                    new: b"v".to_vec(),
                },
                Outcome::Unknown {
                    error: Some("timed out".into()),
                },
            ),
            entry(
                KvOp::Get { key: b"k".to_vec() },
                Outcome::Failed {
                    at: 11,
                    error: "not sent".into(),
                },
            ),
        ];
        let text: Vec<String> = entries.iter().map(|e| e.to_line().expect("line")).collect();
        let parsed = parse(&text.join("\n")).expect("parse");
        for (k, (a, b)) in entries.iter().zip(&parsed).enumerate() {
            assert_eq!(b.line, k + 1);
            assert_eq!(
                (a.client, a.invoke_us, &a.op, &a.outcome),
                (b.client, b.invoke_us, &b.op, &b.outcome)
            );
        }
        let (history, origin) = to_history(&parsed);
        assert_eq!(history.ops.len(), 2, "the failed get is left out");
        assert_eq!(origin, vec![0, 1]);
    }

    #[test]
    fn malformed_lines_name_their_line() {
        let cases = [
            ("not json", "line 1"),
            (
                r#"{"client":0,"invoke_us":1,"op":{"get":{"key":"k"}},"outcome":"ok","response_us":2}"#,
                "needs a result",
            ),
            (
                r#"{"client":0,"invoke_us":5,"op":{"get":{"key":"k"}},"outcome":"ok","response_us":2,"result":{"get":{"value":null}}}"#,
                "before invoke_us",
            ),
            (
                r#"{"client":0,"invoke_us":1,"op":{"get":{"key":"k"}},"outcome":"ok","response_us":2,"result":{"put":{"previous":null}}}"#,
                "another kind",
            ),
            (
                r#"{"client":0,"invoke_us":1,"op":{"get":{"key":{"hex":"abc"}}},"outcome":"unknown"}"#,
                "hex",
            ),
            (
                r#"{"client":0,"invoke_us":1,"op":{"get":{"key":"k"}},"outcome":"maybe"}"#,
                "unknown variant",
            ),
            (
                r#"{"client":0,"invoke_us":1,"op":{"get":{"key":"k"}},"outcome":"unknown","extra":1}"#,
                "unknown field",
            ),
        ];
        for (text, expected) in cases {
            let e = parse(&format!("\n{text}")).expect_err(text).to_string();
            assert!(e.contains("line 2") && e.contains(expected), "{text}: {e}");
        }
        assert!(matches!(parse("\n \n"), Err(HistoryFileError::Empty)));
    }
}
