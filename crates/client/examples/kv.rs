//! Puts, reads and compares-and-swaps a key through a running cluster.
//!
//! ```text
//! pbft testnet --replicas 4 --out testnet
//! (start the four replicas: pbft node --config testnet/node-0.toml, ...)
//! cargo run -p pbft-client --example kv -- testnet/client.toml
//! ```

use pbft_client::{Client, ClientError, KvClient};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "testnet/client.toml".into());
    let settings = pbft_config::ClientFile::load(path.as_ref())?;
    let kv = KvClient::new(Client::connect(&settings)?);

    let previous = kv.put("colour", "blue").await?;
    println!("put colour=blue (previous: {previous:?})");
    let value = kv.get("colour").await?;
    println!("get colour -> {:?}", value.map(String::from_utf8));
    let cas = kv.cas("colour", Some(b"blue".to_vec()), "green").await?;
    println!("cas colour blue->green: swapped={}", cas.swapped);
    match kv.put(vec![b'k'; 5000], "too long a key").await {
        Err(ClientError::Application(e)) => println!("refused as expected: {e}"),
        other => println!("unexpected: {other:?}"),
    }
    for r in kv.client().status().await {
        match r.report {
            Some(s) => println!(
                "replica {}: view {} executed {}",
                r.id.0, s.view.0, s.last_executed.0
            ),
            None => println!("replica {}: unreachable", r.id.0),
        }
    }
    Ok(())
}
