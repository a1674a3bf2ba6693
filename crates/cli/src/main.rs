//! The pbft command-line tool: key generation, local testnets, running a
//! replica, a key-value client, cluster status, a benchmark, a demo, a
//! linearizability checker for recorded histories and a fault-injection tool.
//!
//! Exit codes: 0 success; 1 the service answered with an error (or another
//! failure); 2 bad usage (including unusable configuration files); 3 outcome
//! unknown (timeout, cluster unavailable or refusing this client).

/// mimalloc instead of the system allocator: a replica allocates and frees
/// a buffer or two per message, and glibc's malloc took 8% of all CPU under
/// load (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod bench;
mod chaos;
mod check_history;
mod client_cmd;
mod demo;
mod status;
mod testnet;
mod workload;

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// Byzantine fault-tolerant replicated key-value store (PBFT, Castro & Liskov).
#[derive(Parser, Debug)]
#[command(name = "pbft", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Generates an ed25519 key pair: <OUT>.key (secret, mode 0600) and <OUT>.pub.
    Keygen(KeygenArgs),
    /// Writes the configuration of a local test cluster on 127.0.0.1.
    Testnet(testnet::TestnetArgs),
    /// Runs one replica in this process until Ctrl-C or SIGTERM.
    Node(NodeArgs),
    /// Runs one key-value operation against a cluster.
    Client(client_cmd::ClientArgs),
    /// Shows each replica's view, progress and state digest.
    Status(status::StatusArgs),
    /// Measures throughput and latency with concurrent clients.
    Bench(bench::BenchArgs),
    /// Starts a 4-replica cluster, runs a workload, kills the primary and
    /// checks that the survivors agree.
    Demo(demo::DemoArgs),
    /// Decides whether a recorded key-value history is linearizable.
    CheckHistory(check_history::CheckHistoryArgs),
    /// Runs fault-injection scenarios against a real cluster while a
    /// recorded workload runs; checks every history and prints a report.
    Chaos(chaos::ChaosArgs),
}

/// Arguments of `pbft keygen`.
#[derive(Args, Debug)]
struct KeygenArgs {
    /// Path prefix: writes <OUT>.key and <OUT>.pub; refuses to overwrite either.
    #[arg(long)]
    out: PathBuf,
}

/// Arguments of `pbft node`.
#[derive(Args, Debug)]
struct NodeArgs {
    /// The replica's node file (node-<i>.toml).
    #[arg(long)]
    config: PathBuf,
    /// Log format (overrides the node file's `log_format`).
    #[arg(long, value_enum)]
    log_format: Option<LogFormatArg>,
    /// Initialise the data directory (empty record log and init marker) and
    /// exit; needed once before a replica's first start (`pbft testnet` does
    /// it for the replicas it writes).
    #[arg(long)]
    init: bool,
}

/// Log format on the command line.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum LogFormatArg {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// A failure with the exit code it maps to.
#[derive(Debug)]
pub(crate) struct Failure {
    code: u8,
    error: anyhow::Error,
}

impl Failure {
    /// Bad usage or an unusable configuration: exit code 2.
    pub(crate) fn usage(error: impl Into<anyhow::Error>) -> Self {
        Failure {
            code: 2,
            error: error.into(),
        }
    }

    /// A failure of the operation: exit code 1.
    pub(crate) fn failed(error: impl Into<anyhow::Error>) -> Self {
        Failure {
            code: 1,
            error: error.into(),
        }
    }

    /// The exit code for a client error.
    pub(crate) fn client(error: pbft_client::ClientError) -> Self {
        use pbft_client::ClientError as E;
        let code = match &error {
            // Outcome unknown.
            E::Timeout { .. } | E::Expired { .. } => 3,
            E::Config(_) | E::Key(_) | E::Options(_) => 2,
            // Executed, result lost: a failure to report, not to retry.
            E::Application(_) | E::Protocol(_) | E::Net(_) | E::ResultNotKept { .. } => 1,
        };
        Failure {
            code,
            error: error.into(),
        }
    }

    /// The error, without its exit code.
    pub(crate) fn into_error(self) -> anyhow::Error {
        self.error
    }

    /// Outcome unknown: exit code 3.
    pub(crate) fn unknown(error: impl Into<anyhow::Error>) -> Self {
        Failure {
            code: 3,
            error: error.into(),
        }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Self {
        Failure::failed(error)
    }
}

pub(crate) type CmdResult = Result<(), Failure>;

/// Logs of the client-side commands: warnings only, and only errors from the
/// transport (it warns on every redial of a dead or refusing replica; the
/// client's own error message says what the connection count suggests),
/// unless `RUST_LOG` says otherwise.
fn init_client_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn,pbft_net=error"));
    let _already_set = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::failed(anyhow::anyhow!("cannot start the async runtime: {e}")))
}

fn keygen(args: &KeygenArgs) -> CmdResult {
    let mut secret = args.out.clone().into_os_string();
    secret.push(".key");
    let mut public = args.out.clone().into_os_string();
    public.push(".pub");
    let (secret, public) = (PathBuf::from(secret), PathBuf::from(public));
    for p in [&secret, &public] {
        if p.exists() {
            return Err(Failure::usage(anyhow::anyhow!(
                "{}: already exists; refusing to overwrite a key",
                p.display()
            )));
        }
    }
    let key = pbft_crypto::KeyPair::generate();
    pbft_crypto::keyfile::write_secret(&secret, &key).map_err(Failure::failed)?;
    pbft_crypto::keyfile::write_public(&public, &key.public()).map_err(Failure::failed)?;
    println!("{}", key.public().to_hex());
    eprintln!("wrote {} and {}", secret.display(), public.display());
    Ok(())
}

fn node(args: &NodeArgs) -> CmdResult {
    let node = pbft_config::NodeFile::load(&args.config).map_err(Failure::usage)?;
    if args.init {
        pbft_node::init_data_dir(&node).map_err(Failure::failed)?;
        eprintln!(
            "initialised {} for replica {}",
            node.data_dir.display(),
            node.id.0
        );
        return Ok(());
    }
    let format = match args.log_format {
        Some(LogFormatArg::Human) => pbft_config::LogFormat::Human,
        Some(LogFormatArg::Json) => pbft_config::LogFormat::Json,
        None => node.log_format,
    };
    pbft_node::init_tracing(format);
    // The runtime the `pbft-node` binary uses, sized for replicas that share
    // a host's cores (see `pbft_node::Threads`).
    let threads = pbft_node::Threads::default();
    let runtime = threads
        .runtime()
        .map_err(|e| Failure::failed(anyhow::anyhow!("cannot start the async runtime: {e}")))?;
    let result = runtime.block_on(pbft_node::run_with(
        node,
        threads,
        pbft_node::shutdown_signal(),
    ));
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    result.map_err(Failure::failed)
}

fn main() -> ExitCode {
    // Usage errors exit with clap's code 2 (and `--help` with 0).
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Keygen(a) => keygen(a),
        Command::Testnet(a) => testnet::run(a),
        Command::Node(a) => node(a),
        Command::Client(a) => {
            init_client_tracing();
            runtime().and_then(|rt| rt.block_on(client_cmd::run(a)))
        }
        Command::Status(a) => {
            init_client_tracing();
            runtime().and_then(|rt| rt.block_on(status::run(a)))
        }
        Command::Bench(a) => {
            init_client_tracing();
            runtime().and_then(|rt| rt.block_on(bench::run(a)))
        }
        Command::Demo(a) => {
            init_client_tracing();
            runtime().and_then(|rt| rt.block_on(demo::run(a)))
        }
        Command::CheckHistory(a) => check_history::run(a),
        Command::Chaos(a) => {
            init_client_tracing();
            runtime().and_then(|rt| rt.block_on(chaos::run(a)))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("error: {:#}", f.error);
            ExitCode::from(f.code)
        }
    }
}
