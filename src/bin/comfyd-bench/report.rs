//! The Markdown report: the machine, then per scenario a table with one column per store, and a
//! summary of the targets, each marked met or missed.

use std::fmt::Write as _;

use crate::outcome::Outcome;
use crate::scenario::Scenario;

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
    /// With several runs, judge the worst run rather than the median: one lost job in any run is a
    /// lost job.
    every_run: bool,
}

const TARGETS: &[Target] = &[
    Target {
        what: "jobs/s end to end >= 300",
        scenarios: &["b"],
        store: None,
        value: |o| o.jobs_per_s,
        limit: 300.0,
        below: false,
        every_run: false,
    },
    Target {
        what: "makespan <= 1.10 x ideal",
        scenarios: &["a", "c"],
        store: None,
        value: ratio,
        limit: 1.10,
        below: true,
        every_run: false,
    },
    Target {
        what: "completion -> webhook p50 < 20 ms",
        scenarios: &[],
        store: Some("local"),
        value: |o| o.hook_p50,
        limit: 20.0,
        below: true,
        every_run: false,
    },
    Target {
        what: "submit p99 < 20 ms",
        scenarios: &[],
        store: None,
        value: |o| o.submit_p99,
        limit: 20.0,
        below: true,
        every_run: false,
    },
    Target {
        what: "comfyd CPU < 2 ms per job",
        scenarios: &[],
        store: None,
        value: |o| o.cpu_ms_per_job,
        limit: 2.0,
        below: true,
        every_run: false,
    },
    Target {
        what: "peak RSS < 60 MB (value in MB, not MiB)",
        scenarios: &["d"],
        store: None,
        value: |o| o.peak_rss_mib.map(|mib| mib * 1.048_576),
        limit: 60.0,
        below: true,
        every_run: false,
    },
    Target {
        what: "no lost job",
        scenarios: &[],
        store: None,
        value: |o| Some(o.lost as f64),
        limit: 1.0,
        below: true,
        every_run: true,
    },
    Target {
        what: "no duplicated job",
        scenarios: &[],
        store: None,
        value: |o| Some(o.duplicated as f64),
        limit: 1.0,
        below: true,
        every_run: true,
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

/// The runs of one scenario with one store, in the order they ran.
fn groups(outcomes: &[Outcome]) -> Vec<Vec<&Outcome>> {
    let mut groups: Vec<Vec<&Outcome>> = Vec::new();
    for o in outcomes {
        match groups
            .iter_mut()
            .find(|g| g[0].scenario == o.scenario && g[0].store == o.store)
        {
            Some(g) => g.push(o),
            None => groups.push(vec![o]),
        }
    }
    groups
}

/// The median of the finite values (the mean of the middle two for an even count).
fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// One target's verdict on the runs of one scenario and store.
pub struct Verdict {
    pub what: &'static str,
    pub scenario: String,
    pub store: String,
    /// The median over the runs, or the worst run for targets that every run must meet.
    pub value: Option<f64>,
    pub met: bool,
    /// Each run's value, in run order (a figure a run could not measure is None).
    pub runs: Vec<Option<f64>>,
    /// How many runs met the target on their own.
    pub runs_met: usize,
}

/// One verdict per (target, scenario and store) it applies to, over all runs of that pair.
pub fn verdicts(outcomes: &[Outcome]) -> Vec<Verdict> {
    let groups = groups(outcomes);
    let mut rows = Vec::new();
    for t in TARGETS {
        for g in groups.iter().filter(|g| t.applies(g[0])) {
            let runs: Vec<Option<f64>> = g.iter().map(|o| (t.value)(o)).collect();
            let measured: Vec<f64> = runs.iter().flatten().copied().collect();
            // A run that could not measure the figure does not count as meeting it.
            let all_measured = measured.len() == runs.len();
            let value = if t.every_run {
                let worst =
                    measured
                        .iter()
                        .copied()
                        .reduce(|a, b| if t.below { a.max(b) } else { a.min(b) });
                worst.filter(|_| all_measured)
            } else {
                median(&measured)
            };
            rows.push(Verdict {
                what: t.what,
                scenario: g[0].scenario.clone(),
                store: g[0].store.clone(),
                value,
                met: value.is_some_and(|v| t.met(v)),
                runs_met: runs.iter().filter(|v| v.is_some_and(|v| t.met(v))).count(),
                runs,
            });
        }
    }
    rows
}

/// The run a scenario table shows for one store: the one with the median comfyd CPU per job (the
/// lower of the middle two for an even count), so that its figures come from one run.
fn representative<'a>(runs: &[&'a Outcome]) -> &'a Outcome {
    let mut sorted = runs.to_vec();
    sorted.sort_by(|a, b| {
        let cpu = |o: &Outcome| o.cpu_ms_per_job.unwrap_or(f64::INFINITY);
        cpu(a).total_cmp(&cpu(b))
    });
    sorted[(sorted.len() - 1) / 2]
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
    let groups = groups(outcomes);
    let repeated = groups.iter().any(|g| g.len() > 1);
    let _ = writeln!(s, "### Targets\n");
    if repeated {
        let _ = writeln!(
            s,
            "Each scenario ran several times with each store. The value is the median of the runs \
             (for lost and duplicated jobs, the worst run); \"runs\" gives every run's value and \
             how many runs met the target. Each scenario table shows, per store, the run with the \
             median comfyd CPU per job.\n"
        );
        let _ = writeln!(
            s,
            "| target | scenario | store | value | met | runs |\n|---|---|---|---|---|---|"
        );
    } else {
        let _ = writeln!(
            s,
            "| target | scenario | store | value | met |\n|---|---|---|---|---|"
        );
    }
    for v in verdicts(outcomes) {
        let _ = write!(
            s,
            "| {} | ({}) | {} | {} | {} |",
            v.what,
            v.scenario,
            v.store,
            num(v.value, 2),
            if v.met { "met" } else { "**MISSED**" }
        );
        if repeated {
            let values: Vec<String> = v.runs.iter().map(|r| num(*r, 2)).collect();
            let _ = write!(
                s,
                " {} ({} of {} met) |",
                values.join(", "),
                v.runs_met,
                v.runs.len()
            );
        }
        let _ = writeln!(s);
    }
    let shown: Vec<&Outcome> = groups.iter().map(|g| representative(g)).collect();
    for sc in scenarios {
        let cols: Vec<&Outcome> = shown
            .iter()
            .copied()
            .filter(|o| o.scenario == sc.key)
            .collect();
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
                "bench client waiting for a core during it (ms)",
                Box::new(|o| num(o.client_wait_ms, 0)),
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
                        // actix names its worker threads `actix-rt|system:...`: a bare `|`
                        // would end the table cell.
                        .map(|(n, ms)| format!("{} {ms:.0}", n.replace('|', "\\|")))
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
        let find = |w: &str| v.iter().find(|r| r.what.starts_with(w)).map(|r| r.met);
        assert_eq!(find("jobs/s"), Some(false));
        assert_eq!(find("submit p99"), Some(true));
        // The webhook target is for the local store only; makespan only for (a) and (c).
        assert_eq!(find("completion"), None);
        assert_eq!(find("makespan"), None);
        // A figure that could not be measured is not a met target.
        assert_eq!(find("comfyd CPU"), Some(false));
        assert_eq!(find("no lost"), Some(true));
    }

    fn run(cpu: f64, lost: usize) -> Outcome {
        Outcome {
            scenario: "c".into(),
            store: "local".into(),
            cpu_ms_per_job: Some(cpu),
            lost,
            ..Outcome::default()
        }
    }

    #[test]
    fn several_runs_are_judged_on_their_median_and_lost_jobs_on_the_worst_run() {
        let runs = [run(2.4, 0), run(1.8, 1), run(1.9, 0)];
        let v = verdicts(&runs);
        let cpu = v
            .iter()
            .find(|r| r.what.starts_with("comfyd CPU"))
            .expect("CPU verdict");
        assert_eq!(cpu.value, Some(1.9));
        assert!(cpu.met);
        assert_eq!(cpu.runs, vec![Some(2.4), Some(1.8), Some(1.9)]);
        assert_eq!(cpu.runs_met, 2);
        let lost = v
            .iter()
            .find(|r| r.what == "no lost job")
            .expect("lost verdict");
        assert_eq!(lost.value, Some(1.0));
        assert!(!lost.met);
        assert_eq!(lost.runs_met, 2);
        // One verdict per scenario and store, however many runs it had.
        assert_eq!(v.iter().filter(|r| r.what == "no lost job").count(), 1);
        // The table shows the run with the median CPU.
        let group = &groups(&runs)[0];
        assert_eq!(representative(group).cpu_ms_per_job, Some(1.9));
        assert_eq!(median(&[1.0, 3.0, 2.0, 4.0]), Some(2.5));
    }

    #[test]
    fn a_pipe_in_a_thread_name_stays_inside_its_cell() {
        let o = Outcome {
            scenario: "a".into(),
            store: "local".into(),
            thread_cpu: vec![("actix-rt|system".into(), 10.0)],
            ..Outcome::default()
        };
        let text = render("machine", &crate::scenario::all(), &[o]);
        let row = text
            .lines()
            .find(|l| l.starts_with("| comfyd CPU by thread"))
            .expect("thread row");
        assert_eq!(
            row,
            "| comfyd CPU by thread (ms, top 4) | actix-rt\\|system 10 |"
        );
    }
}
