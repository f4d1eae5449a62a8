//! Prometheus metrics: the one [`Registry`] of the process and every metric family in it, with plain
//! functions the actors call where a fact becomes known, and [`render`] for `GET /metrics`.
//!
//! Who observes what:
//! - intake: [`task_accepted`]; the `Finisher` (postprocess): [`task_finished`];
//! - the `Dispatcher`: [`dispatch_delay`] (accepted → first claimed for a backend);
//! - each `Backend`: [`execution_time`] (ComfyUI's start → end of the prompt);
//! - the `Uploader`: [`store_time`], [`upload`], [`upload_retry`];
//! - the `Notifier`: [`webhook_attempt`], [`completion_to_webhook`];
//! - the `/metrics` route: [`set_queue`] and [`set_backends`], from the Dispatcher's snapshot at
//!   scrape time, so the gauges are never kept in sync by hand.
//!
//! Labels are bounded: no task ids, prompt ids or URLs. Workflow names pass [`workflow_label`]
//! (only names of the loaded catalog, see [`know_workflows`]; anything else is `other`), backend
//! names come from the config (without any credentials in the URL), status and error-code classes are fixed sets, queue priorities are the
//! API's -1000..=1000 and only those queued now are exported.
//!
//! Release and deployment metrics (rotation state, a `comfyd_deployment_state` gauge) go here too,
//! as one more family in [`Metrics`] and a setter fed from the deployment actor; this module stays
//! layer 0 (it knows nothing of the rest of comfyd).

use std::collections::{BTreeMap, HashSet};
use std::sync::{LazyLock, RwLock};
use std::time::Duration;

use prometheus::core::Collector;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// The content type of the text exposition format served at `/metrics`.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The label value of a workflow name not in the loaded catalog.
const OTHER: &str = "other";

/// Buckets in seconds for waits and runs from milliseconds to several minutes.
const SECONDS_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// Every metric family of comfyd, registered in `registry`.
pub struct Metrics {
    registry: Registry,
    tasks_accepted: IntCounterVec,
    tasks_finished: IntCounterVec,
    queue_depth: IntGaugeVec,
    backend_up: IntGaugeVec,
    backend_in_flight: IntGaugeVec,
    backend_queue: IntGaugeVec,
    dispatch_delay: HistogramVec,
    execution_time: HistogramVec,
    store_time: HistogramVec,
    completion_to_webhook: Histogram,
    webhook_attempts: IntCounterVec,
    webhook_failures: IntCounterVec,
    uploads: IntCounterVec,
    upload_retries: IntCounterVec,
    /// Workflow names that may be label values.
    workflows: RwLock<HashSet<String>>,
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter");
    r.register(Box::new(c.clone())).expect("registered once");
    c
}

fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge");
    r.register(Box::new(g.clone())).expect("registered once");
    g
}

fn histogram(r: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(SECONDS_BUCKETS.to_vec());
    let h = HistogramVec::new(opts, labels).expect("valid histogram");
    r.register(Box::new(h.clone())).expect("registered once");
    h
}

impl Metrics {
    fn new() -> Metrics {
        let r = Registry::new();
        Metrics {
            tasks_accepted: counter(
                &r,
                "comfyd_tasks_accepted_total",
                "Tasks accepted (recorded as queued), by workflow",
                &["workflow"],
            ),
            tasks_finished: counter(
                &r,
                "comfyd_tasks_finished_total",
                "Tasks that reached a terminal state, by workflow, status (done/failed/cancelled) and error_code",
                &["workflow", "status", "error_code"],
            ),
            queue_depth: gauge(
                &r,
                "comfyd_queue_depth",
                "Tasks waiting in comfyd's queue for a backend, by priority (only priorities queued now)",
                &["priority"],
            ),
            backend_up: gauge(
                &r,
                "comfyd_backend_up",
                "1 when the backend's websocket is connected and it takes jobs, else 0",
                &["backend"],
            ),
            backend_in_flight: gauge(
                &r,
                "comfyd_backend_in_flight",
                "Tasks comfyd has handed to the backend and not yet seen end",
                &["backend"],
            ),
            backend_queue: gauge(
                &r,
                "comfyd_backend_queue_remaining",
                "The backend's own queue length as ComfyUI last reported it",
                &["backend"],
            ),
            dispatch_delay: histogram(
                &r,
                "comfyd_dispatch_delay_seconds",
                "Time from a task's acceptance to its first claim for a backend",
                &["workflow"],
            ),
            execution_time: histogram(
                &r,
                "comfyd_execution_seconds",
                "Time from ComfyUI's start of a prompt to its end (success, error or interrupt), as seen by comfyd",
                &["backend"],
            ),
            store_time: histogram(
                &r,
                "comfyd_store_seconds",
                "Time to fetch and store a finished task's outputs, by store kind",
                &["store"],
            ),
            completion_to_webhook: {
                let opts = HistogramOpts::new(
                    "comfyd_completion_to_webhook_seconds",
                    "Time from a task's end (its webhook put in the outbox) to the webhook answered 2xx",
                )
                .buckets(SECONDS_BUCKETS.to_vec());
                let h = Histogram::with_opts(opts).expect("valid histogram");
                r.register(Box::new(h.clone())).expect("registered once");
                h
            },
            webhook_attempts: counter(
                &r,
                "comfyd_webhook_attempts_total",
                "Webhook delivery attempts, by status class of the answer (2xx..5xx, or error: none)",
                &["status_class"],
            ),
            webhook_failures: counter(
                &r,
                "comfyd_webhook_failures_total",
                "Webhook delivery attempts not answered 2xx, by status class (3xx..5xx, or error: none)",
                &["status_class"],
            ),
            uploads: counter(
                &r,
                "comfyd_uploads_total",
                "Outputs put in the store, by store kind and result (stored, or failed after its retries)",
                &["store", "result"],
            ),
            upload_retries: counter(
                &r,
                "comfyd_upload_retries_total",
                "Store attempts retried after a transient error, by store kind",
                &["store"],
            ),
            registry: r,
            workflows: RwLock::new(HashSet::new()),
        }
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The names of a loaded workflow catalog may be label values from now on (names of an earlier
/// catalog stay allowed, so a counter does not jump to `other` after a reload).
pub fn know_workflows<'a>(names: impl IntoIterator<Item = &'a str>) {
    let mut known = METRICS.workflows.write().unwrap_or_else(|e| e.into_inner());
    known.extend(names.into_iter().map(str::to_string));
}

/// `name` when it is a known workflow, else `other`: the label values stay bounded by the folder.
pub fn workflow_label(name: &str) -> String {
    let known = METRICS.workflows.read().unwrap_or_else(|e| e.into_inner());
    if known.contains(name) {
        name.to_string()
    } else {
        OTHER.to_string()
    }
}

/// The class of an HTTP answer: `2xx`..`5xx`, or `error` when there was none.
pub fn status_class(code: Option<u16>) -> &'static str {
    match code {
        Some(200..=299) => "2xx",
        Some(300..=399) => "3xx",
        Some(400..=499) => "4xx",
        Some(500..=599) => "5xx",
        Some(_) => "other",
        None => "error",
    }
}

/// A backend's name (its configured URL) as a label: without user, password, query or fragment, so
/// that credentials written into an endpoint never reach the open `/metrics`.
pub fn backend_label(name: &str) -> String {
    match url::Url::parse(name) {
        Ok(mut u) if u.has_host() => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.set_fragment(None);
            u.as_str().trim_end_matches('/').to_string()
        }
        _ => name.to_string(),
    }
}

/// The error-code label: one of the codes of `task::error_code`, else `other`.
fn error_code_label(code: i32) -> &'static str {
    match code {
        0 => "0",
        1 => "1",
        2 => "2",
        3 => "3",
        10 => "10",
        _ => OTHER,
    }
}

pub fn task_accepted(workflow: &str) {
    METRICS
        .tasks_accepted
        .with_label_values(&[workflow_label(workflow).as_str()])
        .inc();
}

/// A task reached `status` (done, failed or cancelled) with `error_code`.
pub fn task_finished(workflow: &str, status: &str, error_code: i32) {
    let status = match status {
        "done" | "failed" | "cancelled" => status,
        _ => OTHER,
    };
    METRICS
        .tasks_finished
        .with_label_values(&[
            workflow_label(workflow).as_str(),
            status,
            error_code_label(error_code),
        ])
        .inc();
}

pub fn dispatch_delay(workflow: &str, wait: Duration) {
    METRICS
        .dispatch_delay
        .with_label_values(&[workflow_label(workflow).as_str()])
        .observe(wait.as_secs_f64());
}

pub fn execution_time(backend: &str, run: Duration) {
    METRICS
        .execution_time
        .with_label_values(&[backend_label(backend).as_str()])
        .observe(run.as_secs_f64());
}

pub fn store_time(store: &str, took: Duration) {
    METRICS
        .store_time
        .with_label_values(&[store])
        .observe(took.as_secs_f64());
}

/// One output put in the store (`stored`), or given up on after its retries (`failed`).
pub fn upload(store: &str, stored: bool) {
    let result = if stored { "stored" } else { "failed" };
    METRICS.uploads.with_label_values(&[store, result]).inc();
}

pub fn upload_retry(store: &str) {
    METRICS.upload_retries.with_label_values(&[store]).inc();
}

/// One webhook attempt, answered `code` (None: no answer).
pub fn webhook_attempt(code: Option<u16>) {
    let class = status_class(code);
    METRICS.webhook_attempts.with_label_values(&[class]).inc();
    if class != "2xx" {
        METRICS.webhook_failures.with_label_values(&[class]).inc();
    }
}

pub fn completion_to_webhook(took: Duration) {
    METRICS.completion_to_webhook.observe(took.as_secs_f64());
}

/// The queue as it is now: tasks waiting, by priority. Priorities not listed are dropped.
pub fn set_queue(by_priority: &BTreeMap<i32, usize>) {
    METRICS.queue_depth.reset();
    for (p, n) in by_priority {
        METRICS
            .queue_depth
            .with_label_values(&[p.to_string().as_str()])
            .set(*n as i64);
    }
}

/// One backend as the Dispatcher sees it now.
pub struct BackendGauges<'a> {
    pub name: &'a str,
    pub up: bool,
    pub in_flight: usize,
    pub queue_remaining: u32,
}

/// The backends as they are now (the configured ones; a name not listed is dropped).
pub fn set_backends<'a>(backends: impl IntoIterator<Item = BackendGauges<'a>>) {
    let m = &*METRICS;
    m.backend_up.reset();
    m.backend_in_flight.reset();
    m.backend_queue.reset();
    for b in backends {
        let name = backend_label(b.name);
        m.backend_up
            .with_label_values(&[name.as_str()])
            .set(i64::from(b.up));
        m.backend_in_flight
            .with_label_values(&[name.as_str()])
            .set(b.in_flight as i64);
        m.backend_queue
            .with_label_values(&[name.as_str()])
            .set(i64::from(b.queue_remaining));
    }
}

/// Every family in the text exposition format (0.0.4).
pub fn render() -> String {
    let mut buf = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&METRICS.registry.gather(), &mut buf) {
        tracing::warn!(error = %e, "could not encode the metrics");
    }
    String::from_utf8(buf).unwrap_or_default()
}

/// The names of every family comfyd exports, with or without samples yet (for the dashboard's
/// check; a histogram's series add `_bucket`, `_sum` and `_count` to its name).
pub fn family_names() -> Vec<String> {
    let m = &*METRICS;
    let all: [&dyn Collector; 14] = [
        &m.tasks_accepted,
        &m.tasks_finished,
        &m.queue_depth,
        &m.backend_up,
        &m.backend_in_flight,
        &m.backend_queue,
        &m.dispatch_delay,
        &m.execution_time,
        &m.store_time,
        &m.completion_to_webhook,
        &m.webhook_attempts,
        &m.webhook_failures,
        &m.uploads,
        &m.upload_retries,
    ];
    all.iter()
        .flat_map(|c| c.desc())
        .map(|d| d.fq_name.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_stay_bounded() {
        know_workflows(["txt2img"]);
        assert_eq!(workflow_label("txt2img"), "txt2img");
        assert_eq!(workflow_label("0b9e-some-task-id"), "other");
        assert_eq!(error_code_label(7), "other");
        assert_eq!(status_class(Some(503)), "5xx");
        assert_eq!(status_class(None), "error");
        assert_eq!(
            backend_label("http://u:secret@gpu1:8188/?token=x"),
            "http://gpu1:8188"
        );
        assert_eq!(
            backend_label("http://127.0.0.1:8188"),
            "http://127.0.0.1:8188"
        );
    }

    #[test]
    fn families_render_with_help_and_type() {
        task_accepted("txt2img");
        webhook_attempt(Some(500));
        let text = render();
        assert!(
            text.contains("# HELP comfyd_tasks_accepted_total "),
            "{text}"
        );
        assert!(
            text.contains("# TYPE comfyd_webhook_failures_total counter"),
            "{text}"
        );
    }
}
