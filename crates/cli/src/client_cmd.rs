//! `pbft client`: one key-value operation.

use crate::{CmdResult, Failure};
use clap::{Args, Subcommand};
use pbft_client::{Client, ClientOptions, KeyPair, KvClient};
use pbft_config::{ClientFile, ClientSettings};
use serde_json::json;
use std::path::PathBuf;
use std::time::Duration;

/// Arguments of `pbft client`.
///
/// Each invocation uses a fresh, random client identity unless
/// `--use-config-key` is given: replicas execute each client's requests
/// exactly once by remembering only its *last* request id, so two processes
/// sharing a key at the same time would have one's request ignored as "older"
/// than the other's (and time out). With fresh keys, any number of `pbft
/// client` processes may share one client.toml.
#[derive(Args, Debug)]
pub struct ClientArgs {
    /// The client file (client.toml).
    #[arg(long)]
    pub config: PathBuf,
    /// Print exactly one JSON object on standard output.
    #[arg(long)]
    pub json: bool,
    /// Sign with the key file named in client.toml instead of a fresh
    /// ephemeral key (needed when replicas admit only listed clients). Do not
    /// run several processes with the same key at once.
    #[arg(long)]
    pub use_config_key: bool,
    /// Overall timeout in milliseconds (default: client.toml's timeout_ms).
    #[arg(long)]
    pub timeout_ms: Option<u64>,
    /// The operation.
    #[command(subcommand)]
    pub op: KvCommand,
}

/// A key-value operation.
#[derive(Subcommand, Debug)]
pub enum KvCommand {
    /// Stores VALUE under KEY.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: String,
    },
    /// Reads KEY (ordered, unless the cluster's read_mode is "fast").
    ///
    /// The read is ordered like a write, unless the cluster file sets
    /// `read_mode = "fast"`: then it takes the read-only fast path (2f+1
    /// matching unordered answers), falling back to an ordered read.
    Get {
        /// The key.
        key: String,
    },
    /// Removes KEY.
    Delete {
        /// The key.
        key: String,
    },
    /// Stores NEW under KEY if KEY holds EXPECTED. With `--absent`, give only
    /// KEY and NEW: the swap happens only if KEY is absent. Exit code 0 whether
    /// or not it swapped; see "swapped" in the output.
    Cas {
        /// The key.
        key: String,
        /// The value KEY must hold (omit with --absent).
        #[arg(required_unless_present = "absent")]
        expected: Option<String>,
        /// The value to store.
        new: Option<String>,
        /// KEY must be absent for the swap (then give only KEY and NEW).
        #[arg(long)]
        absent: bool,
    },
    /// Lists the entries with FROM <= key < TO.
    Scan {
        /// Inclusive lower bound.
        from: String,
        /// Exclusive upper bound.
        to: String,
        /// At most this many entries (the store caps it at 1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

/// Connects with a fresh key (or the configured one).
pub fn connect(
    settings: &ClientSettings,
    use_config_key: bool,
    timeout: Duration,
) -> Result<Client, Failure> {
    let key = if use_config_key {
        pbft_crypto::keyfile::read_secret(&settings.key).map_err(Failure::usage)?
    } else {
        KeyPair::generate()
    };
    let options = ClientOptions {
        timeout,
        ..ClientOptions::from_settings(settings)
    };
    Client::with_key(&settings.cluster, key, options).map_err(Failure::client)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `pbft client`.
pub async fn run(args: &ClientArgs) -> CmdResult {
    let settings = ClientFile::load(&args.config).map_err(Failure::usage)?;
    let timeout = args
        .timeout_ms
        .map(Duration::from_millis)
        .unwrap_or(settings.timeout);
    if timeout.is_zero() {
        return Err(Failure::usage(anyhow::anyhow!(
            "--timeout-ms must be positive"
        )));
    }
    let kv = KvClient::new(connect(&settings, args.use_config_key, timeout)?);
    let (value, human) = match &args.op {
        KvCommand::Put { key, value } => {
            let previous = kv
                .put(key.as_bytes(), value.as_bytes())
                .await
                .map_err(Failure::client)?;
            let human = match previous {
                Some(p) => format!("OK (previous value: {})", text(&p)),
                None => "OK".to_string(),
            };
            (json!({"op": "put", "key": key, "ok": true}), human)
        }
        KvCommand::Get { key } => {
            let value = kv.get(key.as_bytes()).await.map_err(Failure::client)?;
            let value = value.map(|v| text(&v));
            let human = value.clone().unwrap_or_else(|| "(not found)".into());
            (json!({"op": "get", "key": key, "value": value}), human)
        }
        KvCommand::Delete { key } => {
            let existed = kv.delete(key.as_bytes()).await.map_err(Failure::client)?;
            let human = if existed { "deleted" } else { "(not found)" }.to_string();
            (
                json!({"op": "delete", "key": key, "existed": existed}),
                human,
            )
        }
        KvCommand::Cas {
            key,
            expected,
            new,
            absent,
        } => {
            let (expected, new) = match (absent, expected, new) {
                (false, Some(e), Some(n)) => (Some(e.as_bytes().to_vec()), n),
                (true, Some(n), None) => (None, n),
                (true, _, _) => {
                    return Err(Failure::usage(anyhow::anyhow!(
                        "cas --absent takes KEY and NEW only"
                    )))
                }
                _ => {
                    return Err(Failure::usage(anyhow::anyhow!(
                        "cas takes KEY EXPECTED NEW (or --absent KEY NEW)"
                    )))
                }
            };
            let outcome = kv
                .cas(key.as_bytes(), expected, new.as_bytes())
                .await
                .map_err(Failure::client)?;
            let human = if outcome.swapped {
                "swapped".to_string()
            } else {
                match outcome.current {
                    Some(c) => format!("not swapped (current value: {})", text(&c)),
                    None => "not swapped (key absent)".to_string(),
                }
            };
            (
                json!({"op": "cas", "key": key, "swapped": outcome.swapped}),
                human,
            )
        }
        KvCommand::Scan { from, to, limit } => {
            let scan = kv
                .scan(from.as_bytes(), to.as_bytes(), *limit)
                .await
                .map_err(Failure::client)?;
            let items: Vec<[String; 2]> =
                scan.items.iter().map(|(k, v)| [text(k), text(v)]).collect();
            let mut human: Vec<String> = items.iter().map(|[k, v]| format!("{k}\t{v}")).collect();
            if scan.more {
                human.push("(more)".into());
            }
            (json!({"op": "scan", "items": items}), human.join("\n"))
        }
    };
    if args.json {
        println!("{value}");
    } else if !human.is_empty() {
        println!("{human}");
    }
    Ok(())
}
