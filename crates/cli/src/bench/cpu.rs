//! CPU time of processes: this one (clock_gettime of the process CPU clock)
//! and replica processes this bench started (`/proc/<pid>/stat`).

/// This process's user + system CPU time, in seconds.
pub fn self_seconds() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

/// User + system CPU time of process `pid` in seconds, from
/// `/proc/<pid>/stat`; `None` if it cannot be read (not Linux, gone).
pub fn pid_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let ticks = stat_ticks(&stat)?;
    let per_second = rustix::param::clock_ticks_per_second();
    (per_second > 0).then(|| ticks as f64 / per_second as f64)
}

/// utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line, in clock
/// ticks. The command name (field 2) is in parentheses and may hold spaces
/// and parentheses, so fields are counted after its last `)`.
fn stat_ticks(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // `after` starts at field 3 (state): utime is field 14, stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_utime_and_stime_after_the_command_name() {
        let line = "4242 (pbft (node) x) S 1 2 3 4 5 6 7 8 9 10 250 31 0 0 20 0 9 0 100 0 0";
        assert_eq!(stat_ticks(line), Some(281));
        assert_eq!(stat_ticks("garbage"), None);
    }

    #[test]
    fn this_process_has_spent_cpu_time() {
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        assert!(self_seconds() > 0.0);
        if cfg!(target_os = "linux") {
            let mine = pid_seconds(std::process::id()).expect("own /proc stat");
            assert!(mine >= 0.0);
        }
    }
}
