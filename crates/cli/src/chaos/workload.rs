//! The recorded client workload of a chaos run.
//!
//! Several concurrent clients, each with its own key, issue puts, gets and
//! compare-and-swaps on a small shared key set (so operations conflict) and
//! puts of an increasing counter on one key of their own (`w<c>`, written
//! by that client only, so that a lost acknowledged write is seen directly).
//! Every operation is recorded as a [`pbft_history::Entry`]: invocation and
//! response time, the operation and its result, or an unknown outcome when
//! no result was accepted in time (a timeout, a transport error). The loop of
//! each client is bounded in count and time.

use pbft_app::kv::{KvOp, KvResult};
use pbft_client::{Client, ClientError, ClientOptions, KeyPair};
use pbft_config::ClientSettings;
use pbft_history::{Entry, Outcome};
use rand::{Rng, SeedableRng};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The shared key set.
pub fn shared_key(k: usize) -> String {
    format!("k{k}")
}

/// Client `c`'s own key.
pub fn own_key(c: usize) -> String {
    format!("w{c}")
}

/// The recorded history, shared by the clients.
#[derive(Clone)]
pub struct Recorder {
    origin: Instant,
    entries: Arc<Mutex<Vec<Entry>>>,
}

impl Recorder {
    /// A recorder whose times count from now.
    pub fn new() -> Recorder {
        Recorder {
            origin: Instant::now(),
            entries: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Microseconds since the origin.
    pub fn micros(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.origin).as_micros()).unwrap_or(u64::MAX)
    }

    /// A copy of the entries so far.
    pub fn entries(&self) -> Vec<Entry> {
        self.entries.lock().map(|e| e.clone()).unwrap_or_default()
    }

    /// Runs `op` on `client`, records it, and returns its result if one was
    /// accepted.
    pub async fn run(&self, client_index: u64, client: &Client, op: KvOp) -> Option<KvResult> {
        let invoked = Instant::now();
        let bytes = op.encode();
        let answer = if op.is_read_only() {
            client.query(bytes).await
        } else {
            client.invoke(bytes).await
        };
        let at = self.micros(Instant::now());
        let (outcome, result) = match answer.map(|b| KvResult::decode(&b)) {
            Ok(Ok(KvResult::Error(e))) => (
                Outcome::Failed {
                    at,
                    error: format!("the service refused it: {e}"),
                },
                None,
            ),
            Ok(Ok(result)) => (
                Outcome::Ok {
                    at,
                    result: result.clone(),
                },
                Some(result),
            ),
            Ok(Err(e)) => (
                Outcome::Unknown {
                    error: Some(format!("undecodable result: {e}")),
                },
                None,
            ),
            Err(e @ ClientError::Config(_)) | Err(e @ ClientError::Key(_)) => (
                Outcome::Failed {
                    at,
                    error: e.to_string(),
                },
                None,
            ),
            Err(e) => (
                Outcome::Unknown {
                    error: Some(first_line(&e.to_string())),
                },
                None,
            ),
        };
        let entry = Entry {
            client: client_index,
            invoke_us: self.micros(invoked),
            op,
            outcome,
            line: 0,
        };
        if let Ok(mut entries) = self.entries.lock() {
            entries.push(entry);
        }
        result
    }
}

fn first_line(s: &str) -> String {
    s.split(':').next().unwrap_or(s).to_string()
}

/// What a workload is asked to do.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Shared keys.
    pub keys: usize,
    /// Most operations per client.
    pub ops_max: u64,
    /// The longest one operation may take before its outcome is unknown.
    pub op_timeout: Duration,
}

/// A running workload: stop it with [`Workload::stop`].
pub struct Workload {
    stop: Arc<AtomicBool>,
    tasks: tokio::task::JoinSet<()>,
}

/// Starts one client per key in `keys`.
pub fn start(
    settings: &ClientSettings,
    plan: &Plan,
    keys: &[KeyPair],
    recorder: &Recorder,
    hard_stop: Instant,
) -> anyhow::Result<Workload> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = tokio::task::JoinSet::new();
    for (c, key) in keys.iter().enumerate() {
        let client = Client::with_key(
            &settings.cluster,
            key.clone(),
            ClientOptions::with_timeout(plan.op_timeout),
        )?;
        let (stop, recorder, plan) = (stop.clone(), recorder.clone(), plan.clone());
        tasks.spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(c as u64 + 1);
            // The last value this client saw under each shared key.
            let mut seen: Vec<Option<Vec<u8>>> = vec![None; plan.keys];
            let mut counter = 0u64;
            for n in 0..plan.ops_max {
                if stop.load(Ordering::Relaxed) || Instant::now() >= hard_stop {
                    break;
                }
                let k = rng.gen_range(0..plan.keys);
                let key = shared_key(k).into_bytes();
                let value = format!("c{c}-{n}").into_bytes();
                let roll = rng.gen_range(0..100);
                let op = if roll < 10 {
                    counter += 1;
                    KvOp::Put {
                        key: own_key(c).into_bytes(),
                        value: counter.to_string().into_bytes(),
                    }
                } else if roll < 45 {
                    KvOp::Put {
                        key,
                        value: value.clone(),
                    }
                } else if roll < 75 {
                    KvOp::Get { key }
                } else {
                    KvOp::Cas {
                        key,
                        expected: seen[k].clone(),
                        new: value.clone(),
                    }
                };
                let result = recorder.run(c as u64, &client, op).await;
                match result {
                    Some(KvResult::Get { value }) => seen[k] = value,
                    Some(KvResult::Put { .. }) if roll >= 10 => seen[k] = Some(value),
                    Some(KvResult::Cas { swapped, current }) => {
                        seen[k] = if swapped { Some(value) } else { current };
                    }
                    _ => {}
                }
            }
            client.close().await;
        });
    }
    Ok(Workload { stop, tasks })
}

impl Workload {
    /// Asks the clients to stop and waits for their last operations (each
    /// bounded by the operation timeout).
    pub async fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        while self.tasks.join_next().await.is_some() {}
    }
}
