//! `pbft-node`: runs one replica of a PBFT cluster until SIGINT or SIGTERM.
//!
//! ```text
//! pbft-node --config node-0.toml [--log-format human|json] [--runtime-threads N] [--verify-threads N]
//! pbft-node --config node-0.toml --init     # once, before the first start
//! pbft-node --config node-0.toml --byzantine equivocate   # built with --features byzantine
//! ```
//!
//! A replica starts only from an initialised data directory (an init marker
//! and a record log): `--init` makes one and exits; `pbft testnet` makes them
//! for the replicas it writes.
//!
//! Exits 0 after a clean shutdown; on any error prints one line,
//! `pbft-node: error: <context>: <cause>...`, and exits 1.

use anyhow::Context;
use clap::{Parser, ValueEnum};
use pbft_config::{LogFormat, NodeFile};
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// mimalloc instead of the system allocator: a replica allocates and frees
/// a buffer or two per message, and glibc's malloc took 8% of all CPU under
/// load (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Runs one replica of a PBFT (Castro & Liskov) Byzantine fault-tolerant
/// key-value service until SIGINT or SIGTERM.
#[derive(Debug, Parser)]
#[command(name = "pbft-node", version)]
struct Args {
    /// The node configuration file (node-<i>.toml); it names the cluster file,
    /// the secret key file and the data directory.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Log format; overrides `log_format` in the node file (default: human).
    /// RUST_LOG filters (default: info).
    #[arg(long, value_enum, value_name = "FORMAT")]
    log_format: Option<Format>,
    /// Initialise the data directory (empty record log and init marker) and
    /// exit. Needed once before the first start; refused if the directory is
    /// already initialised.
    #[arg(long)]
    init: bool,
    /// Tokio runtime threads; 1 runs a current-thread runtime (default:
    /// half the cores, 1 to 4, for replicas sharing a host).
    #[arg(long, value_name = "N")]
    runtime_threads: Option<NonZeroUsize>,
    /// Signature-verification threads; 0 checks signatures inline on the
    /// runtime (default: 0 below 4 cores, else half the cores, at most 8).
    #[arg(long, value_name = "N")]
    verify_threads: Option<usize>,
    /// Run as a BYZANTINE replica, for fault injection: silent, equivocate,
    /// conflict, badsig, replay, slow-primary, checkpoint, viewchange,
    /// forget, censor, flood or wrong-state (`pbft_node::behaviours`; what
    /// each does: the `pbft_node::byzantine` docs).
    #[cfg(feature = "byzantine")]
    #[arg(long, value_name = "BEHAVIOUR")]
    byzantine: Option<String>,
    /// With `--byzantine censor`: the client (public key, hex) whose
    /// requests this replica never orders (default: the first it hears from).
    #[cfg(feature = "byzantine")]
    #[arg(long, value_name = "KEY", requires = "byzantine")]
    censor_client: Option<String>,
}

/// `--log-format` values.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum Format {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

impl From<Format> for LogFormat {
    fn from(f: Format) -> LogFormat {
        match f {
            Format::Human => LogFormat::Human,
            Format::Json => LogFormat::Json,
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pbft-node: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    #[cfg(feature = "byzantine")]
    let spec = args
        .byzantine
        .as_deref()
        .map(|b| pbft_node::byzantine::Spec::parse(b, args.censor_client.as_deref()))
        .transpose()
        .context("bad --byzantine")?;
    let node = NodeFile::load(&args.config).context("cannot load the node configuration")?;
    if args.init {
        pbft_node::init_data_dir(&node)?;
        eprintln!(
            "pbft-node: initialised {} for replica {}",
            node.data_dir.display(),
            node.id.0
        );
        return Ok(());
    }
    pbft_node::init_tracing(args.log_format.map_or(node.log_format, LogFormat::from));
    let threads = pbft_node::Threads {
        runtime: args.runtime_threads,
        verify: args.verify_threads,
    };
    let runtime = threads
        .runtime()
        .context("cannot start the tokio runtime")?;
    #[cfg(feature = "byzantine")]
    let result = match spec {
        Some(spec) => runtime.block_on(pbft_node::run_byzantine(
            node,
            threads,
            spec,
            pbft_node::shutdown_signal(),
        )),
        None => runtime.block_on(pbft_node::run_with(
            node,
            threads,
            pbft_node::shutdown_signal(),
        )),
    };
    #[cfg(not(feature = "byzantine"))]
    let result = runtime.block_on(pbft_node::run_with(
        node,
        threads,
        pbft_node::shutdown_signal(),
    ));
    runtime.shutdown_timeout(Duration::from_secs(2));
    result
}
