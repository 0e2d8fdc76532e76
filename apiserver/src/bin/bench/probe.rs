//! Where the CPU goes while a phase runs, and Valkey's memory: CPU seconds of this process
//! and of the apiserver (`/proc/<pid>/stat`, all threads) and of its store — Valkey
//! (`INFO cpu`, plus its per-command time from `INFO commandstats`) or, for kube-apiserver,
//! etcd (`/proc/<pid>/stat`) — sampled before and after each phase.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::Context;
use redis::aio::MultiplexedConnection;
use serde_json::{Value, json};

/// Clock ticks per second of `/proc/<pid>/stat` (`USER_HZ`, 100 on every Linux build we
/// target; reading it would need `sysconf`).
const CLK_TCK: f64 = 100.0;

/// CPU seconds (user + system, every thread) of a process from `/proc/<pid>/stat`.
fn proc_cpu(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ...": comm may contain spaces; utime and stime are fields 14
    // and 15, i.e. the 12th and 13th after the closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / CLK_TCK)
}

/// Busy CPU seconds of the whole machine from `/proc/stat` (everything but idle and iowait;
/// steal included, it is time this VM did not get).
fn machine_cpu() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: f64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4)?;
    Some((total - idle) / CLK_TCK)
}

/// Resident memory of a process in bytes (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Parses `INFO` output into `field -> value`.
pub fn parse_info(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.trim_end().split_once(':'))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// `cmdstat_<name>:calls=N,usec=M,...` -> `(name, N, M)`.
fn parse_cmdstat(key: &str, value: &str) -> Option<(String, u64, u64)> {
    let name = key.strip_prefix("cmdstat_")?;
    let mut calls = None;
    let mut usec = None;
    for kv in value.split(',') {
        match kv.split_once('=') {
            Some(("calls", v)) => calls = v.parse().ok(),
            Some(("usec", v)) => usec = v.parse().ok(),
            _ => {}
        }
    }
    Some((name.to_string(), calls?, usec?))
}

/// One sample of the counters.
#[derive(Debug, Clone)]
pub struct Sample {
    at: Instant,
    machine: Option<f64>,
    bench: Option<f64>,
    apiserver: Option<f64>,
    storage: Option<f64>,
    /// command -> (calls, usec)
    commands: BTreeMap<String, (u64, u64)>,
}

/// CPU used between two samples.
#[derive(Debug, Clone)]
pub struct Usage {
    pub seconds: f64,
    /// Cores busy on average (CPU seconds / wall seconds): the whole machine, ...
    pub machine: Option<f64>,
    /// ... this process, the apiserver, its store (Valkey or etcd, named by `storage_name`).
    pub bench: Option<f64>,
    pub apiserver: Option<f64>,
    pub storage: Option<f64>,
    pub storage_name: &'static str,
    /// The Valkey commands that took the most time: (command, calls, usec per call, share
    /// of one core).
    pub top_commands: Vec<(String, u64, f64, f64)>,
}

impl Usage {
    pub fn summary(&self) -> String {
        let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
        let mut s = format!(
            "bench {}  apiserver {}  {} {}  other {}",
            f(self.bench),
            f(self.apiserver),
            self.storage_name,
            f(self.storage),
            f(self.other())
        );
        if !self.top_commands.is_empty() {
            s.push_str("  | valkey time:");
            for (cmd, calls, per, share) in &self.top_commands {
                s.push_str(&format!(" {cmd} {calls}x{per:.1}us={share:.2}"));
            }
        }
        s
    }

    /// Busy cores not accounted for by the three processes (other load on the machine, and
    /// the kernel's work on their behalf outside their accounting, e.g. softirqs).
    pub fn other(&self) -> Option<f64> {
        let ours =
            self.bench.unwrap_or(0.0) + self.apiserver.unwrap_or(0.0) + self.storage.unwrap_or(0.0);
        self.machine.map(|m| (m - ours).max(0.0))
    }

    pub fn to_json(&self) -> Value {
        let r = |v: Option<f64>| v.map(|v| (v * 1000.0).round() / 1000.0);
        json!({
            "seconds": (self.seconds * 1000.0).round() / 1000.0,
            "machine_cores": r(self.machine),
            "other_cores": r(self.other()),
            "bench_cores": r(self.bench),
            "apiserver_cores": r(self.apiserver),
            "storage": self.storage_name,
            "storage_cores": r(self.storage),
            "valkey_top_commands": self.top_commands.iter().map(|(c, n, per, share)| json!({
                "command": c, "calls": n, "usec_per_call": (per * 10.0).round() / 10.0,
                "cores": (share * 1000.0).round() / 1000.0,
            })).collect::<Vec<_>>(),
        })
    }
}

/// Takes [`Sample`]s; Valkey and the pids are optional.
pub struct Probe {
    valkey: Option<MultiplexedConnection>,
    apiserver_pid: Option<u32>,
    /// The store's process when it is not Valkey (etcd).
    storage_pid: Option<u32>,
    storage_name: &'static str,
}

impl Probe {
    /// Probes Substrate: the apiserver's pid and Valkey.
    pub fn new(valkey: Option<MultiplexedConnection>, apiserver_pid: Option<u32>) -> Self {
        Self {
            valkey,
            apiserver_pid,
            storage_pid: None,
            storage_name: "valkey",
        }
    }

    /// Probes an apiserver whose store is the process `storage_pid` (kube-apiserver's etcd).
    pub fn with_storage_pid(
        apiserver_pid: Option<u32>,
        storage_name: &'static str,
        storage_pid: Option<u32>,
    ) -> Self {
        Self {
            valkey: None,
            apiserver_pid,
            storage_pid,
            storage_name,
        }
    }

    pub fn apiserver_pid(&self) -> Option<u32> {
        self.apiserver_pid
    }

    pub fn valkey(&mut self) -> Option<&mut MultiplexedConnection> {
        self.valkey.as_mut()
    }

    pub async fn sample(&mut self) -> Sample {
        let mut s = Sample {
            at: Instant::now(),
            machine: machine_cpu(),
            bench: proc_cpu("self"),
            apiserver: self.apiserver_pid.and_then(|p| proc_cpu(&p.to_string())),
            storage: self.storage_pid.and_then(|p| proc_cpu(&p.to_string())),
            commands: BTreeMap::new(),
        };
        if let Some(conn) = self.valkey.as_mut()
            && let Ok(text) = redis::cmd("INFO")
                .arg("cpu")
                .arg("commandstats")
                .query_async::<String>(conn)
                .await
        {
            let info = parse_info(&text);
            let num = |k: &str| info.get(k).and_then(|v| v.parse::<f64>().ok());
            s.storage = num("used_cpu_user")
                .zip(num("used_cpu_sys"))
                .map(|(u, y)| u + y);
            s.commands = info
                .iter()
                .filter_map(|(k, v)| parse_cmdstat(k, v))
                .map(|(c, n, u)| (c, (n, u)))
                .collect();
        }
        s
    }

    /// The usage between `before` and now.
    pub async fn usage_since(&mut self, before: &Sample) -> Usage {
        let after = self.sample().await;
        let secs = after.at.duration_since(before.at).as_secs_f64().max(1e-9);
        let d = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| (a - b).max(0.0) / secs);
        let mut top: Vec<(String, u64, f64, f64)> = after
            .commands
            .iter()
            .filter_map(|(c, &(n, u))| {
                let (n0, u0) = before.commands.get(c).copied().unwrap_or((0, 0));
                let (dn, du) = (n.saturating_sub(n0), u.saturating_sub(u0));
                (dn > 0).then(|| (c.clone(), dn, du as f64 / dn as f64, du as f64 / 1e6 / secs))
            })
            .collect();
        top.sort_by(|a, b| b.3.total_cmp(&a.3));
        top.truncate(3);
        Usage {
            seconds: secs,
            machine: d(after.machine, before.machine),
            bench: d(after.bench, before.bench),
            apiserver: d(after.apiserver, before.apiserver),
            storage: d(after.storage, before.storage),
            storage_name: self.storage_name,
            top_commands: top,
        }
    }
}

/// `INFO memory` `used_memory` in bytes.
pub async fn used_memory(conn: &mut MultiplexedConnection) -> anyhow::Result<u64> {
    let text: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(conn)
        .await
        .context("INFO memory")?;
    parse_info(&text)
        .get("used_memory")
        .and_then(|v| v.parse().ok())
        .context("INFO memory has no used_memory")
}

/// `MEMORY USAGE key SAMPLES 0` (exact), 0 when the key does not exist.
pub async fn key_memory(conn: &mut MultiplexedConnection, key: &str) -> anyhow::Result<u64> {
    let v: Option<u64> = redis::cmd("MEMORY")
        .arg("USAGE")
        .arg(key)
        .arg("SAMPLES")
        .arg(0)
        .query_async(conn)
        .await
        .with_context(|| format!("MEMORY USAGE {key}"))?;
    Ok(v.unwrap_or(0))
}

/// `INFO server` `<field>` (e.g. `valkey_version`, `redis_version`).
pub async fn server_info(conn: &mut MultiplexedConnection) -> BTreeMap<String, String> {
    match redis::cmd("INFO")
        .arg("server")
        .arg("persistence")
        .query_async::<String>(conn)
        .await
    {
        Ok(t) => parse_info(&t),
        Err(_) => BTreeMap::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commandstats_parse() {
        assert_eq!(
            parse_cmdstat(
                "cmdstat_evalsha",
                "calls=10,usec=250,usec_per_call=25.00,rejected_calls=0,failed_calls=0"
            ),
            Some(("evalsha".into(), 10, 250))
        );
        assert_eq!(parse_cmdstat("used_memory", "1"), None);
    }

    #[test]
    fn info_parses() {
        let i = parse_info("# Memory\r\nused_memory:1234\r\nused_memory_human:1.21K\r\n");
        assert_eq!(i.get("used_memory").map(String::as_str), Some("1234"));
    }

    #[test]
    fn own_cpu_is_readable() {
        assert!(proc_cpu("self").is_some());
        assert!(machine_cpu().is_some());
    }
}
