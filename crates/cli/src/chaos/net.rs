//! The test network of a process cluster: one network namespace per replica
//! on a bridge, and faults injected inside those namespaces.
//!
//! ```text
//!  root namespace (the chaos tool and its clients)
//!     pc<R>h 10.213.R.1/24
//!        │ veth
//!  pc<R>-hub: bridge br0 ── v0 ── eth0 10.213.R.10  (netns pc<R>-n0: replica 0)
//!                       ── v1 ── eth0 10.213.R.11  (netns pc<R>-n1: replica 1) ...
//! ```
//!
//! Every address is inside namespaces this tool creates (R is picked so
//! that no existing namespace or interface clashes), so no packet leaves
//! the machine. Faults, each inside a replica's own namespace:
//!
//! * **isolate**: an nftables table (`inet chaos`) drops everything in and
//!   out of `eth0`; **mute** drops only what the replica sends (an
//!   asymmetric partition: it hears everyone, nobody hears it).
//! * **latency, jitter, loss** ([`shape`]): `tc qdisc netem delay D J loss
//!   L%` on what the replica sends, when the kernel has `sch_netem`. A
//!   kernel without it (such as the CI machine's) gets no added delay at
//!   all: a `tbf` rate limit on what the replica sends (which only queues
//!   packets beyond the rate) and the same loss by nftables `numgen
//!   random`; [`Shaping::describe`] says exactly which, for the report.
//!
//! [`Net`]'s `Drop` deletes the namespaces (which removes every veth, qdisc
//! and nftables table with them), so a run cleans up after itself even on
//! an error; `pbft chaos --cleanup` removes leftovers of a killed run.

use anyhow::{bail, Context};
use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;

/// Runs a command; an error carries its stderr.
pub fn sh(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("cannot run {}", args[0]))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The names of existing network namespaces.
fn namespaces() -> anyhow::Result<Vec<String>> {
    Ok(sh(&["ip", "netns", "list"])?
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect())
}

/// Deletes every namespace (and root-side veth) a chaos run left behind.
pub fn cleanup_leftovers() -> anyhow::Result<usize> {
    let mut removed = 0;
    for ns in namespaces()? {
        if ns.starts_with("pc") && (ns.ends_with("-hub") || ns.contains("-n")) && ns.len() < 12 {
            let _ = sh(&["ip", "netns", "del", &ns]);
            removed += 1;
        }
    }
    Ok(removed)
}

/// What [`shape`] put on a replica's outgoing packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shaping {
    /// `tc qdisc netem`: delay ± jitter (ms) and loss (%).
    Netem {
        /// Mean added delay.
        delay_ms: u32,
        /// Uniform jitter around it.
        jitter_ms: u32,
        /// Share dropped.
        loss: u8,
    },
    /// No netem in the kernel: no added delay, a tbf rate limit and
    /// nftables loss.
    TbfAndLoss {
        /// Share dropped.
        loss: u8,
    },
}

/// The tbf fallback's rate, burst and queue limit.
const TBF: [&str; 6] = ["rate", "4mbit", "burst", "16kb", "latency", "200ms"];

impl Shaping {
    /// Exactly what was injected, for the report.
    pub fn describe(&self) -> String {
        match self {
            Shaping::Netem {
                delay_ms,
                jitter_ms,
                loss,
            } => format!(
                "netem on every replica's eth0: delay {delay_ms} ms +- {jitter_ms} ms, loss {loss}% of what it sends"
            ),
            Shaping::TbfAndLoss { loss } => format!(
                "the kernel has no sch_netem, so NO delay or jitter was added: a tbf rate limit ({}) on every replica's eth0 and nftables dropping {loss}% of what it sends",
                TBF.join(" ")
            ),
        }
    }
}

/// The namespaces of one cluster.
pub struct Net {
    run: u8,
    n: usize,
    created: Vec<String>,
}

impl Net {
    /// Creates the hub, the root-side link and one namespace per replica.
    pub fn create(n: usize) -> anyhow::Result<Net> {
        if n > 200 {
            bail!("at most 200 replicas");
        }
        let existing = namespaces()
            .context("cannot list network namespaces (is iproute2 installed, and are we root?)")?;
        let links = sh(&["ip", "-o", "link", "show"])?;
        let seed = std::process::id() as usize;
        let run = (0..250)
            .map(|k| ((seed + k) % 250 + 1) as u8)
            .find(|r| {
                !existing.iter().any(|ns| ns.starts_with(&format!("pc{r}-")))
                    && !links.contains(&format!("pc{r}h"))
            })
            .context("no free network number for the test namespaces")?;
        let mut net = Net {
            run,
            n,
            created: Vec::new(),
        };
        net.setup()
            .context("cannot set up the test network namespaces")?;
        Ok(net)
    }

    fn hub(&self) -> String {
        format!("pc{}-hub", self.run)
    }

    /// The namespace of replica `i`.
    pub fn ns(&self, i: usize) -> String {
        format!("pc{}-n{i}", self.run)
    }

    /// The address of replica `i`.
    pub fn addr(&self, i: usize) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 213, self.run, 10 + i as u8))
    }

    fn setup(&mut self) -> anyhow::Result<()> {
        let hub = self.hub();
        sh(&["ip", "netns", "add", &hub])?;
        self.created.push(hub.clone());
        sh(&["ip", "-n", &hub, "link", "set", "lo", "up"])?;
        sh(&["ip", "-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        sh(&["ip", "-n", &hub, "link", "set", "br0", "up"])?;
        let root = format!("pc{}h", self.run);
        sh(&[
            "ip", "link", "add", &root, "type", "veth", "peer", "name", "vh", "netns", &hub,
        ])?;
        sh(&[
            "ip",
            "addr",
            "add",
            &format!("10.213.{}.1/24", self.run),
            "dev",
            &root,
        ])?;
        sh(&["ip", "link", "set", &root, "up"])?;
        sh(&["ip", "-n", &hub, "link", "set", "vh", "master", "br0", "up"])?;
        for i in 0..self.n {
            let ns = self.ns(i);
            sh(&["ip", "netns", "add", &ns])?;
            self.created.push(ns.clone());
            let v = format!("v{i}");
            sh(&[
                "ip", "-n", &hub, "link", "add", &v, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ])?;
            sh(&["ip", "-n", &hub, "link", "set", &v, "master", "br0", "up"])?;
            sh(&[
                "ip",
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", self.addr(i)),
                "dev",
                "eth0",
            ])?;
            sh(&["ip", "-n", &ns, "link", "set", "eth0", "up"])?;
            sh(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    /// The command prefix that runs a program in replica `i`'s namespace.
    pub fn exec_prefix(&self, i: usize) -> Vec<String> {
        vec!["ip".into(), "netns".into(), "exec".into(), self.ns(i)]
    }
}

/// Runs `args` with `prefix` (which enters a replica's network namespace:
/// `ip netns exec <ns>`, or `nsenter -t <pid> -n` for a container).
fn in_ns(prefix: &[String], args: &[&str]) -> anyhow::Result<String> {
    let mut all: Vec<&str> = prefix.iter().map(String::as_str).collect();
    all.extend_from_slice(args);
    sh(&all)
}

/// Replaces the namespace's nftables fault table (`inet chaos`) with one
/// that applies `input` to what arrives on eth0 and `output` to what leaves
/// it (nft statements); two empty strings remove it.
fn nft(prefix: &[String], input: &str, output: &str) -> anyhow::Result<()> {
    let _ = in_ns(prefix, &["nft", "delete", "table", "inet", "chaos"]);
    if input.is_empty() && output.is_empty() {
        return Ok(());
    }
    let script = format!(
        "table inet chaos {{\n chain in {{\n  type filter hook input priority 0; policy accept;\n  iifname \"eth0\" {input}\n }}\n chain out {{\n  type filter hook output priority 0; policy accept;\n  oifname \"eth0\" {output}\n }}\n}}\n"
    );
    let file = tempfile::NamedTempFile::new().context("cannot create an nftables script")?;
    std::fs::write(file.path(), script).context("cannot write an nftables script")?;
    in_ns(prefix, &["nft", "-f", &file.path().to_string_lossy()]).map(|_| ())
}

/// Cuts the namespace off from everyone, both ways.
pub fn isolate(prefix: &[String]) -> anyhow::Result<()> {
    nft(prefix, "drop", "drop")
}

/// Drops everything the namespace sends; it still hears everyone.
pub fn mute(prefix: &[String]) -> anyhow::Result<()> {
    nft(prefix, "", "drop")
}

/// Whether `err` (of a `tc qdisc ... netem` command) says the kernel has
/// no netem qdisc.
fn netem_missing(err: &anyhow::Error) -> bool {
    let text = format!("{err:#}");
    text.contains("unknown") || text.contains("Unknown") || text.contains("not supported")
}

/// Delay ± jitter and loss on what the namespace sends: netem if the
/// kernel has it, otherwise no delay, a tbf rate limit and nftables loss
/// (see [`Shaping`]).
pub fn shape(
    prefix: &[String],
    delay_ms: u32,
    jitter_ms: u32,
    loss: u8,
) -> anyhow::Result<Shaping> {
    let (d, j, l) = (
        format!("{delay_ms}ms"),
        format!("{jitter_ms}ms"),
        format!("{loss}%"),
    );
    let netem = [
        "tc", "qdisc", "replace", "dev", "eth0", "root", "netem", "delay", &d, &j, "loss", &l,
    ];
    match in_ns(prefix, &netem) {
        Ok(_) => {
            return Ok(Shaping::Netem {
                delay_ms,
                jitter_ms,
                loss,
            })
        }
        Err(e) if netem_missing(&e) => {}
        Err(e) => return Err(e),
    }
    let mut tbf = vec!["tc", "qdisc", "replace", "dev", "eth0", "root", "tbf"];
    tbf.extend(TBF);
    in_ns(prefix, &tbf).context("no netem, and no tbf either")?;
    nft(prefix, "", &format!("numgen random mod 100 < {loss} drop"))?;
    Ok(Shaping::TbfAndLoss { loss })
}

/// Removes every fault from the namespace.
pub fn heal(prefix: &[String]) -> anyhow::Result<()> {
    let _ = in_ns(prefix, &["tc", "qdisc", "del", "dev", "eth0", "root"]);
    nft(prefix, "", "")
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in self.created.iter().rev() {
            let _ = sh(&["ip", "netns", "del", ns]);
        }
    }
}
