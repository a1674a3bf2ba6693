//! `pbft testnet`: the configuration of a local cluster.

use crate::{CmdResult, Failure};
use anyhow::Context;
use clap::Args;
use pbft_config::{ClientAdmission, ClientFile, ClusterFile, NodeFile, ReplicaEntry, Tuning};
use pbft_core::ReadMode;
use pbft_crypto::keyfile;
use pbft_crypto::KeyPair;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};

/// Arguments of `pbft testnet`.
#[derive(Args, Debug, Clone)]
pub struct TestnetArgs {
    /// Number of replicas: 3f+1 (1, 4, 7, 10, ...).
    #[arg(long, default_value_t = 4)]
    pub replicas: usize,
    /// Output directory (created; must not already hold a testnet).
    #[arg(long)]
    pub out: PathBuf,
    /// Replica i listens on 127.0.0.1:<BASE_PORT + i> (UDP) and serves its
    /// Prometheus metrics on the same port number over TCP. Default: free
    /// ports picked now (not necessarily consecutive).
    #[arg(long)]
    pub base_port: Option<u16>,
    /// The replicas' protocol timeout base in milliseconds (view changes,
    /// retransmissions). The client timeout should be several times larger.
    #[arg(long, default_value_t = 1000)]
    pub timeout_base_ms: u64,
    /// Accept only the testnet's own client key (client.key), not any client.
    /// Clients must then run with `--use-config-key`.
    #[arg(long)]
    pub only_config_client: bool,
    /// The cluster's read mode (`read_mode` in cluster.toml): `ordered` reads
    /// like writes, f+1 replies decide; `fast` takes the read-only fast path
    /// for get and scan, and every write then waits for 2f+1 replies.
    #[arg(long, value_enum, default_value_t = ReadModeArg::Ordered)]
    pub read_mode: ReadModeArg,
    /// Container settings.
    #[command(flatten)]
    pub docker: DockerArgs,
}

/// `--read-mode` values, one per [`ReadMode`].
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadModeArg {
    /// Reads are ordered like writes (f+1 matching replies decide).
    Ordered,
    /// The read-only fast path (2f+1 matching answers; writes need 2f+1 too).
    Fast,
}

impl From<ReadModeArg> for ReadMode {
    fn from(arg: ReadModeArg) -> ReadMode {
        match arg {
            ReadModeArg::Ordered => ReadMode::Ordered,
            ReadModeArg::Fast => ReadMode::Fast,
        }
    }
}

/// `pbft testnet --docker`: a cluster of containers.
#[derive(Args, Debug, Clone, Default)]
pub struct DockerArgs {
    /// Write a docker-compose.yml too: one container per replica (image
    /// `pbft-node:local`, see docker/README.md) with its own address on a
    /// project network, the testnet directory mounted read-only at
    /// /etc/pbft (configuration and keys) and its initialised data/node-<i>
    /// mounted at /data.
    #[arg(long)]
    pub docker: bool,
    /// The project network's /24 (replica i gets .<10+i>, port 7000).
    #[arg(
        long,
        value_name = "A.B.C.0/24",
        default_value = "10.214.0.0/24",
        requires = "docker"
    )]
    pub docker_subnet: String,
}

/// The metrics port of a replica container.
const METRICS_PORT_DOCKER: u16 = 9464;

/// The first three octets of a `A.B.C.0/24` subnet.
fn subnet_prefix(subnet: &str) -> Result<[u8; 3], Failure> {
    let bad = || {
        Failure::usage(anyhow::anyhow!(
            "--docker-subnet must look like 10.214.0.0/24; got {subnet:?}"
        ))
    };
    let base = subnet.strip_suffix(".0/24").ok_or_else(bad)?;
    let octets: Vec<u8> = base
        .split('.')
        .map(|o| o.parse::<u8>().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    match octets[..] {
        [a, b, c] => Ok([a, b, c]),
        _ => Err(bad()),
    }
}

/// The compose file of a docker testnet.
fn compose_file(n: usize, subnet: &str, prefix: [u8; 3]) -> String {
    let [a, b, c] = prefix;
    let mut s = String::from(
        "# Written by `pbft testnet --docker`. Start with `docker-compose up -d`\n\
         # (or `docker compose up -d`) after building the image (docker/build.sh).\n\
         version: \"2.4\"\nservices:\n",
    );
    for i in 0..n {
        s.push_str(&format!(
            "  replica{i}:\n    image: pbft-node:local\n    command: [\"--config\", \"/etc/pbft/node-{i}.toml\"]\n    \
             volumes:\n      - ./:/etc/pbft:ro\n      - ./data/node-{i}:/data\n    networks:\n      pbft:\n        \
             ipv4_address: {a}.{b}.{c}.{}\n    stop_signal: SIGTERM\n    stop_grace_period: 5s\n",
            10 + i
        ));
    }
    s.push_str(&format!(
        "networks:\n  pbft:\n    driver: bridge\n    ipam:\n      config:\n        - subnet: {subnet}\n"
    ));
    s
}

/// Rewrites a testnet written by [`generate`] for containers: replica
/// addresses on the project network, data in /data, a compose file.
fn dockerize(args: &TestnetArgs) -> Result<(), Failure> {
    let prefix = subnet_prefix(&args.docker.docker_subnet)?;
    let out = &args.out;
    let path = out.join("cluster.toml");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let mut cluster: ClusterFile = toml::from_str(&text).context("cannot parse cluster.toml")?;
    for (i, r) in cluster.replicas.iter_mut().enumerate() {
        r.address = SocketAddr::from(([prefix[0], prefix[1], prefix[2], 10 + i as u8], 7000));
    }
    write_toml(&path, &cluster)?;
    for i in 0..args.replicas {
        let path = out.join(format!("node-{i}.toml"));
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let mut node: NodeFile = toml::from_str(&text).context("cannot parse a node file")?;
        node.data_dir = "/data".into();
        node.metrics = Some(SocketAddr::from(([0, 0, 0, 0], METRICS_PORT_DOCKER)));
        write_toml(&path, &node)?;
    }
    let compose = out.join("docker-compose.yml");
    std::fs::write(
        &compose,
        compose_file(args.replicas, &args.docker.docker_subnet, prefix),
    )
    .with_context(|| format!("cannot write {}", compose.display()))?;
    Ok(())
}

/// Picks `n` distinct free UDP ports on 127.0.0.1 (bound together, then
/// released; a race with other processes is possible but unlikely).
pub fn free_udp_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let sockets = (0..n)
        .map(|_| UdpSocket::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .context("cannot bind a UDP socket to find free ports")?;
    sockets
        .iter()
        .map(|s| Ok(s.local_addr()?.port()))
        .collect::<Result<Vec<_>, std::io::Error>>()
        .context("cannot read a socket's port")
}

/// Picks `n` distinct free TCP ports on 127.0.0.1 (for the metrics servers).
pub fn free_tcp_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .context("cannot bind a TCP socket to find free ports")?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect::<Result<Vec<_>, std::io::Error>>()
        .context("cannot read a socket's port")
}

fn write_toml<T: serde::Serialize>(path: &Path, value: &T) -> anyhow::Result<()> {
    let text = toml::to_string(value).with_context(|| format!("{}: encoding", path.display()))?;
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// Writes a testnet of `replicas` into `out` with the given ports and
/// returns the paths of the node files and of client.toml.
pub fn generate(args: &TestnetArgs, ports: &[u16]) -> Result<(Vec<PathBuf>, PathBuf), Failure> {
    let n = args.replicas;
    if n == 0 || n % 3 != 1 {
        return Err(Failure::usage(anyhow::anyhow!(
            "--replicas must be 3f+1 for some f >= 0 (1, 4, 7, 10, ...); got {n}"
        )));
    }
    if args.timeout_base_ms == 0 {
        return Err(Failure::usage(anyhow::anyhow!(
            "--timeout-base-ms must be positive"
        )));
    }
    let out = &args.out;
    if out.join("cluster.toml").exists() {
        return Err(Failure::usage(anyhow::anyhow!(
            "{}: already holds a testnet (cluster.toml); refusing to overwrite",
            out.display()
        )));
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;

    let mut entries = Vec::new();
    for (i, port) in ports.iter().enumerate().take(n) {
        let key = KeyPair::generate();
        let file = out.join(format!("node-{i}.key"));
        keyfile::write_secret(&file, &key).map_err(Failure::failed)?;
        entries.push(ReplicaEntry {
            id: i as u32,
            address: SocketAddr::from(([127, 0, 0, 1], *port)),
            public_key: key.public().to_hex(),
        });
    }
    let cluster = ClusterFile {
        // TOML integers are signed 64-bit.
        cluster_id: rand::random::<u64>() >> 1,
        checkpoint_interval: 64,
        log_window: 128,
        read_mode: args.read_mode.into(),
        replicas: entries,
    };
    write_toml(&out.join("cluster.toml"), &cluster)?;

    let client_key = KeyPair::generate();
    keyfile::write_secret(&out.join("client.key"), &client_key).map_err(Failure::failed)?;
    let clients = if args.only_config_client {
        ClientAdmission {
            allow_any: false,
            allow: vec![client_key.public().to_hex()],
            ..ClientAdmission::default()
        }
    } else {
        ClientAdmission::default()
    };

    let metrics_ports = match args.base_port {
        Some(_) => ports.to_vec(),
        None => free_tcp_ports(n)?,
    };
    let mut nodes = Vec::new();
    for i in 0..n {
        let node = NodeFile {
            id: i as u32,
            cluster: "cluster.toml".into(),
            key: format!("node-{i}.key").into(),
            data_dir: format!("data/node-{i}").into(),
            listen: None,
            tuning: Tuning {
                timeout_base_ms: args.timeout_base_ms,
                ..Tuning::default()
            },
            clients: clients.clone(),
            // The default, `fsync`: a test network keeps crash safety.
            storage: Default::default(),
            log_format: Default::default(),
            metrics: metrics_ports
                .get(i)
                .map(|p| SocketAddr::from(([127, 0, 0, 1], *p))),
            segment_bytes: None,
        };
        let path = out.join(format!("node-{i}.toml"));
        write_toml(&path, &node)?;
        nodes.push(path);
    }
    let client = ClientFile {
        cluster: "cluster.toml".into(),
        key: "client.key".into(),
        timeout_ms: 30_000,
        retransmit_ms: None,
        retransmit_min_ms: None,
        retransmit_max_ms: None,
        reply_grace_ms: None,
    };
    let client_path = out.join("client.toml");
    write_toml(&client_path, &client)?;

    // What we wrote must load; each replica's data directory is initialised
    // (a replica refuses to start from a directory that never was).
    for p in &nodes {
        let node = NodeFile::load(p).map_err(Failure::failed)?;
        pbft_node::init_data_dir(&node).map_err(Failure::failed)?;
    }
    ClientFile::load(&client_path).map_err(Failure::failed)?;
    Ok((nodes, client_path))
}

/// `pbft testnet`.
pub fn run(args: &TestnetArgs) -> CmdResult {
    let ports = match args.base_port {
        Some(base) => (0..args.replicas)
            .map(|i| {
                u16::try_from(i)
                    .ok()
                    .and_then(|i| base.checked_add(i))
                    .ok_or_else(|| Failure::usage(anyhow::anyhow!("--base-port too high")))
            })
            .collect::<Result<Vec<_>, _>>()?,
        None => free_udp_ports(args.replicas)?,
    };
    if args.docker.docker {
        if args.replicas > 200 {
            return Err(Failure::usage(anyhow::anyhow!(
                "--docker: at most 200 replicas"
            )));
        }
        subnet_prefix(&args.docker.docker_subnet)?;
        let ports = vec![7000; args.replicas];
        generate(args, &ports)?;
        dockerize(args)?;
        println!(
            "wrote a {}-replica docker testnet to {}",
            args.replicas,
            args.out.display()
        );
        println!(
            "  start:  (cd {} && docker-compose up -d)",
            args.out.display()
        );
        println!(
            "  client: pbft client --config {} put k v",
            args.out.join("client.toml").display()
        );
        return Ok(());
    }
    let (nodes, client) = generate(args, &ports)?;
    println!(
        "wrote a {}-replica testnet to {} (read mode: {})",
        args.replicas,
        args.out.display(),
        ReadMode::from(args.read_mode)
    );
    for (i, p) in nodes.iter().enumerate() {
        let metrics = NodeFile::load(p)
            .ok()
            .and_then(|n| n.metrics)
            .map_or_else(|| "-".to_string(), |a| format!("http://{a}/metrics"));
        println!(
            "  replica {i}: 127.0.0.1:{}  pbft node --config {}  (metrics {metrics})",
            ports[i],
            p.display()
        );
    }
    println!(
        "  client:     pbft client --config {} put k v",
        client.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_subnets_must_be_a_slash_24() {
        assert_eq!(subnet_prefix("10.214.0.0/24").ok(), Some([10, 214, 0]));
        for bad in ["10.214.0.0/16", "10.214.0/24", "10.300.0.0/24", "x"] {
            let e = subnet_prefix(bad).expect_err(bad).into_error().to_string();
            assert!(e.contains("--docker-subnet"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_docker_testnet_has_one_container_per_replica_and_loads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let args = TestnetArgs {
            replicas: 4,
            out: dir.path().join("net"),
            base_port: None,
            timeout_base_ms: 500,
            only_config_client: false,
            read_mode: ReadModeArg::Ordered,
            docker: DockerArgs {
                docker: true,
                docker_subnet: "10.77.1.0/24".into(),
            },
        };
        run(&args)
            .map_err(|f| f.into_error())
            .expect("testnet --docker");
        let compose =
            std::fs::read_to_string(args.out.join("docker-compose.yml")).expect("compose file");
        for i in 0..4 {
            assert!(compose.contains(&format!("replica{i}:")), "{compose}");
            assert!(compose.contains(&format!("ipv4_address: 10.77.1.{}", 10 + i)));
            let node = NodeFile::load(&args.out.join(format!("node-{i}.toml"))).expect("node file");
            assert_eq!(node.data_dir, PathBuf::from("/data"));
            assert_eq!(node.metrics, Some(SocketAddr::from(([0, 0, 0, 0], 9464))));
            assert_eq!(
                node.cluster.addresses[i],
                SocketAddr::from(([10, 77, 1, 10 + i as u8], 7000))
            );
        }
        assert!(compose.contains("subnet: 10.77.1.0/24"));
    }

    #[test]
    fn each_replica_gets_its_own_loopback_metrics_address() {
        let dir = tempfile::tempdir().expect("tempdir");
        let args = TestnetArgs {
            replicas: 4,
            out: dir.path().join("net"),
            base_port: Some(41000),
            timeout_base_ms: 500,
            only_config_client: false,
            read_mode: ReadModeArg::Ordered,
            docker: DockerArgs::default(),
        };
        run(&args).map_err(|f| f.into_error()).expect("testnet");
        for i in 0..4u16 {
            let node = NodeFile::load(&args.out.join(format!("node-{i}.toml"))).expect("node file");
            assert_eq!(
                node.metrics,
                Some(SocketAddr::from(([127, 0, 0, 1], 41000 + i)))
            );
        }
    }
}
