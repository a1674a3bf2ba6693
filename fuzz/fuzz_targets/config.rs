//! Configuration files (pbft-config): fuzzed bytes as `cluster.toml`, as a
//! node file and as a client file (each next to a valid cluster file).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pbft_config::{ClientFile, ClusterFile, NodeFile};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::OnceLock;

fuzz_target!(|data: &[u8]| {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let dir = pbft_fuzz::scratch("config");
        let mut cluster = format!("cluster_id = {}\n", pbft_fuzz::CLUSTER);
        for i in 0..4 {
            let key = pbft_fuzz::replica(i).public_key().to_hex();
            let _ = write!(
                cluster,
                "\n[[replicas]]\nid = {i}\naddress = \"127.0.0.1:{}\"\npublic_key = \"{key}\"\n",
                7000 + i
            );
        }
        std::fs::write(dir.join("good-cluster.toml"), cluster).expect("write");
        dir
    });
    let fuzzed = dir.join("fuzzed.toml");
    std::fs::write(&fuzzed, data).expect("write");
    let _ = ClusterFile::load(&fuzzed);
    // Node and client files name the cluster file; point the fuzzer's at the good one.
    let _ = NodeFile::load(&fuzzed);
    let _ = ClientFile::load(&fuzzed);
});
