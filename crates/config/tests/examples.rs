//! The commented examples in `configs/` parse as they are (every field they
//! show is one the parser knows, with a value of the right type), so a
//! documented setting cannot drift from what the node accepts. The cluster
//! example's keys are placeholders, so it is parsed, not loaded.

use pbft_config::{ClientFile, ClusterFile, NodeFile, Tuning};
use serde::de::DeserializeOwned;
use std::path::PathBuf;

fn parse<T: DeserializeOwned>(name: &str) -> T {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../configs")
        .join(name);
    let text = std::fs::read_to_string(&path).expect("read the example");
    toml::from_str(&text).unwrap_or_else(|e| panic!("configs/{name}: {e}"))
}

#[test]
fn the_example_files_parse() {
    let node: NodeFile = parse("node.toml");
    assert_eq!(node.clients.max_connections, 512);
    assert_eq!(node.clients.max_connections_per_address, 256);
    // The tuning it shows is the default one, so the example documents it.
    assert_eq!(node.tuning, Tuning::default());
    let _: ClusterFile = parse("cluster.toml");
    let client: ClientFile = parse("client.toml");
    // The timing it shows is the SDK's default (`ClientOptions`, whose
    // test pins the same figures).
    assert_eq!(
        (
            client.retransmit_ms,
            client.retransmit_min_ms,
            client.retransmit_max_ms,
            client.reply_grace_ms
        ),
        (Some(500), Some(100), Some(8000), Some(50))
    );
}
