//! Whether an attempt may start now: its queue's slots (`concurrency`) and rate limit, then its
//! group's slots (`group_concurrency`) and rate limit; the room the due scans may take from each
//! partition of the due index; and what held back the due calls that had to wait, for
//! `cage pending`, the dashboard and `/metrics`. Counts per group are kept only while a group
//! has attempts running, so memory follows the running calls, not every group ever seen.

use super::rate::{Limit, Rates};
use crate::config::QueuePolicy;
use crate::queue::{DueValue, Room};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

/// The key of `group` of `queue` in the counts and buckets of groups (queue names hold no 1 byte).
pub(super) fn group_key(queue: &str, group: &str) -> String {
    format!("{queue}\u{1}{group}")
}

/// What holds a due call back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Hold {
    /// Its queue's rate limit gives the next start after this long.
    QueueRate(Duration),
    /// Every slot of its queue is taken.
    QueueSlots,
    /// Its group's rate limit gives the next start after this long.
    GroupRate(Duration),
    /// Every slot of its group is taken.
    GroupSlots,
}

/// The limits of a queue's rate, if it has one.
fn queue_limit(policy: &QueuePolicy) -> Option<Limit> {
    policy.rate_limit.map(|r| (r, policy.burst))
}

/// The limits of the rate of each group of a queue, if it has one.
fn group_limit(policy: &QueuePolicy) -> Option<Limit> {
    policy.group_rate_limit.map(|r| (r, policy.group_burst))
}

/// Attempts running per queue and per group, and the buckets of their rate limits.
#[derive(Debug, Default)]
pub(super) struct Admission {
    busy: HashMap<String, usize>,
    group_busy: HashMap<String, usize>,
    rates: Rates,
}

impl Admission {
    /// Attempts of `queue` running now.
    pub(super) fn busy(&self, queue: &str) -> usize {
        self.busy.get(queue).copied().unwrap_or(0)
    }

    /// Attempts of `group` of `queue` running now.
    pub(super) fn group_busy(&self, queue: &str, group: &str) -> usize {
        self.group_busy
            .get(&group_key(queue, group))
            .copied()
            .unwrap_or(0)
    }

    /// Attempts running per queue.
    pub(super) fn busy_by_queue(&self) -> &HashMap<String, usize> {
        &self.busy
    }

    /// What holds back an attempt of `queue` (and `group`) under `policy` at `now`, if anything.
    pub(super) fn hold(
        &self,
        queue: &str,
        group: Option<&str>,
        policy: &QueuePolicy,
        now: Instant,
    ) -> Option<Hold> {
        let wait = self.rates.wait(queue, queue_limit(policy), now);
        if !wait.is_zero() {
            return Some(Hold::QueueRate(wait));
        }
        if self.busy(queue) >= policy.concurrency {
            return Some(Hold::QueueSlots);
        }
        let group = group?;
        if policy.group_rate_limit.is_none() && policy.group_concurrency.is_none() {
            return None;
        }
        let key = group_key(queue, group);
        let wait = self.rates.wait(&key, group_limit(policy), now);
        if !wait.is_zero() {
            return Some(Hold::GroupRate(wait));
        }
        let cap = policy.group_concurrency?;
        (self.group_busy.get(&key).copied().unwrap_or(0) >= cap).then_some(Hold::GroupSlots)
    }

    /// How many due calls of the partition `v` of the due index may start now: of its queue,
    /// and of the partition (its group, or its queue); what holds it back goes to `held`.
    pub(super) fn room(
        &self,
        v: &DueValue<'_>,
        policy: &QueuePolicy,
        now: Instant,
        held: &mut Held,
    ) -> Room {
        if v.target.is_some() {
            return Room::ANY;
        }
        let none = Room { queue: 0, part: 0 };
        if let Some(hold) = self.hold(v.queue, v.group, policy, now) {
            held.note(v.queue, v.group, hold);
            return none;
        }
        let queue = policy
            .concurrency
            .saturating_sub(self.busy(v.queue))
            .min(self.rates.available(v.queue, queue_limit(policy), now));
        let part = match v.group {
            None => queue,
            Some(_) if policy.group_rate_limit.is_none() && policy.group_concurrency.is_none() => {
                queue
            }
            Some(group) => {
                let key = group_key(v.queue, group);
                let slots = policy.group_concurrency.map_or(usize::MAX, |cap| {
                    cap.saturating_sub(self.group_busy.get(&key).copied().unwrap_or(0))
                });
                slots.min(self.rates.available(&key, group_limit(policy), now))
            }
        };
        Room { queue, part }
    }

    /// Counts an attempt of `queue` (and `group`) as started at `now`: a slot of each, and a
    /// start of each rate limit.
    pub(super) fn start(
        &mut self,
        queue: &str,
        group: Option<&str>,
        policy: &QueuePolicy,
        now: Instant,
    ) {
        self.rates.take(queue, queue_limit(policy), now);
        *self.busy.entry(queue.to_owned()).or_default() += 1;
        if let Some(group) = group {
            let key = group_key(queue, group);
            self.rates.take(&key, group_limit(policy), now);
            *self.group_busy.entry(key).or_default() += 1;
        }
    }

    /// Counts an attempt of `queue` (and `group`) as ended.
    pub(super) fn end(&mut self, queue: &str, group: Option<&str>) {
        if let Some(n) = self.busy.get_mut(queue) {
            *n = n.saturating_sub(1);
        }
        if let Some(group) = group {
            let key = group_key(queue, group);
            if let Some(n) = self.group_busy.get_mut(&key) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.group_busy.remove(&key);
                }
            }
        }
    }

    /// Drops the buckets of rate limits back at rest, once there are many of them.
    pub(super) fn prune(&mut self, now: Instant) {
        if self.rates.len() > PRUNE_ABOVE {
            self.rates.prune(now);
        }
    }
}

/// Buckets kept before those back at rest are dropped.
pub(super) const PRUNE_ABOVE: usize = 1024;

/// What held back due calls at a pump: queues and groups waiting for their rate limit (with how
/// long until their next start), and groups at their concurrency.
#[derive(Debug, Default, Clone, PartialEq)]
pub(super) struct Held {
    /// Queues waiting for their rate limit.
    pub(super) queue_rate: HashMap<String, Duration>,
    /// Groups (by [`group_key`]) waiting for their rate limit.
    pub(super) group_rate: HashMap<String, Duration>,
    /// Groups at their concurrency or waiting for their rate limit, by queue.
    pub(super) groups: BTreeMap<String, BTreeSet<String>>,
}

impl Held {
    /// Notes that `hold` held back a due call of `queue` (and `group`).
    pub(super) fn note(&mut self, queue: &str, group: Option<&str>, hold: Hold) {
        match (hold, group) {
            (Hold::QueueRate(wait), _) => {
                self.queue_rate.insert(queue.to_owned(), wait);
            }
            (Hold::QueueSlots, _) => {}
            (Hold::GroupRate(wait), Some(group)) => {
                self.group_rate.insert(group_key(queue, group), wait);
                self.note_group(queue, group);
            }
            (Hold::GroupSlots, Some(group)) => self.note_group(queue, group),
            (_, None) => {}
        }
    }

    fn note_group(&mut self, queue: &str, group: &str) {
        match self.groups.get_mut(queue) {
            Some(groups) => {
                if !groups.contains(group) {
                    groups.insert(group.to_owned());
                }
            }
            None => {
                self.groups
                    .insert(queue.to_owned(), BTreeSet::from([group.to_owned()]));
            }
        }
    }

    /// The soonest a rate limit gives a held queue or group its next start.
    pub(super) fn next_start(&self) -> Option<Duration> {
        self.queue_rate
            .values()
            .chain(self.group_rate.values())
            .min()
            .copied()
    }

    /// Whether the calls of partition `v` wait for a rate limit.
    pub(super) fn waits_for_rate(&self, v: &DueValue<'_>) -> bool {
        v.target.is_none()
            && (self.queue_rate.contains_key(v.queue)
                || v.group
                    .is_some_and(|g| self.group_rate.contains_key(&group_key(v.queue, g))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Rate;

    fn grouped(cap: usize) -> QueuePolicy {
        QueuePolicy {
            concurrency: 3,
            group_concurrency: Some(cap),
            ..QueuePolicy::default()
        }
    }

    fn part<'a>(queue: &'a str, group: Option<&'a str>) -> DueValue<'a> {
        DueValue {
            queue,
            target: None,
            group,
        }
    }

    #[test]
    fn a_group_at_its_concurrency_waits_while_others_and_the_queue_have_room() {
        let (policy, now) = (grouped(1), Instant::now());
        let mut a = Admission::default();
        a.start("q", Some("g1"), &policy, now);
        assert_eq!(
            a.hold("q", Some("g1"), &policy, now),
            Some(Hold::GroupSlots)
        );
        assert_eq!(a.hold("q", Some("g2"), &policy, now), None);
        assert_eq!(a.hold("q", None, &policy, now), None);
        let mut held = Held::default();
        assert_eq!(
            a.room(&part("q", Some("g1")), &policy, now, &mut held),
            Room { queue: 0, part: 0 }
        );
        assert_eq!(
            a.room(&part("q", Some("g2")), &policy, now, &mut held),
            Room { queue: 2, part: 1 }
        );
        assert_eq!(held.groups["q"], BTreeSet::from(["g1".to_owned()]));
        // The queue's slots bind every group.
        a.start("q", Some("g2"), &policy, now);
        a.start("q", None, &policy, now);
        assert_eq!(
            a.hold("q", Some("g3"), &policy, now),
            Some(Hold::QueueSlots)
        );
        a.end("q", Some("g1"));
        assert_eq!(a.group_busy("q", "g1"), 0);
        assert!(!a.group_busy.contains_key(&group_key("q", "g1")));
        assert_eq!(a.hold("q", Some("g1"), &policy, now), None);
    }

    #[test]
    fn a_group_rate_limit_holds_its_group_only() {
        let policy = QueuePolicy {
            group_rate_limit: Rate::parse("2/s"),
            ..QueuePolicy::default()
        };
        let now = Instant::now();
        let mut a = Admission::default();
        a.start("q", Some("g1"), &policy, now);
        assert_eq!(
            a.hold("q", Some("g1"), &policy, now),
            Some(Hold::GroupRate(Duration::from_millis(500)))
        );
        assert_eq!(a.hold("q", Some("g2"), &policy, now), None);
        let mut held = Held::default();
        a.room(&part("q", Some("g1")), &policy, now, &mut held);
        assert!(held.waits_for_rate(&part("q", Some("g1"))));
        assert!(!held.waits_for_rate(&part("q", Some("g2"))));
        assert_eq!(held.next_start(), Some(Duration::from_millis(500)));
    }
}
