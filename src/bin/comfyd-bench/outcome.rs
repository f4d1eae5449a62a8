//! What one run observed (each submit, each prompt the simulators saw, each webhook) and the figures
//! the report makes of it: an [`Outcome`].

use std::collections::{HashMap, HashSet};

use serde::Deserialize;

use crate::receiver::Hook;
use crate::stats::{ideal_makespan, idle_while_waiting, percentile, Span};

/// Everything measured in one run of one scenario against one store. Times in ms.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub scenario: String,
    pub store: String,
    pub submitted: usize,
    pub accepted: usize,
    /// Submits that failed or were refused, with the first error seen.
    pub refused: usize,
    pub first_error: Option<String>,
    pub submit_p50: Option<f64>,
    pub submit_p99: Option<f64>,
    pub dispatch_p50: Option<f64>,
    pub dispatch_p99: Option<f64>,
    pub hook_p50: Option<f64>,
    pub hook_p99: Option<f64>,
    /// Completion -> webhook p50 of jobs that completed while submits were still arriving, and after.
    pub hook_p50_during_submits: Option<f64>,
    pub hook_p50_after_submits: Option<f64>,
    /// comfyd's CPU use while nothing is submitted (timers, heartbeats), per second.
    pub idle_cpu_ms_per_s: Option<f64>,
    /// Share of the machine's CPU (all cores) in use from the first submit to the last webhook, %.
    pub machine_busy_pct: Option<f64>,
    /// comfyd's context switches (all threads) per accepted job.
    pub ctx_switches_per_job: Option<f64>,
    /// Instructions comfyd executed per accepted job, under callgrind (`COMFYD_BENCH_CALLGRIND`).
    pub instructions_per_job: Option<f64>,
    /// CPU per job of the other processes on the machine during the run: the simulators, s3s-fs, and
    /// the bench itself (ms).
    pub others_cpu_per_job: Vec<(String, f64)>,
    /// comfyd's CPU per thread name during the run, largest first (ms).
    pub thread_cpu: Vec<(String, f64)>,
    /// Accepted jobs / (last webhook - first submit).
    pub jobs_per_s: Option<f64>,
    pub submit_phase_s: f64,
    /// How long the bench's client thread waited for a core during the submit phase.
    pub client_wait_ms: Option<f64>,
    pub makespan_ms: Option<f64>,
    pub ideal_ms: Option<f64>,
    pub idle_ms: Option<f64>,
    pub cpu_ms_per_job: Option<f64>,
    pub peak_rss_mib: Option<f64>,
    /// Peak RSS once every job was queued, before the backends resumed (scenario (d)).
    pub rss_deep_queue_mib: Option<f64>,
    pub lost: usize,
    pub duplicated: usize,
    /// Tasks whose webhook said something other than `done`.
    pub not_done: usize,
    /// Prompts the simulators received (more than `accepted` = some were dispatched again).
    pub prompts: usize,
    pub load_before: String,
    pub load_after: String,
}

/// One submit as the bench saw it.
pub(crate) struct Submitted {
    pub(crate) sent_ms: f64,
    pub(crate) latency_ms: f64,
    pub(crate) accepted_ms: f64,
    pub(crate) task_id: Option<String>,
    pub(crate) error: Option<String>,
}

/// One prompt as `GET /sim/stats` reports it.
#[derive(Debug, Deserialize)]
pub(crate) struct PromptStat {
    pub(crate) prompt_id: String,
    pub(crate) received_ms: f64,
    pub(crate) started_ms: Option<f64>,
    pub(crate) finished_ms: Option<f64>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct SimStats {
    pub(crate) prompts: Vec<PromptStat>,
}

/// Turns raw observations into the report's figures (everything except the `/proc` ones).
pub(crate) fn summarize(
    submitted: &[Submitted],
    hooks: &[Hook],
    stats: &[Vec<PromptStat>],
    exec_configured: &[f64],
    resume_ms: Option<f64>,
) -> Outcome {
    let ok: Vec<&Submitted> = submitted.iter().filter(|s| s.task_id.is_some()).collect();
    let mut out = Outcome {
        submitted: submitted.len(),
        accepted: ok.len(),
        refused: submitted.len() - ok.len(),
        first_error: submitted.iter().find_map(|s| s.error.clone()),
        prompts: stats.iter().map(Vec::len).sum(),
        ..Outcome::default()
    };
    let latencies: Vec<f64> = ok.iter().map(|s| s.latency_ms).collect();
    out.submit_p50 = percentile(&latencies, 50.0);
    out.submit_p99 = percentile(&latencies, 99.0);

    let prompts: HashMap<&str, &PromptStat> = stats
        .iter()
        .flatten()
        .map(|p| (p.prompt_id.as_str(), p))
        .collect();
    let mut by_task: HashMap<&str, Vec<&Hook>> = HashMap::new();
    for h in hooks {
        by_task.entry(h.task_id.as_str()).or_default().push(h);
    }
    let (mut dispatch, mut to_hook) = (Vec::new(), Vec::new());
    let (mut hook_during, mut hook_after) = (Vec::new(), Vec::new());
    let last_accepted = ok.iter().map(|s| s.accepted_ms).fold(f64::MIN, f64::max);
    let mut last_hook = f64::MIN;
    for s in &ok {
        let Some(task) = s.task_id.as_deref() else {
            continue;
        };
        let Some(hs) = by_task.get(task) else {
            out.lost += 1;
            continue;
        };
        let ids: HashSet<&str> = hs.iter().map(|h| h.webhook_id.as_str()).collect();
        if ids.len() > 1 {
            out.duplicated += 1;
        }
        let first = hs
            .iter()
            .min_by(|a, b| a.received_ms.total_cmp(&b.received_ms))
            .copied();
        let Some(first) = first else { continue };
        last_hook = last_hook.max(first.received_ms);
        if first.status != "done" {
            out.not_done += 1;
        }
        if let Some(p) = first.prompt_id.as_deref().and_then(|id| prompts.get(id)) {
            dispatch.push(p.received_ms - s.sent_ms);
            if let Some(f) = p.finished_ms {
                let d = first.received_ms - f;
                to_hook.push(d);
                if f <= last_accepted {
                    hook_during.push(d)
                } else {
                    hook_after.push(d)
                }
            }
        }
    }
    out.dispatch_p50 = percentile(&dispatch, 50.0);
    out.dispatch_p99 = percentile(&dispatch, 99.0);
    out.hook_p50 = percentile(&to_hook, 50.0);
    out.hook_p99 = percentile(&to_hook, 99.0);
    out.hook_p50_during_submits = percentile(&hook_during, 50.0);
    out.hook_p50_after_submits = percentile(&hook_after, 50.0);

    let first_sent = ok.iter().map(|s| s.sent_ms).fold(f64::MAX, f64::min);
    if out.accepted > 0 && last_hook > first_sent {
        out.jobs_per_s = Some(out.accepted as f64 / ((last_hook - first_sent) / 1000.0));
    }

    // Makespan: from the moment work could start (first submit, or the resume) to the last finish.
    let start = resume_ms.unwrap_or(first_sent);
    let last_finish = stats
        .iter()
        .flatten()
        .filter_map(|p| p.finished_ms)
        .fold(f64::MIN, f64::max);
    if out.accepted > 0 && last_finish > start {
        out.makespan_ms = Some(last_finish - start);
        // Each backend's speed as measured (mean execution time of the jobs' prompts: not of
        // comfyd's file-cleanup prompts, one per job and taking no GPU time), else as configured.
        let job_prompts: HashSet<&str> = hooks
            .iter()
            .filter_map(|h| h.prompt_id.as_deref())
            .collect();
        let speeds: Vec<f64> = stats
            .iter()
            .zip(exec_configured)
            .map(|(ps, conf)| {
                let runs: Vec<f64> = ps
                    .iter()
                    .filter(|p| job_prompts.contains(p.prompt_id.as_str()))
                    .filter_map(|p| Some(p.finished_ms? - p.started_ms?))
                    .collect();
                if runs.is_empty() {
                    *conf
                } else {
                    runs.iter().sum::<f64>() / runs.len() as f64
                }
            })
            .collect();
        out.ideal_ms = Some(ideal_makespan(out.accepted, &speeds));
        let accepted: Vec<f64> = ok.iter().map(|s| s.accepted_ms).collect();
        let started: Vec<f64> = stats
            .iter()
            .flatten()
            .filter_map(|p| p.started_ms)
            .collect();
        let busy: Vec<Vec<Span>> = stats
            .iter()
            .map(|ps| {
                ps.iter()
                    .filter_map(|p| {
                        Some(Span {
                            start: p.started_ms?,
                            end: p.finished_ms.unwrap_or(last_finish),
                        })
                    })
                    .collect()
            })
            .collect();
        out.idle_ms = Some(idle_while_waiting(
            &accepted,
            &started,
            &busy,
            Span {
                start,
                end: last_finish,
            },
        ));
    }
    out
}
