//! What `/proc` says about a process and a thread (CPU time, memory, context switches, the run queue),
//! the machine's load, and the thread priority the bench's own observers take. Linux only; the
//! numbers the report gives come from here.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use anyhow::Context as _;

/// CPU time (user + system) a process has used so far, in milliseconds.
pub fn cpu_ms(pid: u32) -> anyhow::Result<f64> {
    cpu_ms_of(&format!("/proc/{pid}/stat"))
}

/// utime + stime of a `/proc/.../stat` file, in milliseconds.
fn cpu_ms_of(path: &str) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(path)?;
    // The command name (field 2) may hold spaces; the fields after its closing paren are plain.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed /proc/PID/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': field 3 (state) is index 0, so utime (14) is index 11 and stime (15) index 12.
    let utime: f64 = fields.get(11).context("no utime")?.parse()?;
    let stime: f64 = fields.get(12).context("no stime")?.parse()?;
    Ok((utime + stime) * 1000.0 / clock_ticks())
}

/// What making one file in `dir` costs this thread in CPU, in microseconds: a folder, the file
/// written and synced, then renamed, as comfyd's local store does for every output. On some virtual
/// machines this differs a hundredfold between two folders of one disk (it depends on what was
/// deleted there before), and it is charged to comfyd, so the report gives it.
///
/// It blocks its thread for a moment: the bench calls it once, before anything else runs.
pub fn file_cost_us(dir: &Path) -> anyhow::Result<f64> {
    use std::io::Write as _;
    const FILES: u32 = 200;
    let probe = dir.join(format!("comfyd-bench-probe-{}", std::process::id()));
    let make = |probe: &Path| -> anyhow::Result<u64> {
        let before = thread_cpu_ns()?;
        for i in 0..FILES {
            let sub = probe.join(i.to_string());
            std::fs::create_dir_all(&sub)?;
            let tmp = sub.join(".out.png.tmp");
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&[0u8; 128])?;
            f.sync_all()?;
            std::fs::rename(&tmp, sub.join("out.png"))?;
        }
        Ok(thread_cpu_ns()? - before)
    };
    let used = make(&probe);
    let _ = std::fs::remove_dir_all(&probe); // whatever happened, leave nothing behind
    Ok(used? as f64 / 1000.0 / f64::from(FILES))
}

/// This thread's time on a CPU so far, in nanoseconds.
fn thread_cpu_ns() -> anyhow::Result<u64> {
    thread_schedstat(0)
}

/// How long this thread has waited for a core while it could run, so far, in milliseconds.
pub fn thread_run_queue_wait_ms() -> anyhow::Result<f64> {
    Ok(thread_schedstat(1)? as f64 / 1e6)
}

/// Field `index` of `/proc/thread-self/schedstat`: time on a CPU, time waiting for one (both in
/// ns), time slices.
fn thread_schedstat(index: usize) -> anyhow::Result<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat")?;
    Ok(s.split_whitespace()
        .nth(index)
        .context("short schedstat")?
        .parse()?)
}

/// The nice value the bench's client (while it submits) and its webhook receiver ask for. They
/// share two cores with comfyd, the simulators and s3s-fs; at the normal priority the client waited
/// for a core a quarter of the submit phase of (b), and a response that waits in its socket for the
/// client to run is counted as comfyd's latency (BENCHMARKS.md, round 9).
pub const OBSERVER_NICE: i32 = -10;

/// Gives this thread [`OBSERVER_NICE`]; false when that is not permitted (it needs root or
/// `CAP_SYS_NICE`).
pub fn favour_this_thread() -> bool {
    set_thread_nice(OBSERVER_NICE)
}

/// Puts this thread back to the normal priority (always permitted), so that the processes it starts
/// next do not inherit the favour.
pub fn unfavour_this_thread() {
    set_thread_nice(0);
}

#[cfg(target_os = "linux")]
fn set_thread_nice(nice: i32) -> bool {
    // On Linux the nice value belongs to each thread, and PRIO_PROCESS with a thread id sets it.
    // SAFETY: two system calls about this thread; no memory is passed.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, nice) == 0 }
}

/// Elsewhere a process's threads share one nice value: the bench does not change it.
#[cfg(not(target_os = "linux"))]
fn set_thread_nice(_nice: i32) -> bool {
    false
}

/// This thread's nice value.
#[cfg(all(test, target_os = "linux"))]
fn thread_nice() -> i32 {
    // SAFETY: as above.
    unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
}

/// The type of the filesystem `dir` is on, as `stat -f` names it (`tmpfs`; `ext2/ext3` for ext4 too).
pub fn filesystem_type(dir: &Path) -> String {
    Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(dir)
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "?".into())
}

/// Clock ticks per second, the unit of `/proc/PID/stat`'s times; 100 on every Linux we know of.
fn clock_ticks() -> f64 {
    // SAFETY: sysconf reads a constant of the system.
    match unsafe { libc::sysconf(libc::_SC_CLK_TCK) } {
        n if n > 0 => n as f64,
        _ => 100.0,
    }
}

/// CPU time per thread name (digits stripped, so a pool's threads add up), in milliseconds.
pub fn thread_cpu_ms(pid: u32) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for e in entries.flatten() {
        let Ok(tid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let name =
            std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).unwrap_or_default();
        let name: String = name
            .trim()
            .chars()
            .filter(|c| !c.is_ascii_digit())
            .collect();
        if let Ok(ms) = cpu_ms_of(&format!("/proc/{pid}/task/{tid}/stat")) {
            *out.entry(name).or_insert(0.0) += ms;
        }
    }
    out
}

/// Context switches (voluntary + involuntary) of every thread of a process so far. Each hand-off
/// between threads (an SQL statement sent to SQLite's worker thread, say) costs at least one.
pub fn context_switches(pid: u32) -> u64 {
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    let mut total = 0;
    for e in entries.flatten() {
        let status = std::fs::read_to_string(e.path().join("status")).unwrap_or_default();
        for line in status.lines() {
            if let Some(v) = line
                .strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
            {
                total += v.trim().parse::<u64>().unwrap_or(0);
            }
        }
    }
    total
}

/// Machine-wide CPU counters from `/proc/stat`: (busy, total) in clock ticks, over every core.
/// Busy is everything but idle and iowait.
pub fn machine_cpu() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return (0, 0);
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}

/// Peak resident set size (`VmHWM`) of a process, in MiB.
pub fn peak_rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .context("no VmHWM in /proc/PID/status")?;
    let kib: f64 = line
        .split_whitespace()
        .nth(1)
        .context("malformed VmHWM")?
        .parse()?;
    Ok(kib / 1024.0)
}

/// The 1-minute load average, as `/proc/loadavg` says.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

/// Epoch milliseconds (with the sub-millisecond part), the clock the simulators use.
pub fn now_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cpu_and_rss_of_this_process() {
        let pid = std::process::id();
        assert!(cpu_ms(pid).expect("cpu") >= 0.0);
        assert!(peak_rss_mib(pid).expect("rss") > 0.1);
        assert!(cpu_ms(u32::MAX).is_err());
        // The test harness names its threads; at least one thread is seen.
        assert!(!thread_cpu_ms(pid).is_empty());
        assert!(context_switches(pid) > 0);
        let (busy, total) = machine_cpu();
        assert!(total > 0 && busy <= total);
        assert!(thread_run_queue_wait_ms().expect("schedstat") >= 0.0);
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn favours_a_thread_and_puts_it_back() {
        // In a thread of its own: the test harness's threads keep their priority.
        std::thread::spawn(|| {
            let before = thread_nice();
            if favour_this_thread() {
                assert_eq!(thread_nice(), OBSERVER_NICE);
                unfavour_this_thread();
                assert_eq!(thread_nice(), 0);
            } else {
                assert_eq!(thread_nice(), before, "a refused change changes nothing");
            }
        })
        .join()
        .expect("the thread ends");
    }
}
