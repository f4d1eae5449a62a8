//! The processes a scenario runs (`comfy-sim` ×N, `comfyd`, `s3s-fs`) and a scratch folder (what
//! `/proc` says about them is in `proc_stats`). Every child is owned by a [`Children`] guard that kills it on drop,
//! so an error or a panic in the bench never leaves a daemon behind.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

/// A folder under `parent` (`--dir`), removed on drop unless `COMFYD_BENCH_KEEP` is set (then its
/// logs stay for a look).
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    pub fn new(parent: &Path, label: &str) -> anyhow::Result<ScratchDir> {
        let path = parent.join(format!(
            "comfyd-bench-{label}-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(ScratchDir(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if std::env::var_os("COMFYD_BENCH_KEEP").is_some() {
            eprintln!("  kept {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Child processes, killed (SIGKILL) and reaped on drop, in reverse start order.
#[derive(Default)]
pub struct Children(Vec<(String, Child)>);

impl Children {
    pub fn push(&mut self, name: impl Into<String>, child: Child) -> u32 {
        let pid = child.id();
        self.0.push((name.into(), child));
        pid
    }

    /// Fails if any child has exited (a crashed daemon must not look like a slow one).
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for (name, child) in &mut self.0 {
            if let Some(status) = child.try_wait().context("polling a child")? {
                bail!("{name} exited unexpectedly ({status})");
            }
        }
        Ok(())
    }
}

impl Children {
    /// Name and pid of every child.
    pub fn pids(&self) -> Vec<(String, u32)> {
        self.0.iter().map(|(n, c)| (n.clone(), c.id())).collect()
    }

    /// Waits up to `limit` for the child `pid` to exit, then forgets it (killing it if needed).
    pub fn wait_for(&mut self, pid: u32, limit: Duration) {
        let Some(i) = self.0.iter().position(|(_, c)| c.id() == pid) else {
            return;
        };
        let (_, mut child) = self.0.remove(i);
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        while let Some((_, mut child)) = self.0.pop() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The binaries the bench drives: `comfyd` and `comfy-sim` next to the bench's own executable, and
/// `s3s-fs` (only needed for the S3 store).
pub struct Binaries {
    pub comfyd: PathBuf,
    pub sim: PathBuf,
}

impl Binaries {
    pub fn locate() -> anyhow::Result<Binaries> {
        let exe = std::env::current_exe().context("finding the bench's own executable")?;
        let dir = exe
            .parent()
            .context("the bench executable has no parent folder")?;
        let find = |name: &str| -> anyhow::Result<PathBuf> {
            let p = dir.join(name);
            if p.is_file() {
                Ok(p)
            } else {
                bail!(
                    "{name} not found next to comfyd-bench (looked for {}); build every binary first: \
                     cargo build --release --bins",
                    p.display()
                )
            }
        };
        Ok(Binaries {
            comfyd: find("comfyd")?,
            sim: find("comfy-sim")?,
        })
    }
}

/// `s3s-fs` from `S3S_FS_BIN`, else `PATH`, else `~/.cargo/bin`.
pub fn s3s_fs_binary() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("S3S_FS_BIN") {
        return Ok(PathBuf::from(p));
    }
    if let Some(paths) = std::env::var_os("PATH") {
        if let Some(p) = std::env::split_paths(&paths)
            .map(|d| d.join("s3s-fs"))
            .find(|p| p.is_file())
        {
            return Ok(p);
        }
    }
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    match home.map(|d| d.join("bin/s3s-fs")) {
        Some(p) if p.is_file() => Ok(p),
        _ => bail!(
            "s3s-fs not found (needed for --store s3): set S3S_FS_BIN or run \
             `cargo install s3s-fs@0.14.1 --features binary --locked`"
        ),
    }
}

/// A started simulator.
pub struct SimProc {
    pub url: String,
    pub exec_ms: u64,
}

/// Starts `comfy-sim --port 0` and reads its port from the banner line.
pub fn start_sim(
    bins: &Binaries,
    children: &mut Children,
    dir: &Path,
    index: usize,
    exec_ms: u64,
    paused: bool,
) -> anyhow::Result<SimProc> {
    let data = dir.join(format!("sim{index}"));
    std::fs::create_dir_all(&data)?;
    let log = std::fs::File::create(dir.join(format!("sim{index}.log")))?;
    let mut cmd = Command::new(&bins.sim);
    cmd.args(["--port", "0", "--exec-ms", &exec_ms.to_string()])
        .arg("--data-dir")
        .arg(&data)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log);
    if paused {
        cmd.arg("--paused");
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", bins.sim.display()))?;
    let stdout = child.stdout.take().context("comfy-sim stdout")?;
    children.push(format!("comfy-sim #{index}"), child);
    // The banner is the first line; the sim prints nothing else on stdout.
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .context("reading the comfy-sim banner")?;
    let url = line
        .trim()
        .strip_prefix("comfy-sim listening on ")
        .with_context(|| format!("unexpected comfy-sim banner {line:?}"))?
        .to_owned();
    Ok(SimProc { url, exec_ms })
}

/// A started `s3s-fs` with its credentials.
pub struct S3Proc {
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
}

/// Starts `s3s-fs` on a free port over `dir/s3` and waits until it accepts connections.
pub fn start_s3(children: &mut Children, dir: &Path) -> anyhow::Result<S3Proc> {
    let bin = s3s_fs_binary()?;
    let data = dir.join("s3");
    std::fs::create_dir_all(&data)?;
    let port = free_port()?;
    let s3 = S3Proc {
        endpoint: format!("http://127.0.0.1:{port}"),
        access_key: format!("AK{}", rand::random::<u32>()),
        secret_key: format!("SK{}", uuid::Uuid::new_v4().simple()),
    };
    let log = std::fs::File::create(dir.join("s3s-fs.log"))?;
    let child = Command::new(&bin)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args([
            "--access-key",
            &s3.access_key,
            "--secret-key",
            &s3.secret_key,
        ])
        .arg(&data)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    children.push("s3s-fs", child);
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(s3);
        }
        children.check_alive()?;
        std::thread::sleep(Duration::from_millis(25));
    }
    bail!("s3s-fs did not accept connections on port {port} within 15 s")
}

/// Starts the real `comfyd` with the given environment (plus the fixed part) on a free port, under
/// callgrind when `counter` is given. Returns its base URL and pid.
#[allow(clippy::too_many_arguments)] // one process's settings, each named
pub fn start_comfyd(
    bins: &Binaries,
    children: &mut Children,
    dir: &Path,
    workflows: &Path,
    endpoints: &[String],
    extra_env: &HashMap<String, String>,
    counter: Option<&Callgrind>,
) -> anyhow::Result<(String, u32)> {
    let port = free_port()?;
    let data = dir.join("comfyd");
    std::fs::create_dir_all(&data)?;
    let log = std::fs::File::create(dir.join("comfyd.log"))?;
    let mut command = match counter {
        Some(c) => {
            let mut v = Command::new("valgrind");
            v.args(["--tool=callgrind", "--dump-instr=no"])
                .arg(format!("--callgrind-out-file={}", c.out.display()))
                .arg(&bins.comfyd);
            v
        }
        None => Command::new(&bins.comfyd),
    };
    let child = command
        .current_dir(&data)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env(
            "RUST_LOG",
            std::env::var("COMFYD_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .env("SERVICE_PORT", port.to_string())
        .env("COMFYD_HOST", "127.0.0.1")
        .env("COMFYUI_ENDPOINTS", endpoints.join(","))
        .env(
            "DATABASE_URL",
            format!("sqlite://{}?mode=rwc", data.join("c.db").display()),
        )
        .env("COMFYD_DATA_DIR", &data)
        .env("COMFYD_WORKFLOWS_DIR", workflows)
        .envs(extra_env)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", bins.comfyd.display()))?;
    let pid = children.push("comfyd", child);
    Ok((format!("http://127.0.0.1:{port}"), pid))
}

/// With `COMFYD_BENCH_CALLGRIND=<dir>`, comfyd runs under `valgrind --tool=callgrind`, which counts
/// the instructions it executes (user space only, all threads). Unlike CPU time, the count hardly
/// moves from run to run on a busy or virtual machine, so it shows what a change to comfyd's code
/// saves; everything timed in such a run is many times slower and means nothing.
pub struct Callgrind {
    /// Where callgrind writes; each dump adds a suffix (`.1`, `.2`, ...).
    out: PathBuf,
}

impl Callgrind {
    pub fn from_env(label: &str) -> anyhow::Result<Option<Callgrind>> {
        let Some(dir) = std::env::var_os("COMFYD_BENCH_CALLGRIND").map(PathBuf::from) else {
            return Ok(None);
        };
        std::fs::create_dir_all(&dir)?;
        let out = std::path::absolute(dir.join(format!("{label}.callgrind")))?;
        eprintln!("  callgrind -> {}.1", out.display());
        Ok(Some(Callgrind { out }))
    }

    /// Zeroes the counts: what follows is what the run costs.
    pub fn start(&self, pid: u32) -> anyhow::Result<()> {
        callgrind_control("-z", pid)
    }

    /// Writes the counts since [`Callgrind::start`] to `<out>.1` and answers their total.
    pub fn stop(&self, pid: u32) -> anyhow::Result<u64> {
        callgrind_control("-d", pid)?;
        let mut dump = self.out.as_os_str().to_owned();
        dump.push(".1");
        let text = std::fs::read_to_string(&dump)
            .with_context(|| format!("reading {}", PathBuf::from(&dump).display()))?;
        text.lines()
            .find_map(|l| {
                l.strip_prefix("totals:")
                    .or_else(|| l.strip_prefix("summary:"))
            })
            .and_then(|n| n.trim().parse().ok())
            .context("no totals in the callgrind dump")
    }
}

fn callgrind_control(flag: &str, pid: u32) -> anyhow::Result<()> {
    let status = Command::new("callgrind_control")
        .args([flag, &pid.to_string()])
        .stdout(Stdio::null())
        .status()
        .context("running callgrind_control")?;
    if !status.success() {
        bail!("callgrind_control {flag} {pid} failed: {status}");
    }
    Ok(())
}

/// With `COMFYD_BENCH_PERF=<dir>`, records comfyd with `perf record --call-graph dwarf` into
/// `<dir>/<label>.perf.data` until [`stop_profiler`]; otherwise does nothing.
pub fn start_profiler(
    children: &mut Children,
    pid: u32,
    label: &str,
) -> anyhow::Result<Option<u32>> {
    let Some(dir) = std::env::var_os("COMFYD_BENCH_PERF").map(PathBuf::from) else {
        return Ok(None);
    };
    std::fs::create_dir_all(&dir)?;
    let out = dir.join(format!("{label}.perf.data"));
    let freq = std::env::var("COMFYD_BENCH_PERF_FREQ").unwrap_or_else(|_| "999".into());
    let child = Command::new("perf")
        // DWARF call graphs: the release build keeps debug info but no frame pointers.
        .args([
            "record",
            "-F",
            &freq,
            "--call-graph",
            "dwarf,16384",
            "-p",
            &pid.to_string(),
            "-o",
        ])
        .arg(&out)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting perf (COMFYD_BENCH_PERF is set)")?;
    eprintln!("  perf record -> {}", out.display());
    Ok(Some(children.push("perf", child)))
}

/// Stops `perf record` with SIGINT (it writes its file on SIGINT, not on SIGKILL) and gives it a
/// moment to finish.
pub fn stop_profiler(children: &mut Children, pid: Option<u32>) {
    let Some(pid) = pid else { return };
    let _ = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status();
    children.wait_for(pid, Duration::from_secs(30));
}

/// A port that was free a moment ago (the child binds it right away).
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
