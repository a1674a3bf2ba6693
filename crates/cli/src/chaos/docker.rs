//! The container backend: one container per replica from the image
//! `pbft-node:local` (docker/build.sh: `FROM scratch`, static binaries) on a
//! docker network of the run's own (10.215.R.0/24), the scenario directory
//! mounted read-only at /etc/pbft (configuration, keys) and each replica's
//! data directory bind-mounted at /data.
//!
//! kill -9 is `docker kill -s KILL` (the container is then removed, after
//! its log is appended to node-<i>.log, and started anew, possibly with
//! other arguments); pause is `docker pause` (the cgroup freezer); network
//! faults run the host's `nft` / `tc` inside the container's network
//! namespace through `nsenter`. `Drop` removes the containers and the
//! network.

use super::net::sh;
use anyhow::{bail, Context};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

/// The image every replica runs.
pub const IMAGE: &str = "pbft-node:local";

/// The containers of one cluster.
pub struct Docker {
    run: u8,
    network: String,
    dir: PathBuf,
    n: usize,
    running: Vec<bool>,
}

impl Docker {
    /// Creates the run's network (the image must exist).
    pub fn create(n: usize, dir: &Path) -> anyhow::Result<Docker> {
        sh(&["docker", "image", "inspect", IMAGE]).with_context(|| {
            format!("no image {IMAGE}: build it with docker/build.sh byzantine")
        })?;
        let seed = std::process::id() as usize;
        let mut last = None;
        for k in 0..20 {
            let run = ((seed + k) % 250 + 1) as u8;
            let network = format!("pbft-chaos-{run}");
            let subnet = format!("10.215.{run}.0/24");
            match sh(&["docker", "network", "create", "--subnet", &subnet, &network]) {
                Ok(_) => {
                    return Ok(Docker {
                        run,
                        network,
                        dir: dir.to_path_buf(),
                        n,
                        running: vec![false; n],
                    })
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no docker network")))
            .context("cannot create a docker network for the run")
    }

    /// Replica `i`'s address.
    pub fn addr(&self, i: usize) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 215, self.run, 10 + i as u8))
    }

    fn name(&self, i: usize) -> String {
        format!("pbft-chaos-{}-r{i}", self.run)
    }

    /// Starts replica `i`'s container with `args` after `--config`.
    pub fn start(&mut self, i: usize, args: &[String]) -> anyhow::Result<()> {
        let name = self.name(i);
        let _ = sh(&["docker", "rm", "-f", &name]);
        let data = self.dir.join("data").join(format!("node-{i}"));
        std::fs::create_dir_all(&data).context("cannot create a data dir")?;
        let conf = format!("{}:/etc/pbft:ro", self.dir.display());
        let data = format!("{}:/data", data.display());
        let ip = self.addr(i).to_string();
        let config = format!("/etc/pbft/node-{i}.toml");
        let mut cmd = vec![
            "docker",
            "run",
            "-d",
            "--name",
            &name,
            "--network",
            &self.network,
            "--ip",
            &ip,
            "-v",
            &conf,
            "-v",
            &data,
            IMAGE,
            "--config",
            &config,
        ];
        cmd.extend(args.iter().map(String::as_str));
        sh(&cmd).with_context(|| format!("cannot start replica {i}'s container"))?;
        self.running[i] = true;
        Ok(())
    }

    fn save_log(&self, i: usize) {
        if let Ok(out) = std::process::Command::new("docker")
            .args(["logs", &self.name(i)])
            .output()
        {
            use std::io::Write;
            let path = self.dir.join(format!("node-{i}.log"));
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
            {
                let _ = f.write_all(&out.stdout);
                let _ = f.write_all(&out.stderr);
            }
        }
    }

    /// SIGKILL to replica `i`'s container; it is removed.
    pub fn kill(&mut self, i: usize) {
        if !self.running[i] {
            return;
        }
        let name = self.name(i);
        let _ = sh(&["docker", "kill", "-s", "KILL", &name]);
        self.save_log(i);
        let _ = sh(&["docker", "rm", "-f", &name]);
        self.running[i] = false;
    }

    /// `docker pause`.
    pub fn pause(&self, i: usize) -> anyhow::Result<()> {
        sh(&["docker", "pause", &self.name(i)]).map(|_| ())
    }

    /// `docker unpause`.
    pub fn resume(&self, i: usize) -> anyhow::Result<()> {
        sh(&["docker", "unpause", &self.name(i)]).map(|_| ())
    }

    /// The exit code of replica `i` if its container stopped by itself.
    pub fn exited(&mut self, i: usize) -> Option<i32> {
        if !self.running[i] {
            return None;
        }
        let state = sh(&[
            "docker",
            "inspect",
            "-f",
            "{{.State.Status}} {{.State.ExitCode}}",
            &self.name(i),
        ])
        .ok()?;
        let mut parts = state.split_whitespace();
        if parts.next()? != "exited" {
            return None;
        }
        let code = parts.next()?.parse().ok()?;
        self.save_log(i);
        let _ = sh(&["docker", "rm", "-f", &self.name(i)]);
        self.running[i] = false;
        Some(code)
    }

    /// Whether replica `i`'s container runs.
    pub fn is_running(&self, i: usize) -> bool {
        self.running[i]
    }

    /// The command prefix that enters replica `i`'s network namespace.
    pub fn exec_prefix(&self, i: usize) -> anyhow::Result<Vec<String>> {
        let pid = sh(&["docker", "inspect", "-f", "{{.State.Pid}}", &self.name(i)])?;
        let pid = pid.trim().to_string();
        if pid.is_empty() || pid == "0" {
            bail!("replica {i}'s container is not running");
        }
        Ok(vec!["nsenter".into(), "-t".into(), pid, "-n".into()])
    }

    /// The last `lines` lines of replica `i`'s output.
    pub fn log_tail(&self, i: usize, lines: usize) -> Option<String> {
        if !self.running[i] {
            return None;
        }
        let out = std::process::Command::new("docker")
            .args(["logs", "--tail", &lines.to_string(), &self.name(i)])
            .output()
            .ok()?;
        Some(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        for i in 0..self.n {
            self.kill(i);
            let _ = sh(&["docker", "rm", "-f", &self.name(i)]);
        }
        let _ = sh(&["docker", "network", "rm", &self.network]);
    }
}
