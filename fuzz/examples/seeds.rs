//! Writes the seed inputs of every fuzz target into `fuzz/seeds/<target>/`
//! (checked in; `scripts/fuzz-smoke` and long runs start from them):
//!
//! ```sh
//! cargo run --manifest-path fuzz/Cargo.toml --example seeds
//! ```

use pbft_app::kv::{KvOp, KvResult, KvStore};
use pbft_app::StateMachine;
use pbft_core::io::Record;
use pbft_core::message::{CheckpointProof, PrePrepare};
use pbft_core::{ReplicaId, SeqNum, View};
use pbft_crypto::Digest;
use std::path::Path;

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("seeds")
        .join(target);
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join(name), bytes).expect("write seed");
}

fn main() {
    let ops = vec![
        KvOp::Put {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
        },
        KvOp::Get { key: b"k".to_vec() },
        KvOp::Delete { key: b"k".to_vec() },
        KvOp::Cas {
            key: b"k".to_vec(),
            expected: Some(b"v".to_vec()),
            new: b"w".to_vec(),
        },
        KvOp::Scan {
            from: b"a".to_vec(),
            to: b"z".to_vec(),
            limit: 10,
        },
    ];
    let encoded: Vec<Vec<u8>> = ops.iter().map(KvOp::encode).collect();
    let messages = pbft_fuzz::seed_messages(&encoded);
    let mut stream = vec![0u8];
    for m in &messages {
        let bytes = m.encode();
        write("message", m.kind(), &bytes);
        stream.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        stream.extend_from_slice(&bytes);
    }
    write("frame", "all-kinds", &stream);
    let mut chunked = vec![3u8, 1, 0, 2];
    chunked.extend_from_slice(&stream[1..]);
    write("frame", "all-kinds-chunked", &chunked);

    let mut store = KvStore::new();
    for (i, op) in ops.iter().enumerate() {
        write("kv", &format!("op-{i}"), &op.encode());
        let result = store.execute(op);
        write("kv", &format!("result-{i}"), &result.encode());
    }
    write(
        "kv",
        "result-scan",
        &KvResult::Scan {
            items: vec![(b"a".to_vec(), b"1".to_vec())],
            more: true,
        }
        .encode(),
    );
    store.execute(&ops[0]);
    write("kv", "snapshot", &store.snapshot());
    write(
        "kv",
        "checkpoint-snapshot",
        &pbft_core::checkpoint::StateImage::build(&mut store.clone(), &mut Default::default())
            .pages()
            .iter()
            .map(|p| p.bytes())
            .collect::<Vec<_>>()
            .join(&0xff),
    );

    // A record log with one record of each kind the core persists.
    let dir = std::env::temp_dir().join(format!("pbft-fuzz-seeds-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    pbft_storage::Storage::init(&dir, pbft_fuzz::CLUSTER, ReplicaId(0)).expect("init");
    let (mut storage, _) =
        pbft_storage::Storage::open(&dir, pbft_fuzz::CLUSTER, ReplicaId(0)).expect("open");
    let pre_prepare = pbft_fuzz::replica(0).sign(PrePrepare {
        view: View(0),
        seq: SeqNum(1),
        digest: Digest::of(b"batch"),
        replica: ReplicaId(0),
    });
    let mut records = vec![Record::PrePrepare(pre_prepare, None)];
    for m in &messages {
        match m {
            pbft_core::Message::ViewChange(vc) => records.push(Record::ViewChange(vc.clone())),
            pbft_core::Message::NewView(nv, _) => records.push(Record::NewView(nv.clone())),
            _ => {}
        }
    }
    storage.append(&records).expect("append");
    storage
        .append(&[
            Record::Page(pbft_app::Page::new(vec![1, 2, 3])),
            Record::Checkpoint(
                CheckpointProof {
                    seq: SeqNum(0),
                    digest: Digest::of(b"s"),
                    checkpoints: vec![],
                },
                vec![pbft_app::Page::new(vec![1, 2, 3]).digest()],
            ),
        ])
        .expect("append");
    drop(storage);
    // The first segment, up to its valid end (the rest is preallocated).
    let segment = std::fs::read(dir.join(pbft_storage::segment_file_name(1))).expect("read log");
    let (_, valid) = pbft_storage::decode_segment(&segment, pbft_fuzz::CLUSTER, ReplicaId(0), 1)
        .expect("decode the segment just written");
    let header = pbft_storage::segment_header(pbft_fuzz::CLUSTER, ReplicaId(0), 1).len();
    write("record_log", "log", &segment[header..valid]);
    write("record_log", "log-with-header", &segment[..valid]);
    let _ = std::fs::remove_dir_all(&dir);

    let mut cluster = format!(
        "cluster_id = {}\ncheckpoint_interval = 64\nlog_window = 128\n",
        pbft_fuzz::CLUSTER
    );
    for i in 0..4 {
        cluster.push_str(&format!(
            "\n[[replicas]]\nid = {i}\naddress = \"127.0.0.1:{}\"\npublic_key = \"{}\"\n",
            7000 + i,
            pbft_fuzz::replica(i).public_key().to_hex()
        ));
    }
    write("config", "cluster", cluster.as_bytes());
    write(
        "config",
        "node",
        b"id = 1\ncluster = \"good-cluster.toml\"\nkey = \"node-1.key\"\ndata_dir = \"data/1\"\nlisten = \"0.0.0.0:7001\"\nlog_format = \"json\"\n\n[tuning]\nbatch_size_max = 64\nbatch_delay_ms = 0\ntimeout_base_ms = 500\n\n[clients]\nallow_any = false\nallow = [\"0000000000000000000000000000000000000000000000000000000000000000\"]\n",
    );
    write(
        "config",
        "client",
        b"cluster = \"good-cluster.toml\"\nkey = \"client.key\"\ntimeout_ms = 30000\n",
    );
    write(
        "keyfile",
        "secret",
        format!("{}\n", "ab".repeat(32)).as_bytes(),
    );
    write(
        "keyfile",
        "public",
        format!("{}\n", pbft_fuzz::client().public_key().to_hex()).as_bytes(),
    );
    println!("wrote seeds under {}/seeds", env!("CARGO_MANIFEST_DIR"));
}
