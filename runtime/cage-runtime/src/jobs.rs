//! Jobs: calls that run at a time (`--at`, `--in`) or at an interval (`--every`), stored in the
//! cage's queue database and fired through the queue, so failures retry by policy.
//!
//! This file holds the plain data and the decisions: which runs are due, what a catch-up does,
//! what a job's signature is. The scheduler stores jobs and fires their runs.

use crate::model::job::{CatchUp, Job, Schedule, CATCH_UP_LIMIT};

/// The call id of the run of `job_id` scheduled for `scheduled_ms`: the same run always gets
/// the same id, so firing it twice (say, around a crash) queues it once.
pub fn run_id(job_id: &str, scheduled_ms: u64) -> String {
    format!("{job_id}@{scheduled_ms}")
}

/// The job a run's call id belongs to, if it is a run id.
pub fn job_of_run(call_id: &str) -> Option<&str> {
    call_id
        .rsplit_once('@')
        .filter(|(j, t)| j.starts_with("job-") && t.parse::<u64>().is_ok())
        .map(|(j, _)| j)
}

/// The runs to fire now (scheduled times, oldest first) and the job's next due time after them.
/// Total for any stored times: the next tick past the end of time is the end of time.
pub fn due_runs(job: &Job, now_ms: u64) -> (Vec<u64>, Option<u64>) {
    let Some(next) = job.next_run_ms else {
        return (Vec::new(), None);
    };
    if next > now_ms {
        return (Vec::new(), Some(next));
    }
    match job.schedule {
        Schedule::Once { .. } => (vec![next], None),
        Schedule::Every { interval_ms, .. } => {
            let interval = interval_ms.max(1);
            // next <= now_ms, so neither product nor sum can pass now_ms.
            let missed = (now_ms - next) / interval;
            let latest = next + missed * interval;
            let following = Some(latest.saturating_add(interval));
            let runs = if missed == 0 {
                vec![next]
            } else {
                match job.catch_up {
                    CatchUp::Once => vec![latest],
                    CatchUp::All => {
                        let count = (missed + 1).min(CATCH_UP_LIMIT as u64);
                        (0..count)
                            .map(|k| latest - (count - 1 - k) * interval)
                            .collect()
                    }
                    CatchUp::Skip => Vec::new(),
                }
            };
            (runs, following)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every(interval_ms: u64, next: u64, catch_up: CatchUp) -> Job {
        Job {
            id: "job-1".into(),
            cage: "c".into(),
            module: "m".into(),
            method: "f".into(),
            args: br#"{"b": 1, "a": 2}"#.to_vec(),
            queue: "retry".into(),
            schedule: Schedule::Every {
                interval_ms,
                first_ms: next,
            },
            catch_up,
            declared: false,
            next_run_ms: Some(next),
            last_run: None,
        }
    }

    #[test]
    fn nothing_runs_before_its_time() {
        assert_eq!(
            due_runs(&every(100, 1000, CatchUp::Once), 999),
            (vec![], Some(1000))
        );
    }

    #[test]
    fn on_time_tick_runs_once_whatever_the_catch_up() {
        for c in [CatchUp::Once, CatchUp::All, CatchUp::Skip] {
            assert_eq!(
                due_runs(&every(100, 1000, c), 1050),
                (vec![1000], Some(1100))
            );
        }
    }

    #[test]
    fn missed_ticks_follow_catch_up() {
        // Ticks at 1000..=1300 were missed by 1350.
        assert_eq!(
            due_runs(&every(100, 1000, CatchUp::Once), 1350),
            (vec![1300], Some(1400))
        );
        assert_eq!(
            due_runs(&every(100, 1000, CatchUp::All), 1350),
            (vec![1000, 1100, 1200, 1300], Some(1400))
        );
        assert_eq!(
            due_runs(&every(100, 1000, CatchUp::Skip), 1350),
            (vec![], Some(1400))
        );
    }

    #[test]
    fn one_shot_runs_once() {
        let mut j = every(100, 1000, CatchUp::Once);
        j.schedule = Schedule::Once { at_ms: 1000 };
        assert_eq!(due_runs(&j, 5000), (vec![1000], None));
        j.next_run_ms = None;
        assert_eq!(due_runs(&j, 9000), (vec![], None));
    }

    #[test]
    fn run_ids_name_their_job() {
        assert_eq!(job_of_run(&run_id("job-7f", 1234)), Some("job-7f"));
        assert_eq!(job_of_run("front-1a-2"), None);
        assert_eq!(job_of_run("job-x@later"), None);
    }

    #[test]
    fn a_stored_far_job_renders_and_fires_without_overflow() {
        let mut j = every(u64::MAX, 5, CatchUp::All);
        assert_eq!(due_runs(&j, 10), (vec![5], Some(u64::MAX)));
        assert_eq!(
            j.schedule.words(),
            "every 584542046years 1month 2days 15h 52m 15s 615ms"
        );
        j.schedule = Schedule::Once { at_ms: u64::MAX };
        assert_eq!(j.schedule.words(), "once at +584556019-04-03T14:25:51Z");
    }

    proptest::proptest! {
        #[test]
        fn due_runs_is_total_and_ordered(
            interval in proptest::prelude::any::<u64>(),
            next in proptest::prelude::any::<u64>(),
            now in proptest::prelude::any::<u64>(),
            all in proptest::prelude::any::<bool>(),
        ) {
            let j = every(interval, next, if all { CatchUp::All } else { CatchUp::Once });
            let (runs, following) = due_runs(&j, now);
            proptest::prop_assert!(runs.len() <= CATCH_UP_LIMIT);
            proptest::prop_assert!(runs.windows(2).all(|w| w[0] < w[1]));
            proptest::prop_assert!(runs.iter().all(|&t| t >= next && t <= now));
            let following = following.unwrap();
            proptest::prop_assert!(runs.last().is_none_or(|&t| following > t || following == u64::MAX));
            proptest::prop_assert!(following > now || (runs.is_empty() && following == next) || following == u64::MAX);
            let _ = j.schedule.words();
        }
    }

    #[test]
    fn signature_ignores_key_order_of_args() {
        let a = every(100, 0, CatchUp::Once);
        let mut b = a.clone();
        b.args = br#"{"a": 2, "b": 1}"#.to_vec();
        assert_eq!(a.signature(), b.signature());
    }
}
