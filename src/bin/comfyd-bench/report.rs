//! The Markdown report: the machine, then per scenario a table with one column per store, and a
//! summary of the targets, each marked met or missed.

use std::fmt::Write as _;

use crate::scenario::{Outcome, Scenario};

/// A target from the brief, checked against every outcome it applies to.
struct Target {
    what: &'static str,
    /// Scenarios it applies to (empty = all).
    scenarios: &'static [&'static str],
    /// Store it applies to (None = all).
    store: Option<&'static str>,
    value: fn(&Outcome) -> Option<f64>,
    limit: f64,
    /// True: the value must stay below the limit; false: reach at least the limit.
    below: bool,
}

const TARGETS: &[Target] = &[
    Target {
        what: "jobs/s end to end >= 300",
        scenarios: &["b"],
        store: None,
        value: |o| o.jobs_per_s,
        limit: 300.0,
        below: false,
    },
    Target {
        what: "makespan <= 1.10 x ideal",
        scenarios: &["a", "c"],
        store: None,
        value: ratio,
        limit: 1.10,
        below: true,
    },
    Target {
        what: "completion -> webhook p50 < 20 ms",
        scenarios: &[],
        store: Some("local"),
        value: |o| o.hook_p50,
        limit: 20.0,
        below: true,
    },
    Target {
        what: "submit p99 < 20 ms",
        scenarios: &[],
        store: None,
        value: |o| o.submit_p99,
        limit: 20.0,
        below: true,
    },
    Target {
        what: "comfyd CPU < 2 ms per job",
        scenarios: &[],
        store: None,
        value: |o| o.cpu_ms_per_job,
        limit: 2.0,
        below: true,
    },
    Target {
        what: "peak RSS < 60 MB (value in MB, not MiB)",
        scenarios: &["d"],
        store: None,
        value: |o| o.peak_rss_mib.map(|mib| mib * 1.048_576),
        limit: 60.0,
        below: true,
    },
    Target {
        what: "no lost job",
        scenarios: &[],
        store: None,
        value: |o| Some(o.lost as f64),
        limit: 1.0,
        below: true,
    },
    Target {
        what: "no duplicated job",
        scenarios: &[],
        store: None,
        value: |o| Some(o.duplicated as f64),
        limit: 1.0,
        below: true,
    },
];

fn ratio(o: &Outcome) -> Option<f64> {
    Some(o.makespan_ms? / o.ideal_ms?)
}

impl Target {
    fn applies(&self, o: &Outcome) -> bool {
        (self.scenarios.is_empty() || self.scenarios.contains(&o.scenario.as_str()))
            && self.store.is_none_or(|s| s == o.store)
    }

    fn met(&self, v: f64) -> bool {
        if self.below {
            v < self.limit
        } else {
            v >= self.limit
        }
    }
}

/// One line per (target, outcome) it applies to: (what, scenario, store, value, met).
pub fn verdicts(outcomes: &[Outcome]) -> Vec<(String, String, String, Option<f64>, bool)> {
    let mut rows = Vec::new();
    for t in TARGETS {
        for o in outcomes.iter().filter(|o| t.applies(o)) {
            let v = (t.value)(o);
            rows.push((
                t.what.to_owned(),
                o.scenario.clone(),
                o.store.clone(),
                v,
                v.is_some_and(|v| t.met(v)),
            ));
        }
    }
    rows
}

/// One line of a scenario table: its label and how to read it off an outcome.
type Row = (&'static str, Box<dyn Fn(&Outcome) -> String>);

fn num(v: Option<f64>, decimals: usize) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.decimals$}"),
        _ => "-".into(),
    }
}

fn pair(a: Option<f64>, b: Option<f64>, decimals: usize) -> String {
    format!("{} / {}", num(a, decimals), num(b, decimals))
}

/// The generated part of BENCHMARKS.md.
pub fn render(machine: &str, scenarios: &[Scenario], outcomes: &[Outcome]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{machine}\n");
    let _ = writeln!(s, "### Targets\n");
    let _ = writeln!(
        s,
        "| target | scenario | store | value | met |\n|---|---|---|---|---|"
    );
    for (what, sc, store, v, met) in verdicts(outcomes) {
        let _ = writeln!(
            s,
            "| {what} | ({sc}) | {store} | {} | {} |",
            num(v, 2),
            if met { "met" } else { "**MISSED**" }
        );
    }
    for sc in scenarios {
        let cols: Vec<&Outcome> = outcomes.iter().filter(|o| o.scenario == sc.key).collect();
        if cols.is_empty() {
            continue;
        }
        let _ = writeln!(s, "\n### ({}) {}\n", sc.key, sc.title);
        let _ = write!(s, "| figure |");
        for o in &cols {
            let _ = write!(s, " {} |", o.store);
        }
        let _ = write!(s, "\n|---|");
        for _ in &cols {
            let _ = write!(s, "---|");
        }
        let _ = writeln!(s);
        let mut rows: Vec<Row> = vec![
            (
                "jobs accepted / submitted / refused",
                Box::new(|o| format!("{} / {} / {}", o.accepted, o.submitted, o.refused)),
            ),
            (
                "submit latency p50 / p99 (ms)",
                Box::new(|o| pair(o.submit_p50, o.submit_p99, 1)),
            ),
            (
                "submit phase (s)",
                Box::new(|o| format!("{:.2}", o.submit_phase_s)),
            ),
            (
                "dispatch delay p50 / p99 (ms)",
                Box::new(|o| pair(o.dispatch_p50, o.dispatch_p99, 1)),
            ),
            (
                "completion -> webhook p50 / p99 (ms)",
                Box::new(|o| pair(o.hook_p50, o.hook_p99, 1)),
            ),
            (
                "... p50 while submits arrived / after",
                Box::new(|o| pair(o.hook_p50_during_submits, o.hook_p50_after_submits, 1)),
            ),
            ("jobs/s end to end", Box::new(|o| num(o.jobs_per_s, 1))),
            (
                "makespan / ideal (ms)",
                Box::new(|o| pair(o.makespan_ms, o.ideal_ms, 0)),
            ),
            ("makespan ratio", Box::new(|o| num(ratio(o), 3))),
            (
                "backend idle while jobs waited (backend-ms)",
                Box::new(|o| num(o.idle_ms, 0)),
            ),
            (
                "comfyd CPU per job (ms)",
                Box::new(|o| num(o.cpu_ms_per_job, 2)),
            ),
            (
                "machine CPU busy during the run (all cores, %)",
                Box::new(|o| num(o.machine_busy_pct, 0)),
            ),
            (
                "CPU per job of the other processes (ms)",
                Box::new(|o| {
                    o.others_cpu_per_job
                        .iter()
                        .map(|(n, ms)| format!("{n} {ms:.2}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                }),
            ),
            (
                "comfyd idle CPU before the run (ms per s)",
                Box::new(|o| num(o.idle_cpu_ms_per_s, 1)),
            ),
            (
                "comfyd context switches per job",
                Box::new(|o| num(o.ctx_switches_per_job, 0)),
            ),
            (
                "comfyd CPU by thread (ms, top 4)",
                Box::new(|o| {
                    o.thread_cpu
                        .iter()
                        .take(4)
                        .map(|(n, ms)| format!("{n} {ms:.0}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                }),
            ),
            (
                "comfyd peak RSS (MiB)",
                Box::new(|o| num(o.peak_rss_mib, 1)),
            ),
            (
                "comfyd peak RSS with the queue full (MiB)",
                Box::new(|o| num(o.rss_deep_queue_mib, 1)),
            ),
            (
                "lost / duplicated / not done",
                Box::new(|o| format!("{} / {} / {}", o.lost, o.duplicated, o.not_done)),
            ),
            (
                "prompts the backends received",
                Box::new(|o| o.prompts.to_string()),
            ),
            (
                "load average before / after",
                Box::new(|o| format!("{} / {}", o.load_before, o.load_after)),
            ),
        ];
        if cols.iter().any(|o| o.instructions_per_job.is_some()) {
            rows.push((
                "comfyd instructions per job (callgrind, thousands)",
                Box::new(|o| num(o.instructions_per_job.map(|n| n / 1000.0), 0)),
            ));
        }
        for (label, f) in rows {
            let _ = write!(s, "| {label} |");
            for o in &cols {
                let _ = write!(s, " {} |", f(o));
            }
            let _ = writeln!(s);
        }
        if let Some(e) = cols.iter().find_map(|o| o.first_error.as_ref()) {
            let _ = writeln!(s, "\nFirst submit error: `{}`", e.replace('`', "'"));
        }
    }
    s
}

/// Puts `generated` between the markers of an existing BENCHMARKS.md (keeping the hand-written
/// analysis around it), or makes a new file when there are no markers.
pub fn splice(existing: Option<&str>, generated: &str) -> String {
    const BEGIN: &str = "<!-- bench:begin -->";
    const END: &str = "<!-- bench:end -->";
    if let Some(text) = existing {
        if let (Some(b), Some(e)) = (text.find(BEGIN), text.find(END)) {
            if b < e {
                return format!("{}{BEGIN}\n{generated}{}", &text[..b], &text[e..]);
            }
        }
    }
    format!("# Benchmarks\n\n{BEGIN}\n{generated}{END}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splice_keeps_the_text_around_the_markers() {
        let old = "# B\nintro\n<!-- bench:begin -->\nold\n<!-- bench:end -->\nanalysis\n";
        let new = splice(Some(old), "new\n");
        assert_eq!(
            new,
            "# B\nintro\n<!-- bench:begin -->\nnew\n<!-- bench:end -->\nanalysis\n"
        );
        assert!(splice(None, "x\n").contains("<!-- bench:begin -->\nx\n<!-- bench:end -->"));
    }

    #[test]
    fn targets_apply_to_their_scenarios_and_stores() {
        let o = Outcome {
            scenario: "b".into(),
            store: "s3".into(),
            jobs_per_s: Some(250.0),
            hook_p50: Some(50.0),
            submit_p99: Some(5.0),
            ..Outcome::default()
        };
        let v = verdicts(&[o]);
        let find = |w: &str| v.iter().find(|r| r.0.starts_with(w)).map(|r| r.4);
        assert_eq!(find("jobs/s"), Some(false));
        assert_eq!(find("submit p99"), Some(true));
        // The webhook target is for the local store only; makespan only for (a) and (c).
        assert_eq!(find("completion"), None);
        assert_eq!(find("makespan"), None);
        // A figure that could not be measured is not a met target.
        assert_eq!(find("comfyd CPU"), Some(false));
        assert_eq!(find("no lost"), Some(true));
    }
}
