//! `GET /metrics` against the real daemon, a simulated backend and real webhook receivers: the
//! counters and histograms add up to the jobs that were run, the gauges read the dispatcher's state,
//! and no label value is a task id. Also: every metric the Grafana dashboard in `config/` queries is
//! one comfyd exports.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use serde_json::{json, Value};

use crate::pipeline::{env, EnvOpts};
use crate::support::eventually;
use crate::support::webhook::WebhookReceiver;

/// One sample of the text exposition format: name, labels, value.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses Prometheus' text format (0.0.4) as comfyd writes it: `# HELP`/`# TYPE` lines and
/// `name{label="value",...} number` samples (no timestamps).
fn parse(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (head, value) = line.rsplit_once(' ').expect("a sample has a value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let (name, labels) = match head.split_once('{') {
            None => (head.to_string(), BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').expect("labels end with }");
                (name.to_string(), parse_labels(body))
            }
        };
        out.push(Sample {
            name,
            labels,
            value,
        });
    }
    out
}

/// `a="x",b="y\"z"` into a map (values unescaped).
fn parse_labels(body: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut chars = body.chars().peekable();
    loop {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        assert_eq!(chars.next(), Some('"'), "label {key} is quoted");
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(other) => value.push(other),
                    None => break,
                },
                '"' => break,
                c => value.push(c),
            }
        }
        labels.insert(key.trim().to_string(), value);
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    labels
}

/// The sum of the samples named `name` whose labels include all of `with`.
fn sum(samples: &[Sample], name: &str, with: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            with.iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

async fn scrape(base: &str) -> (String, Vec<Sample>) {
    let mut resp = awc::Client::new()
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(resp.status().as_u16(), 200);
    let ctype = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = resp.body().limit(8 << 20).await.expect("metrics body");
    let text = String::from_utf8(body.to_vec()).expect("utf-8 metrics");
    let samples = parse(&text);
    (ctype, samples)
}

#[actix_rt::test]
async fn metrics_count_what_was_run_with_bounded_labels() {
    let env = env(EnvOpts {
        exec_ms: 20,
        env: [(
            "COMFYD_WEBHOOK_FIRST_BACKOFF_MS".to_string(),
            "200".to_string(),
        )]
        .into(),
        ..Default::default()
    })
    .await;
    let flaky = WebhookReceiver::start().await;
    let d = &env.daemon;
    let submit = |hook: String| json!({ "service_type": "solid", "client_callback_url": hook, "params": { "width": 8, "height": 8 } });
    let mut ids = Vec::new();

    // One that fails on the backend.
    env.sims[0].script(json!({ "fail_next": 1 })).await;
    let id = d.submit(submit(env.hook.url.clone())).await["id"]
        .as_str()
        .expect("id")
        .to_string();
    assert_eq!(d.wait_terminal(&id, 30).await["status"], "failed");
    ids.push(id);
    // Three that succeed.
    for _ in 0..3 {
        let id = d.submit(submit(env.hook.url.clone())).await["id"]
            .as_str()
            .expect("id")
            .to_string();
        ids.push(id);
    }
    for id in &ids[1..] {
        assert_eq!(d.wait_terminal(id, 30).await["status"], "done");
    }
    // One whose receiver answers 500 first, then 204.
    flaky.answer(500);
    let id = d.submit(submit(flaky.url.clone())).await["id"]
        .as_str()
        .expect("id")
        .to_string();
    assert_eq!(d.wait_terminal(&id, 30).await["status"], "done");
    eventually(10, "the first webhook answered 500", || async {
        (!flaky.received().is_empty()).then_some(())
    })
    .await;
    flaky.answer(204);
    ids.push(id);

    // Every webhook delivered: 5 answered 2xx (one after a 500).
    let samples = eventually(20, "five webhooks delivered", || async {
        let (_, s) = scrape(&d.base).await;
        (sum(
            &s,
            "comfyd_webhook_attempts_total",
            &[("status_class", "2xx")],
        ) == 5.0)
            .then_some(s)
    })
    .await;
    let (ctype, _) = scrape(&d.base).await;
    assert!(
        ctype.starts_with("text/plain; version=0.0.4"),
        "content type {ctype:?}"
    );
    let s = &samples;
    let solid = ("workflow", "solid");
    assert_eq!(sum(s, "comfyd_tasks_accepted_total", &[solid]), 5.0);
    assert_eq!(sum(s, "comfyd_tasks_accepted_total", &[]), 5.0);
    assert_eq!(
        sum(
            s,
            "comfyd_tasks_finished_total",
            &[solid, ("status", "done"), ("error_code", "0")]
        ),
        4.0
    );
    assert_eq!(
        sum(
            s,
            "comfyd_tasks_finished_total",
            &[solid, ("status", "failed"), ("error_code", "10")]
        ),
        1.0
    );
    assert_eq!(sum(s, "comfyd_tasks_finished_total", &[]), 5.0);
    // Histograms: one observation per job that reached that step.
    assert_eq!(sum(s, "comfyd_dispatch_delay_seconds_count", &[solid]), 5.0);
    assert_eq!(sum(s, "comfyd_execution_seconds_count", &[]), 5.0);
    assert_eq!(
        sum(s, "comfyd_store_seconds_count", &[("store", "local")]),
        4.0
    );
    assert_eq!(
        sum(s, "comfyd_completion_to_webhook_seconds_count", &[]),
        5.0
    );
    // Every output of the four stored to the local store, none retried.
    assert_eq!(
        sum(
            s,
            "comfyd_uploads_total",
            &[("store", "local"), ("result", "stored")]
        ),
        4.0
    );
    assert_eq!(sum(s, "comfyd_upload_retries_total", &[]), 0.0);
    // Webhooks: 5 answered 2xx, one 5xx (also counted as a failure).
    assert_eq!(
        sum(
            s,
            "comfyd_webhook_attempts_total",
            &[("status_class", "5xx")]
        ),
        1.0
    );
    assert_eq!(
        sum(
            s,
            "comfyd_webhook_failures_total",
            &[("status_class", "5xx")]
        ),
        1.0
    );
    assert_eq!(sum(s, "comfyd_webhook_failures_total", &[]), 1.0);
    // Gauges, from the dispatcher's snapshot: nothing queued, the one backend up and idle.
    assert_eq!(sum(s, "comfyd_queue_depth", &[]), 0.0);
    assert_eq!(sum(s, "comfyd_backend_up", &[]), 1.0);
    assert_eq!(
        sum(
            s,
            "comfyd_backend_up",
            &[("backend", env.sims[0].url.trim_end_matches('/'))]
        ),
        1.0
    );
    assert_eq!(sum(s, "comfyd_backend_in_flight", &[]), 0.0);
    // No label value is a task id (or any other id).
    let ids: HashSet<&str> = ids.iter().map(String::as_str).collect();
    for sample in s {
        for (k, v) in &sample.labels {
            assert!(
                !ids.contains(v.as_str()) && uuid::Uuid::parse_str(v).is_err(),
                "{}: label {k}={v:?} looks like an id",
                sample.name
            );
        }
    }
    d.assert_no_panics();
}

#[actix_rt::test]
async fn metrics_count_the_queue_by_priority_while_no_backend_is_up() {
    // A backend that never answers: tasks wait in comfyd's queue.
    let closed = format!("http://127.0.0.1:{}", crate::support::free_port());
    let db = crate::support::db::TestDb::sqlite();
    let d = crate::support::daemon::Daemon::start(crate::support::daemon::DaemonConfig {
        endpoints: vec![closed],
        database_url: db.url().to_string(),
        ..Default::default()
    })
    .await;
    for priority in [5, 5, -1] {
        d.submit(json!({ "service_type": "solid", "priority": priority, "params": { "width": 8, "height": 8 } }))
            .await;
    }
    let s = eventually(10, "three queued", || async {
        let (_, s) = scrape(&d.base).await;
        (sum(&s, "comfyd_queue_depth", &[]) == 3.0).then_some(s)
    })
    .await;
    assert_eq!(sum(&s, "comfyd_queue_depth", &[("priority", "5")]), 2.0);
    assert_eq!(sum(&s, "comfyd_queue_depth", &[("priority", "-1")]), 1.0);
    assert_eq!(sum(&s, "comfyd_backend_up", &[]), 0.0);
}

/// The metric names a PromQL expression uses: `comfyd_` identifiers.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("comfyd_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        out.push(name);
    }
    out
}

fn exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                if k == "expr" {
                    out.push(v.as_str().expect("expr is text").to_string());
                } else {
                    exprs(v, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

#[test]
fn the_dashboard_queries_only_metrics_comfyd_exports() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/grafana-dashboard.json");
    let text = std::fs::read_to_string(&path).expect("config/grafana-dashboard.json");
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    assert!(dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 36));
    let mut all = Vec::new();
    exprs(&dashboard["panels"], &mut all);
    assert!(all.len() >= 6, "the dashboard has its panels: {all:?}");
    let exported: HashSet<String> = comfyd::metrics::family_names().into_iter().collect();
    let mut used = HashSet::new();
    for expr in &all {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{expr:?} queries no comfyd metric");
        for name in names {
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|f| exported.contains(*f)))
                .unwrap_or(&name)
                .to_string();
            assert!(
                exported.contains(&family),
                "{expr:?} uses {name}, which comfyd does not export ({exported:?})"
            );
            used.insert(family);
        }
    }
    // Every family is on the dashboard somewhere.
    let missing: Vec<&String> = exported.iter().filter(|f| !used.contains(*f)).collect();
    assert!(missing.is_empty(), "not on the dashboard: {missing:?}");
}
