//! Replica processes: start, kill (SIGKILL), restart from the same node file
//! and data directory, and never outlive their owner. Shared by the tests
//! (through `crate::testkit`) and the `pbft` tool (`demo`, `bench`).

use anyhow::{bail, Context};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The resident memory of process `pid` in bytes (`VmRSS` of
/// `/proc/<pid>/status`); `None` if it is gone or there is no `/proc`.
pub fn resident_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status_kib(&status, "VmRSS:").map(|kib| kib * 1024)
}

/// A `<name> <n> kB` field of a `/proc/<pid>/status` text.
pub(crate) fn status_kib(status: &str, name: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(name))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// How to run one replica: `exe args... --config <node file>`.
#[derive(Clone, Debug)]
pub struct NodeCommand {
    /// The program: `pbft-node`, or `pbft` with `args = ["node"]`.
    pub exe: PathBuf,
    /// Arguments before `--config`.
    pub args: Vec<OsString>,
}

impl NodeCommand {
    /// `exe --config <node file>` (the `pbft-node` binary).
    pub fn new(exe: &Path) -> NodeCommand {
        NodeCommand {
            exe: exe.to_path_buf(),
            args: Vec::new(),
        }
    }

    /// `exe <arg> --config <node file>` (e.g. `pbft node`).
    pub fn with_arg(exe: &Path, arg: &str) -> NodeCommand {
        NodeCommand {
            exe: exe.to_path_buf(),
            args: vec![arg.into()],
        }
    }
}

/// The replicas of a cluster as real processes.
///
/// Every process still running is killed (SIGKILL) and reaped on drop, so a
/// failing test leaves none behind. Each replica's stdout and stderr are
/// appended to `node-<i>.log` in the cluster directory, across restarts.
#[derive(Debug)]
pub struct NodeProcesses {
    command: NodeCommand,
    node_files: Vec<PathBuf>,
    logs: Vec<PathBuf>,
    children: Vec<Option<Child>>,
}

impl NodeProcesses {
    /// Starts `command` once per node file (replica `i` from
    /// `node_files[i]`), each logging to `node-<i>.log` in `log_dir`.
    pub fn start_all(
        command: &NodeCommand,
        node_files: &[PathBuf],
        log_dir: &Path,
    ) -> anyhow::Result<NodeProcesses> {
        let mut processes = NodeProcesses {
            command: command.clone(),
            node_files: node_files.to_vec(),
            logs: (0..node_files.len())
                .map(|i| log_dir.join(format!("node-{i}.log")))
                .collect(),
            children: node_files.iter().map(|_| None).collect(),
        };
        for i in 0..processes.node_files.len() {
            processes.start(i)?;
        }
        Ok(processes)
    }

    /// Starts replica `i` from its node file (and so its data directory).
    /// An error if it is already running.
    pub fn start(&mut self, i: usize) -> anyhow::Result<()> {
        let (Some(node_file), Some(log_path)) = (self.node_files.get(i), self.logs.get(i)) else {
            bail!("no replica {i}");
        };
        if self.is_running(i) {
            bail!("replica {i} is already running");
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .with_context(|| format!("cannot open {}", log_path.display()))?;
        let log2 = log.try_clone().context("cannot duplicate a log file")?;
        let child = Command::new(&self.command.exe)
            .args(&self.command.args)
            .arg("--config")
            .arg(node_file)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .with_context(|| {
                format!(
                    "cannot start {} for replica {i}",
                    self.command.exe.display()
                )
            })?;
        self.children[i] = Some(child);
        Ok(())
    }

    /// Kills replica `i` with SIGKILL and reaps it; false if it was not running.
    pub fn kill(&mut self, i: usize) -> bool {
        match self.children.get_mut(i).and_then(Option::take) {
            Some(mut child) => {
                let _ = child.kill();
                let _ = child.wait();
                true
            }
            None => false,
        }
    }

    /// The process id of replica `i`, if it was started and not killed.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.children.get(i)?.as_ref().map(Child::id)
    }

    /// How many replicas there are (running or not).
    pub fn len(&self) -> usize {
        self.children.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.children.is_empty()
    }

    /// Whether replica `i` was started and not killed (it may have exited
    /// since: see [`NodeProcesses::check_running`]).
    pub fn is_running(&self, i: usize) -> bool {
        self.children.get(i).is_some_and(Option::is_some)
    }

    /// An error naming the first replica that should run but has exited,
    /// with the end of its log.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        for i in 0..self.children.len() {
            if let Some(child) = &mut self.children[i] {
                if let Some(status) = child.try_wait()? {
                    self.children[i] = None;
                    bail!(
                        "replica {i} exited ({status}); end of its log:\n{}",
                        self.log_tail(i, 20)
                    );
                }
            }
        }
        Ok(())
    }

    /// The last `lines` lines of replica `i`'s log.
    pub fn log_tail(&self, i: usize, lines: usize) -> String {
        let text = self
            .logs
            .get(i)
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(lines).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for NodeProcesses {
    fn drop(&mut self) {
        for i in 0..self.children.len() {
            self.kill(i);
        }
    }
}
