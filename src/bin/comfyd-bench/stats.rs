//! The arithmetic of the report, kept pure so unit tests can check it: percentiles, the time backends
//! sat idle while jobs waited, and the shortest possible schedule (the "ideal" makespan).

/// Nearest-rank percentile (`p` in 0..=100) of `values`; `None` when there are none.
///
/// Nearest rank (the smallest value with at least p % of the values at or below it) never invents a
/// value that was not measured, which keeps p99 of a small sample honest.
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let rank = ((p.clamp(0.0, 100.0) / 100.0) * n as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, n) - 1])
}

/// A half-open time interval `[start, end)` in epoch milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Span {
    pub start: f64,
    pub end: f64,
}

/// Backend-milliseconds during which a backend ran nothing while at least one job was waiting.
///
/// A job waits from `accepted` (comfyd answered its submit) until it `started` on some backend; a
/// job that never started waits until the end of the window. `busy` holds, per backend, the spans
/// during which it executed a prompt. Only time inside `window` counts (scenario (d) starts counting
/// when the backends are resumed).
pub fn idle_while_waiting(
    accepted: &[f64],
    started: &[f64],
    busy: &[Vec<Span>],
    window: Span,
) -> f64 {
    // Change points of the waiting count and of each backend's state.
    let mut points: Vec<f64> = vec![window.start, window.end];
    points.extend(
        accepted
            .iter()
            .chain(started)
            .copied()
            .filter(|t| *t > window.start && *t < window.end),
    );
    for spans in busy {
        for s in spans {
            points.extend(
                [s.start, s.end]
                    .into_iter()
                    .filter(|t| *t > window.start && *t < window.end),
            );
        }
    }
    points.sort_by(f64::total_cmp);
    points.dedup();

    let mut accepted = accepted.to_vec();
    let mut started = started.to_vec();
    accepted.sort_by(f64::total_cmp);
    started.sort_by(f64::total_cmp);
    let count_at_or_before = |sorted: &[f64], t: f64| sorted.partition_point(|v| *v <= t);

    let mut idle = 0.0;
    for pair in points.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        if b <= a {
            continue;
        }
        // The state is constant inside (a, b); look at it just after a.
        let waiting =
            count_at_or_before(&accepted, a).saturating_sub(count_at_or_before(&started, a));
        if waiting == 0 {
            continue;
        }
        let idle_backends = busy
            .iter()
            .filter(|spans| !spans.iter().any(|s| s.start <= a && s.end > a))
            .count();
        idle += idle_backends as f64 * (b - a);
    }
    idle
}

/// The shortest time in which `jobs` identical jobs can run on backends that take `exec_ms[i]` each
/// (one job at a time per backend). For equal backends this is `ceil(jobs / n) * exec`, i.e. the sum
/// of the execution times divided by the number of backends; for unequal ones it gives the slow
/// backend only the jobs it can finish before the fast ones would.
///
/// Giving each job to the backend that would finish it first is optimal for identical jobs.
pub fn ideal_makespan(jobs: usize, exec_ms: &[f64]) -> f64 {
    if exec_ms.is_empty() {
        return f64::INFINITY;
    }
    let mut load = vec![0.0_f64; exec_ms.len()];
    for _ in 0..jobs {
        let best = (0..exec_ms.len())
            .min_by(|&i, &j| (load[i] + exec_ms[i]).total_cmp(&(load[j] + exec_ms[j])))
            .unwrap_or(0);
        load[best] += exec_ms[best];
    }
    load.into_iter().fold(0.0, f64::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_uses_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        // Order does not matter, and a small sample's p99 is its maximum.
        assert_eq!(percentile(&[3.0, 1.0, 2.0], 50.0), Some(2.0));
        assert_eq!(percentile(&[3.0, 1.0, 2.0], 99.0), Some(3.0));
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[f64::NAN], 50.0), None);
    }

    #[test]
    fn idle_counts_only_idle_backends_while_jobs_wait() {
        // Two backends, window 0..100. Jobs accepted at 0 and 0; one starts at 10 on backend A
        // (busy 10..60), the other at 40 on backend B (busy 40..100).
        let busy = vec![
            vec![Span {
                start: 10.0,
                end: 60.0,
            }],
            vec![Span {
                start: 40.0,
                end: 100.0,
            }],
        ];
        let idle = idle_while_waiting(
            &[0.0, 0.0],
            &[10.0, 40.0],
            &busy,
            Span {
                start: 0.0,
                end: 100.0,
            },
        );
        // 0..10: both wait, both idle = 20; 10..40: one waits, B idle = 30; after 40 nothing waits.
        assert_eq!(idle, 50.0);
    }

    #[test]
    fn idle_is_zero_when_nothing_waits_and_respects_the_window() {
        let busy = vec![vec![], vec![]];
        // Nothing accepted: idle backends are not a problem.
        assert_eq!(
            idle_while_waiting(
                &[],
                &[],
                &busy,
                Span {
                    start: 0.0,
                    end: 50.0
                }
            ),
            0.0
        );
        // A job that never starts waits to the end of the window, counted from the window start.
        let idle = idle_while_waiting(
            &[0.0],
            &[],
            &busy,
            Span {
                start: 20.0,
                end: 50.0,
            },
        );
        assert_eq!(idle, 60.0);
    }

    #[test]
    fn ideal_makespan_for_equal_and_unequal_backends() {
        // (a): 300 jobs of 50 ms on 3 backends = 5 s.
        assert_eq!(ideal_makespan(300, &[50.0, 50.0, 50.0]), 5000.0);
        // Not a multiple: 4 jobs on 3 backends need two rounds.
        assert_eq!(ideal_makespan(4, &[50.0, 50.0, 50.0]), 100.0);
        // (c): 100/100/400 ms, 150 jobs: 67 + 67 on the fast ones, 16 on the slow one.
        assert_eq!(ideal_makespan(150, &[100.0, 100.0, 400.0]), 6700.0);
        assert_eq!(ideal_makespan(0, &[10.0]), 0.0);
        assert!(ideal_makespan(5, &[]).is_infinite());
    }
}
