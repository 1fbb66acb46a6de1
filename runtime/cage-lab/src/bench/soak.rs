//! `cage bench soak`: many queued calls from the first cage to the second, in rounds; after
//! each round the target's data directory (bytes on disk) and memory (RSS) are sampled, to
//! show what each call leaves behind on the target (the record it holds to recognise a
//! redelivered call) and whether its memory stays flat over millions of calls.

use super::e2e::queue_and_wait;
use super::footprint::{dir_allocated, rss_bytes};
use super::report::{Goal, Report};
use super::Place;
use cage_runtime::transport::client::Client;
use std::time::{Duration, Instant};

/// Calls the soak makes when the command line gives no `--calls`.
pub const CALLS: usize = 10_000_000;

/// One sample, taken after a round.
struct Sample {
    /// Calls done so far.
    calls: usize,
    /// Bytes the target's data directory takes on disk.
    disk: u64,
    /// The target's resident memory, if it runs on this machine.
    rss: Option<u64>,
}

/// Calls of one round: about fifty rounds, none under 10 000 calls (or all in one).
fn round_size(calls: usize) -> usize {
    (calls / 50).max(10_000).min(calls).max(1)
}

/// Makes `calls` queued calls of `echo.version` from the first cage to the second, from
/// `clients` clients, a round at a time, sampling the target after each round.
pub fn run(place: &Place, calls: usize, clients: usize, report: &mut Report) -> Result<(), String> {
    let (source, to) = (place.first.as_str(), place.second.as_str());
    let data_dir = place.data_dir(to)?;
    let pid = Client::connect(to, &place.route(to)?)
        .and_then(|mut c| c.ping(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?
        .pid;
    let sample = |calls: usize| Sample {
        calls,
        disk: dir_allocated(&data_dir),
        rss: rss_bytes(pid),
    };
    let round = round_size(calls);
    let rounds = calls.div_ceil(round);
    let mb = |b: u64| b as f64 / 1e6;
    let mut samples = vec![sample(0)];
    let started = Instant::now();
    for r in 1..=rounds {
        let n = round.min(calls - (r - 1) * round);
        let took = queue_and_wait(
            place,
            "version",
            b"null",
            "retry",
            n,
            clients,
            &format!("soak round {r}/{rounds}"),
            "executing",
        )?
        .total;
        let s = sample(samples.last().map_or(0, |s| s.calls) + n);
        eprintln!(
            "soak: round {r}/{rounds}: {} calls {source} → {to} done, {:.0} calls/s this round; {to}: {:.1} MB on disk, RSS {}",
            s.calls,
            n as f64 / took.as_secs_f64(),
            mb(s.disk),
            s.rss.map_or("unknown (not on this machine)".to_owned(), |b| format!("{:.1} MB", mb(b)))
        );
        samples.push(s);
    }
    let elapsed = started.elapsed();
    let (first, middle, last) = (
        &samples[0],
        &samples[samples.len() / 2],
        &samples[samples.len() - 1],
    );
    report.add(
        "soak",
        format!("queued calls/s {source} → {to} over {calls} calls"),
        calls as f64 / elapsed.as_secs_f64(),
        "calls/s",
        None,
    );
    report.add(
        "soak",
        format!("bytes on disk per call held for dedup on {to} (growth / calls)"),
        last.disk.saturating_sub(first.disk) as f64 / calls as f64,
        "B",
        Some(Goal::AtMost(100.0)),
    );
    report.add(
        "soak",
        format!("{to} data directory on disk after {calls} calls"),
        mb(last.disk),
        "MB",
        None,
    );
    if let (Some(a), Some(m), Some(z)) = (first.rss, middle.rss, last.rss) {
        for (when, s, rss) in [("start", first, a), ("middle", middle, m), ("end", last, z)] {
            report.add(
                "soak",
                format!("{to} RSS at {when} ({} calls done)", s.calls),
                mb(rss),
                "MB",
                None,
            );
        }
        report.add(
            "soak",
            format!("{to} RSS change from middle to end"),
            mb(z) - mb(m),
            "MB",
            None,
        );
    } else {
        eprintln!("soak: {to} (pid {pid}) is not a process on this machine: no RSS figures");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::round_size;

    #[test]
    fn rounds_are_a_fiftieth_of_the_calls_but_not_tiny() {
        assert_eq!(round_size(10_000_000), 200_000);
        assert_eq!(round_size(100_000), 10_000);
        assert_eq!(round_size(2_000), 2_000);
        assert_eq!(round_size(0), 1);
    }
}
