//! `pbft status`: each replica's view, progress and state digest.

use crate::client_cmd::connect;
use crate::{CmdResult, Failure};
use clap::Args;
use pbft_client::ReplicaStatus;
use pbft_config::ClientFile;
use serde_json::{json, Value};
use std::path::PathBuf;

/// Arguments of `pbft status`.
#[derive(Args, Debug)]
pub struct StatusArgs {
    /// The client file (client.toml).
    #[arg(long)]
    pub config: PathBuf,
    /// Print one JSON object: {"replicas":[{"id":0,"reachable":true,...}]}.
    #[arg(long)]
    pub json: bool,
    /// Sign the status requests with client.toml's key instead of a fresh one.
    #[arg(long)]
    pub use_config_key: bool,
}

/// The JSON form of one replica's status.
pub fn status_json(s: &ReplicaStatus) -> Value {
    match &s.report {
        Some(r) => json!({
            "id": s.id.0,
            "reachable": true,
            "view": r.view.0,
            "active": r.active,
            "primary": r.primary.0,
            "last_executed": r.last_executed.0,
            "stable_checkpoint": r.stable_checkpoint.0,
            "state_digest": r.state_digest.to_hex(),
        }),
        None => json!({"id": s.id.0, "reachable": false}),
    }
}

/// `pbft status`. Exit code 3 if no replica answers.
pub async fn run(args: &StatusArgs) -> CmdResult {
    let settings = ClientFile::load(&args.config).map_err(Failure::usage)?;
    let client = connect(&settings, args.use_config_key, settings.timeout)?;
    let statuses = client.status().await;
    if args.json {
        let replicas: Vec<Value> = statuses.iter().map(status_json).collect();
        println!("{}", json!({ "replicas": replicas }));
    } else {
        println!(
            "{:<3} {:<22} {:<9} {:>6} {:>8} {:>6} {:>10} {:>10}  state digest",
            "id", "address", "reachable", "view", "primary", "active", "executed", "checkpoint"
        );
        for s in &statuses {
            match &s.report {
                Some(r) => println!(
                    "{:<3} {:<22} {:<9} {:>6} {:>8} {:>6} {:>10} {:>10}  {}",
                    s.id.0,
                    s.address.to_string(),
                    "yes",
                    r.view.0,
                    r.primary.0,
                    if r.active { "yes" } else { "no" },
                    r.last_executed.0,
                    r.stable_checkpoint.0,
                    &r.state_digest.to_hex()[..16],
                ),
                None => println!("{:<3} {:<22} {:<9}", s.id.0, s.address.to_string(), "no"),
            }
        }
    }
    if statuses.iter().any(ReplicaStatus::reachable) {
        Ok(())
    } else {
        Err(Failure::unknown(anyhow::anyhow!(
            "no replica answered: the cluster is down or refuses this client's key"
        )))
    }
}
