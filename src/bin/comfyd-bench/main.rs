//! `comfyd-bench`: measures comfyd the way its users see it, end to end, on one machine.
//!
//! Per scenario and store it starts N `comfy-sim` processes, the real `comfyd` binary (found next to
//! this executable), `s3s-fs` for the S3 store, and a webhook receiver inside this process; submits
//! jobs over HTTP; waits for every webhook; and reports latencies, throughput, makespan against the
//! ideal, backend idle time, comfyd's CPU and memory, and lost or duplicated jobs. Nothing here asserts
//! a timing: the figures go to stdout and, with `--out`, into BENCHMARKS.md.
//!
//! ```text
//! cargo build --release --bins
//! target/release/comfyd-bench all --store both --dir /dev/shm --repeat 3 --out BENCHMARKS.md
//! ```
//!
//! Environment: `COMFYD_BENCH_LOG` sets comfyd's `RUST_LOG` (default `warn`); `COMFYD_BENCH_KEEP=1` keeps
//! each run's scratch folder (logs of comfyd, the sims and s3s-fs); `COMFYD_BENCH_PERF=<dir>` records
//! comfyd with `perf record --call-graph dwarf` during each run (999 Hz, or `COMFYD_BENCH_PERF_FREQ`);
//! `COMFYD_BENCH_CALLGRIND=<dir>` runs comfyd under callgrind and reports its instructions per job.
//!
//! # Layout
//! - `scenario.rs`: the four scenarios, and running one against one store
//! - `procs.rs`: child processes (killed on drop), scratch folders, `/proc` figures
//! - `pg.rs`: a PostgreSQL database per run (`--postgres`)
//! - `receiver.rs`: the webhook receiver
//! - `stats.rs`: percentiles, idle time, ideal makespan (unit-tested)
//! - `report.rs`: the Markdown tables and the targets

mod outcome;
mod pg;
mod proc_stats;
mod procs;
mod receiver;
mod report;
mod scenario;
mod stats;

use std::path::PathBuf;

use anyhow::{bail, Context as _};
use clap::{Parser, ValueEnum};

use crate::outcome::Outcome;
use crate::scenario::StoreKind;

/// Command line.
#[derive(Parser, Debug)]
#[command(
    name = "comfyd-bench",
    about = "End-to-end benchmark of comfyd against comfy-sim backends"
)]
struct Cli {
    /// Scenarios to run: a, b, c, d, or all.
    #[arg(default_value = "all")]
    scenarios: Vec<String>,
    /// Output store(s) comfyd writes to.
    #[arg(long, value_enum, default_value_t = StoreArg::Local)]
    store: StoreArg,
    /// Write the report into this Markdown file (between its `<!-- bench:begin/end -->` markers if
    /// it has them, so the text around them is kept).
    #[arg(long)]
    out: Option<PathBuf>,
    /// The workflows folder comfyd loads (must hold `solid`).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/workflows"))]
    workflows: PathBuf,
    /// Extra environment for comfyd, as KEY=VALUE (repeatable), e.g. `COMFYD_MAX_IN_FLIGHT=4`
    /// to see what a setting changes. The report lists them.
    #[arg(long = "comfyd-env", value_parser = parse_key_value)]
    comfyd_env: Vec<(String, String)>,
    /// Seconds to wait before each run after the first, so that one run's aftermath (the kernel
    /// writing back its files, a busy host) weighs less on the next.
    #[arg(long, default_value_t = 10)]
    pause: u64,
    /// Passes over the scenarios (and stores). With more than one, each target is judged on the
    /// median of the runs (lost and duplicated jobs on the worst run), the report lists every run's
    /// value, and each scenario table shows the run with the median comfyd CPU per job: CPU time
    /// moves 10 to 20 % from run to run on these machines.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=20))]
    repeat: u32,
    /// Where each run's scratch folder goes (comfyd's database and local store, the simulators'
    /// files, s3s-fs's objects); default: the system temp dir. The report says what making a file
    /// there costs, because comfyd pays it for every output it stores locally.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Run comfyd on PostgreSQL instead of SQLite: a URL the bench may create databases with, such
    /// as `postgres://postgres@127.0.0.1/postgres`. Each run gets a database of its own, dropped
    /// after it.
    #[arg(long)]
    postgres: Option<String>,
}

/// `KEY=VALUE` → (KEY, VALUE).
fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum StoreArg {
    Local,
    S3,
    Both,
}

impl StoreArg {
    fn kinds(self) -> Vec<StoreKind> {
        match self {
            StoreArg::Local => vec![StoreKind::Local],
            StoreArg::S3 => vec![StoreKind::S3],
            StoreArg::Both => vec![StoreKind::Local, StoreKind::S3],
        }
    }
}

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Ctrl-C drops the run future, whose guards kill every child before we exit.
    tokio::select! {
        r = run(cli) => r,
        _ = tokio::signal::ctrl_c() => bail!("interrupted"),
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let bins = procs::Binaries::locate()?;
    let all = scenario::all();
    let wanted: Vec<scenario::Scenario> = if cli.scenarios.iter().any(|s| s == "all") {
        all.clone()
    } else {
        let mut v = Vec::new();
        for key in &cli.scenarios {
            match all.iter().find(|s| s.key == key.to_lowercase()) {
                Some(s) => v.push(s.clone()),
                None => bail!("unknown scenario {key:?}: use a, b, c, d or all"),
            }
        }
        v
    };
    if !cli.workflows.join("solid.toml").is_file() {
        bail!(
            "{} has no solid workflow (solid.toml); pass --workflows",
            cli.workflows.display()
        );
    }
    let workflows = cli
        .workflows
        .canonicalize()
        .context("resolving --workflows")?;

    let dir = cli.dir.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir.canonicalize().context("resolving --dir")?;
    let file_cost = proc_stats::file_cost_us(&dir)
        .with_context(|| format!("making probe files in {}", dir.display()))?;

    // Whether the client and the receiver may run ahead of the processes they measure.
    let favoured = proc_stats::favour_this_thread();
    proc_stats::unfavour_this_thread();
    let receiver = receiver::Receiver::start().context("starting the webhook receiver")?;
    // The header is taken now: the commit and load at the start are the ones that matter.
    let mut header = machine(&chrono::Utc::now());
    header.push_str(&format!(
        " Run folders in {} ({}), where making a file (a folder, the file written and synced, \
         then renamed, as the local store does) costs {file_cost:.0} µs of CPU.",
        dir.display(),
        proc_stats::filesystem_type(&dir),
    ));
    header.push_str(&if favoured {
        format!(
            " The bench's client (while it submits) and webhook receiver ran at nice {}, so \
             that their own waits for a core do not count as comfyd's latency.",
            proc_stats::OBSERVER_NICE
        )
    } else {
        " The bench's client and webhook receiver ran at the normal priority (a higher one \
         needs root or CAP_SYS_NICE): on a busy machine their own waits for a core count in \
         the latencies."
            .to_owned()
    });
    let built = binary_mtime(&bins.comfyd);
    let mut outcomes: Vec<Outcome> = Vec::new();
    // With --repeat, the whole list runs again, rather than each run N times in a row: the
    // machine's slow spells then fall on every scenario alike.
    let pairs: Vec<_> = wanted
        .iter()
        .flat_map(|sc| cli.store.kinds().into_iter().map(move |store| (sc, store)))
        .collect();
    let runs = (0..cli.repeat).flat_map(|_| pairs.iter().copied());
    for (sc, store) in runs {
        if !outcomes.is_empty() {
            tokio::time::sleep(std::time::Duration::from_secs(cli.pause)).await;
        }
        eprintln!("({}) {} [{}] ...", sc.key, sc.title, store.name());
        let database = match &cli.postgres {
            Some(admin) => Some(pg::RunDatabase::create(admin, outcomes.len()).await?),
            None => None,
        };
        let mut env = cli.comfyd_env.clone();
        if let Some(db) = &database {
            env.push(("DATABASE_URL".into(), db.url.clone()));
        }
        let o = scenario::run(&bins, &workflows, &dir, sc, store, &receiver, &env).await;
        if let Some(db) = database {
            db.remove().await;
        }
        let o =
            o.with_context(|| format!("scenario ({}) with the {} store", sc.key, store.name()))?;
        eprintln!(
            "  {} jobs: submit p99 {:.1} ms, webhook p50 {:.1} ms, {:.0} jobs/s, makespan {:.0}/{:.0} ms, \
             CPU {:.2} ms/job, RSS {:.1} MiB, lost {}, dup {}",
            o.accepted,
            o.submit_p99.unwrap_or(f64::NAN),
            o.hook_p50.unwrap_or(f64::NAN),
            o.jobs_per_s.unwrap_or(f64::NAN),
            o.makespan_ms.unwrap_or(f64::NAN),
            o.ideal_ms.unwrap_or(f64::NAN),
            o.cpu_ms_per_job.unwrap_or(f64::NAN),
            o.peak_rss_mib.unwrap_or(f64::NAN),
            o.lost,
            o.duplicated,
        );
        outcomes.push(o);
    }
    receiver.stop().await;

    if binary_mtime(&bins.comfyd) != built {
        header.push_str(
            " **Warning: the comfyd binary was rebuilt during this run; later scenarios ran the new build.**",
        );
    }
    if std::env::var_os("COMFYD_BENCH_CALLGRIND").is_some() {
        header.push_str(
            " **comfyd ran under callgrind: only its instruction counts mean anything; every time, \
             rate and CPU figure is many times what it would be.**",
        );
    }
    if cli.postgres.is_some() {
        header.push_str(" comfyd ran on PostgreSQL (a new database for each run).");
    }
    if cli.repeat > 1 {
        header.push_str(&format!(
            " Every scenario ran {} times with each store, one pass of the list after the other.",
            cli.repeat
        ));
    }
    if !cli.comfyd_env.is_empty() {
        let list: Vec<String> = cli
            .comfyd_env
            .iter()
            .map(|(k, v)| format!("`{k}={v}`"))
            .collect();
        header.push_str(&format!(" comfyd ran with {}.", list.join(", ")));
    }
    let text = report::render(&header, &wanted, &outcomes);
    println!("{text}");
    if let Some(path) = &cli.out {
        let existing = std::fs::read_to_string(path).ok();
        std::fs::write(path, report::splice(existing.as_deref(), &text))
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("report written to {}", path.display());
    }
    Ok(())
}

/// When a binary was last written (another build in a shared target dir can replace it mid-run).
fn binary_mtime(path: &std::path::Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The machine and the moment, for the report's header.
fn machine(started: &chrono::DateTime<chrono::Utc>) -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse::<f64>().ok())
        .map(|k| format!("{:.1} GiB", k / 1024.0 / 1024.0))
        .unwrap_or_else(|| "?".into());
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "?".into());
    // Others may be editing the tree: say so when the binaries may include uncommitted changes.
    let dirty = std::process::Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .is_ok_and(|o| !o.stdout.is_empty());
    let commit = if dirty {
        format!("{commit} (plus uncommitted changes)")
    } else {
        commit
    };
    format!(
        "Run {} UTC at commit {commit}; {cpus} CPUs ({model}), {mem_gib} RAM; load average at start {}.",
        started.format("%Y-%m-%d %H:%M"),
        proc_stats::load_average()
    )
}
