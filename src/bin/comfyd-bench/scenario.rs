//! The four scenarios and how one of them runs against one store: start the simulators, the S3 server
//! if needed and comfyd; submit every job; wait for every webhook; collect the simulators' stats and
//! comfyd's `/proc` figures; turn them into an `Outcome` (outcome.rs).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::outcome::{summarize, Outcome, SimStats, Submitted};
use crate::proc_stats;
use crate::procs::{self, Binaries, Children, ScratchDir};
use crate::receiver::Receiver;

/// Submits in flight at once ("at once" = as fast as ~64 concurrent clients can);
/// `COMFYD_BENCH_CONCURRENCY` overrides it (to see latency without queueing, for example).
const CONCURRENCY: usize = 64;
/// After the last expected webhook, how long to keep listening for duplicates (comfyd reads its
/// webhook outbox every second, so a second copy would show up within this).
const DUPLICATE_GRACE: Duration = Duration::from_millis(1500);
/// How long comfyd's idle CPU use is measured before the submits start.
const IDLE_PROBE: Duration = Duration::from_secs(2);
/// How long comfyd may take to answer `/healthz` with every backend up.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Where comfyd stores outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    Local,
    S3,
}

impl StoreKind {
    pub fn name(self) -> &'static str {
        match self {
            StoreKind::Local => "local",
            StoreKind::S3 => "s3",
        }
    }
}

/// One benchmark scenario.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// `a`..`d`.
    pub key: &'static str,
    pub title: &'static str,
    /// One simulator per entry, with this execution time per prompt.
    pub exec_ms: Vec<u64>,
    pub jobs: usize,
    /// Submit everything to paused simulators, then resume them at 0 ms and drain.
    pub paused_then_resume: bool,
    /// Longest wait for every webhook after the last submit.
    pub deadline: Duration,
}

/// Every scenario, in order.
pub fn all() -> Vec<Scenario> {
    vec![
        Scenario {
            key: "a",
            title: "3 backends x 50 ms, 300 jobs at once",
            exec_ms: vec![50, 50, 50],
            jobs: 300,
            paused_then_resume: false,
            deadline: Duration::from_secs(120),
        },
        Scenario {
            key: "b",
            title: "3 backends x 0 ms, 2,000 jobs at once",
            exec_ms: vec![0, 0, 0],
            jobs: 2000,
            paused_then_resume: false,
            deadline: Duration::from_secs(300),
        },
        Scenario {
            key: "c",
            title: "3 backends of 100, 100 and 400 ms, 150 jobs at once",
            exec_ms: vec![100, 100, 400],
            jobs: 150,
            paused_then_resume: false,
            deadline: Duration::from_secs(120),
        },
        Scenario {
            key: "d",
            title: "10,000 jobs submitted to 3 paused backends, then resumed at 0 ms and drained",
            exec_ms: vec![0, 0, 0],
            jobs: 10_000,
            paused_then_resume: true,
            deadline: Duration::from_secs(900),
        },
    ]
}

/// Runs `sc` against `store`. Every process it starts is gone when it returns.
pub async fn run(
    bins: &Binaries,
    workflows: &Path,
    dir: &Path,
    sc: &Scenario,
    store: StoreKind,
    receiver: &Receiver,
    extra_env: &[(String, String)],
) -> anyhow::Result<Outcome> {
    let scratch = ScratchDir::new(dir, &format!("{}-{}", sc.key, store.name()))?;
    let mut children = Children::default();
    let load_before = proc_stats::load_average();

    let mut sims = Vec::new();
    for (i, ms) in sc.exec_ms.iter().enumerate() {
        sims.push(procs::start_sim(
            bins,
            &mut children,
            scratch.path(),
            i,
            *ms,
            sc.paused_then_resume,
        )?);
    }
    let mut env = HashMap::new();
    if store == StoreKind::S3 {
        let s3 = procs::start_s3(&mut children, scratch.path())?;
        create_bucket(&s3, "bench").await?;
        env.insert("S3_BUCKET".into(), "bench".into());
        env.insert("S3_REGION_NAME".into(), "us-east-1".into());
        env.insert("AWS_ACCESS_KEY_ID".into(), s3.access_key.clone());
        env.insert("AWS_SECRET_ACCESS_KEY".into(), s3.secret_key.clone());
        env.insert("COMFYD_S3_ENDPOINT_URL".into(), s3.endpoint.clone());
    }
    env.extend(extra_env.iter().cloned());
    let endpoints: Vec<String> = sims.iter().map(|s| s.url.clone()).collect();
    let label = format!("{}-{}", sc.key, store.name());
    let callgrind = procs::Callgrind::from_env(&label)?;
    let (base, pid) = procs::start_comfyd(
        bins,
        &mut children,
        scratch.path(),
        workflows,
        &endpoints,
        &env,
        callgrind.as_ref(),
    )?;
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(60))
        .finish();
    wait_ready(&client, &base, sims.len(), &mut children)
        .await
        .with_context(|| {
            format!(
                "comfyd did not become ready; its log:\n{}",
                tail(&scratch.path().join("comfyd.log"))
            )
        })?;

    receiver.clear();
    let idle_start = (proc_stats::cpu_ms(pid)?, Instant::now());
    actix_rt::time::sleep(IDLE_PROBE).await;
    let idle_cpu_ms_per_s =
        (proc_stats::cpu_ms(pid)? - idle_start.0) / idle_start.1.elapsed().as_secs_f64();
    let profiler = procs::start_profiler(&mut children, pid, &label)?;
    if let Some(c) = &callgrind {
        c.start(pid)?;
    }
    let cpu_before = proc_stats::cpu_ms(pid)?;
    let threads_before = proc_stats::thread_cpu_ms(pid);
    let switches_before = proc_stats::context_switches(pid);
    let machine_before = proc_stats::machine_cpu();
    let others = |children: &Children| -> Vec<(String, f64)> {
        let mut v: Vec<(String, f64)> = Vec::new();
        let named = children
            .pids()
            .into_iter()
            .filter(|(n, _)| n != "comfyd" && n != "perf");
        let all = named.chain(std::iter::once(("bench".to_owned(), std::process::id())));
        for (name, pid) in all {
            // The sims add up under one name.
            let name = if name.starts_with("comfy-sim") {
                "sims".to_owned()
            } else {
                name
            };
            let ms = proc_stats::cpu_ms(pid).unwrap_or(0.0);
            match v.iter_mut().find(|(n, _)| *n == name) {
                Some(e) => e.1 += ms,
                None => v.push((name, ms)),
            }
        }
        v
    };
    let others_before = others(&children);
    // The client measures comfyd's latency, not its own waits for a core (see
    // `proc_stats::OBSERVER_NICE`); it gives the favour back before it starts anything.
    let favoured = proc_stats::favour_this_thread();
    let wait_before = proc_stats::thread_run_queue_wait_ms();
    let submit_start = Instant::now();
    let submitted = submit_all(&client, &format!("{base}/api/v1"), &receiver.url, sc.jobs).await;
    let submit_phase_s = submit_start.elapsed().as_secs_f64();
    let client_wait_ms = match (wait_before, proc_stats::thread_run_queue_wait_ms()) {
        (Ok(before), Ok(after)) => Some(after - before),
        _ => None,
    };
    if favoured {
        proc_stats::unfavour_this_thread();
    }
    if std::env::var_os("COMFYD_BENCH_KEEP").is_some() {
        write_submits(&scratch.path().join("submits.csv"), &submitted)?;
    }
    children.check_alive()?;

    let mut rss_deep_queue_mib = None;
    let mut resume_ms = None;
    if sc.paused_then_resume {
        rss_deep_queue_mib = proc_stats::peak_rss_mib(pid).ok();
        resume_ms = Some(proc_stats::now_ms());
        for s in &sims {
            client
                .post(format!("{}/sim/config", s.url))
                .send_json(&json!({"exec_ms": 0, "paused": false}))
                .await
                .map_err(|e| anyhow::anyhow!("resuming {}: {e}", s.url))?;
        }
    }

    let expected: HashSet<&str> = submitted
        .iter()
        .filter_map(|s| s.task_id.as_deref())
        .collect();
    let deadline = Instant::now() + sc.deadline;
    loop {
        let seen: HashSet<String> = receiver.hooks().into_iter().map(|h| h.task_id).collect();
        if expected.iter().all(|t| seen.contains(*t)) {
            break;
        }
        if Instant::now() > deadline {
            eprintln!(
                "  deadline: {} of {} webhooks after {} s",
                expected.iter().filter(|t| seen.contains(**t)).count(),
                expected.len(),
                sc.deadline.as_secs()
            );
            break;
        }
        children.check_alive()?;
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    let cpu_after = proc_stats::cpu_ms(pid)?;
    let instructions = callgrind.as_ref().map(|c| c.stop(pid)).transpose()?;
    let switches = proc_stats::context_switches(pid).saturating_sub(switches_before);
    let machine_after = proc_stats::machine_cpu();
    let others_after = others(&children);
    let machine_total = machine_after.1.saturating_sub(machine_before.1);
    let machine_busy_pct = (machine_total > 0).then(|| {
        100.0 * machine_after.0.saturating_sub(machine_before.0) as f64 / machine_total as f64
    });
    let mut thread_cpu: Vec<(String, f64)> = proc_stats::thread_cpu_ms(pid)
        .into_iter()
        .map(|(name, ms)| {
            let before = threads_before.get(&name).copied().unwrap_or(0.0);
            (name, ms - before)
        })
        .filter(|(_, ms)| *ms > 0.0)
        .collect();
    thread_cpu.sort_by(|a, b| b.1.total_cmp(&a.1));
    procs::stop_profiler(&mut children, profiler);
    actix_rt::time::sleep(DUPLICATE_GRACE).await;
    let peak_rss_mib = proc_stats::peak_rss_mib(pid).ok();
    let hooks = receiver.hooks();

    let mut stats = Vec::new();
    for s in &sims {
        let mut resp = client
            .get(format!("{}/sim/stats", s.url))
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("GET {}/sim/stats: {e}", s.url))?;
        let body: SimStats = resp
            .json()
            .limit(256 << 20)
            .await
            .context("reading /sim/stats")?;
        stats.push(body.prompts);
    }
    let exec_configured: Vec<f64> = sims.iter().map(|s| s.exec_ms as f64).collect();
    drop(children);

    let mut out = summarize(&submitted, &hooks, &stats, &exec_configured, resume_ms);
    out.scenario = sc.key.to_owned();
    out.store = store.name().to_owned();
    out.submit_phase_s = submit_phase_s;
    out.client_wait_ms = client_wait_ms;
    out.cpu_ms_per_job = (out.accepted > 0).then(|| (cpu_after - cpu_before) / out.accepted as f64);
    out.peak_rss_mib = peak_rss_mib;
    out.thread_cpu = thread_cpu;
    out.idle_cpu_ms_per_s = Some(idle_cpu_ms_per_s);
    out.machine_busy_pct = machine_busy_pct;
    if out.accepted > 0 {
        out.others_cpu_per_job = others_after
            .into_iter()
            .map(|(name, ms)| {
                let before = others_before
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map_or(0.0, |e| e.1);
                (name, (ms - before) / out.accepted as f64)
            })
            .collect();
    }
    out.ctx_switches_per_job = (out.accepted > 0).then(|| switches as f64 / out.accepted as f64);
    out.instructions_per_job = instructions
        .filter(|_| out.accepted > 0)
        .map(|n| n as f64 / out.accepted as f64);
    out.rss_deep_queue_mib = rss_deep_queue_mib;
    out.load_before = load_before;
    out.load_after = proc_stats::load_average();
    Ok(out)
}

/// Creates the bucket comfyd writes to (comfyd expects it to exist).
async fn create_bucket(s3: &procs::S3Proc, bucket: &str) -> anyhow::Result<()> {
    let settings = comfyd::blob::S3Settings {
        bucket: bucket.to_owned(),
        region: "us-east-1".to_owned(),
        endpoint_url: Some(s3.endpoint.clone()),
        force_path_style: true,
        access_key_id: Some(s3.access_key.clone()),
        secret_access_key: Some(s3.secret_key.clone()),
        key_prefix: String::new(),
    };
    settings
        .client()
        .create_bucket()
        .bucket(bucket)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("creating bucket {bucket}: {e:?}"))?;
    Ok(())
}

/// Waits for `GET /healthz` 200 with every backend up.
async fn wait_ready(
    client: &awc::Client,
    base: &str,
    backends: usize,
    children: &mut Children,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut last = String::from("no answer");
    while Instant::now() < deadline {
        children.check_alive()?;
        if let Ok(mut resp) = client.get(format!("{base}/healthz")).send().await {
            let status = resp.status();
            if let Ok(body) = resp.json::<Value>().await {
                if status.is_success() && body["backends_up"].as_u64() == Some(backends as u64) {
                    return Ok(());
                }
                last = format!("{status} {body}");
            }
        }
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
    bail!(
        "not ready within {} s (last /healthz: {last})",
        READY_TIMEOUT.as_secs()
    )
}

/// Submits `jobs` tasks with [`CONCURRENCY`] requests in flight.
async fn submit_all(
    client: &awc::Client,
    api: &str,
    hook_url: &str,
    jobs: usize,
) -> Vec<Submitted> {
    futures_util::stream::iter(0..jobs)
        .map(|n| {
            let body = json!({
                "service_type": "solid",
                "client_task_id": format!("b-{n}"),
                "client_callback_url": hook_url,
                "params": {"width": 8, "height": 8, "color": n},
            });
            let request = client.post(api).send_json(&body);
            async move {
                let sent_ms = proc_stats::now_ms();
                let t0 = Instant::now();
                let result = match request.await {
                    Ok(mut resp) => {
                        let status = resp.status();
                        match resp.json::<Value>().limit(1 << 20).await {
                            Ok(v) if status.is_success() => v["id"]
                                .as_str()
                                .map(str::to_owned)
                                .ok_or(format!("no id in {v}")),
                            Ok(v) => Err(format!("{status}: {v}")),
                            Err(e) => Err(format!("{status}: {e}")),
                        }
                    }
                    Err(e) => Err(e.to_string()),
                };
                let latency_ms = t0.elapsed().as_secs_f64() * 1000.0;
                let (task_id, error) = match result {
                    Ok(id) => (Some(id), None),
                    Err(e) => (None, Some(e)),
                };
                Submitted {
                    sent_ms,
                    latency_ms,
                    accepted_ms: sent_ms + latency_ms,
                    task_id,
                    error,
                }
            }
        })
        .buffer_unordered(concurrency())
        .collect()
        .await
}

/// Every submit as a CSV line (`sent_ms,latency_ms,task_id`, in the order they were answered), for a
/// look at where in the burst the slow ones were.
fn write_submits(path: &Path, submitted: &[Submitted]) -> anyhow::Result<()> {
    let mut csv = String::from("sent_ms,latency_ms,task_id\n");
    for s in submitted {
        let id = s.task_id.as_deref().unwrap_or("");
        csv.push_str(&format!("{:.3},{:.3},{id}\n", s.sent_ms, s.latency_ms));
    }
    std::fs::write(path, csv).with_context(|| format!("writing {}", path.display()))
}

/// [`CONCURRENCY`], or `COMFYD_BENCH_CONCURRENCY`.
pub fn concurrency() -> usize {
    std::env::var("COMFYD_BENCH_CONCURRENCY")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(CONCURRENCY)
}

/// The last lines of a log file, for error messages.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
