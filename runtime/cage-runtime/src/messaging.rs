//! Messages between running invocations: named ports, hand-over semantics.
//!
//! A send returns once the message has been handed to a receiver waiting on the target's port
//! (waiting up to `port_wait` for one to appear); a receiver may wait on several ports at once.
//! Each waiting receiver holds a *ticket* queued on every port it waits on; a sender claims one
//! ticket (removing it from all its ports), so each message goes to exactly one receiver and
//! each receiver gets exactly one message.
//!
//! Module code calls this from executor threads, so it is plain blocking code over a mutex and
//! a condition variable; a sender that is a request from a client waits as a future instead
//! ([`Mailboxes::send_async`]), woken by the same changes, so a waiting request holds no thread.

use cage_sdk::{CallError, ErrorKind};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// Finished invocations remembered, to tell "finished" from "never existed".
const FINISHED_KEPT: usize = 100_000;
/// Longest a port name may be.
const PORT_MAX: usize = 128;

/// A message handed over, and the port it came through.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivered {
    /// The port.
    pub port: String,
    /// The message.
    pub message: Vec<u8>,
}

struct Ticket {
    invocation: u64,
    ports: Vec<String>,
    mail: Option<Delivered>,
}

#[derive(Default)]
struct State {
    next: u64,
    first: u64,
    running: HashSet<u64>,
    finished: HashSet<u64>,
    finished_order: VecDeque<u64>,
    waiting: HashMap<(u64, String), VecDeque<u64>>,
    tickets: HashMap<u64, Ticket>,
    next_ticket: u64,
    tokens: HashMap<String, u64>,
    token_of: HashMap<u64, String>,
}

/// The mailboxes of one cage's running invocations.
pub struct Mailboxes {
    cage: String,
    state: Mutex<State>,
    changed: Condvar,
    /// Bumped with every notification of `changed`, for waiters that are futures.
    wake: watch::Sender<u64>,
}

/// What offering a message to a port found.
enum Offer {
    Handed,
    NoReceiver(Vec<u8>),
}

/// Whether `port` can name a port: 1 to 128 visible characters, no NUL.
pub fn valid_port(port: &str) -> bool {
    !port.is_empty() && port.len() <= PORT_MAX && !port.chars().any(|c| c.is_control())
}

fn check_port(port: &str) -> Result<(), CallError> {
    match valid_port(port) {
        true => Ok(()),
        false => Err(CallError::bad_arguments(format!(
            "{port:?} is not a port name"
        ))),
    }
}

/// Splits an invocation id `CAGE/N`.
pub fn parse_invocation(id: &str) -> Option<(&str, u64)> {
    let (cage, n) = id.rsplit_once('/')?;
    Some((cage, n.parse().ok()?)).filter(|(c, _)| !c.is_empty())
}

impl Mailboxes {
    /// Mailboxes of cage `cage`. Invocation numbers start from the clock in microseconds, so
    /// ids are not reused after a restart.
    pub fn new(cage: &str) -> Self {
        let first = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(1);
        let state = State {
            next: first,
            first,
            ..State::default()
        };
        Mailboxes {
            cage: cage.to_owned(),
            state: Mutex::new(state),
            changed: Condvar::new(),
            wake: watch::channel(0).0,
        }
    }

    /// Wakes every waiter, thread or future, to look again.
    fn notify(&self) {
        self.changed.notify_all();
        self.wake.send_modify(|g| *g = g.wrapping_add(1));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts an invocation; returns its number (its id is `CAGE/N`) and the token that lets
    /// a process outside the cage act as it through the HTTP API while it runs.
    pub fn begin(&self) -> (u64, String) {
        let token = format!("{:032x}", rand::random::<u128>());
        let mut s = self.lock();
        s.next += 1;
        let n = s.next;
        s.running.insert(n);
        s.tokens.insert(token.clone(), n);
        s.token_of.insert(n, token.clone());
        (n, token)
    }

    /// The running invocation a token stands for.
    pub fn invocation_of(&self, token: &str) -> Option<u64> {
        self.lock().tokens.get(token).copied()
    }

    /// Ends invocation `n`: senders waiting for it fail at once.
    pub fn end(&self, n: u64) {
        let mut s = self.lock();
        s.running.remove(&n);
        if let Some(token) = s.token_of.remove(&n) {
            s.tokens.remove(&token);
        }
        s.finished.insert(n);
        s.finished_order.push_back(n);
        if s.finished_order.len() > FINISHED_KEPT {
            if let Some(old) = s.finished_order.pop_front() {
                s.finished.remove(&old);
            }
        }
        drop(s);
        self.notify();
    }

    /// The full id of invocation `n`.
    pub fn id(&self, n: u64) -> String {
        format!("{}/{n}", self.cage)
    }

    fn not_running(&self, s: &State, n: u64) -> CallError {
        let id = self.id(n);
        if s.finished.contains(&n) {
            CallError::with_kind(
                ErrorKind::InvocationFinished,
                format!("invocation {id} has already finished"),
            )
        } else if n <= s.first {
            CallError::with_kind(
                ErrorKind::UnknownInvocation,
                format!("invocation {id} is not running: it is unknown to this run of cage {} (from before a restart, or never existed)", self.cage),
            )
        } else if n > s.next {
            CallError::with_kind(
                ErrorKind::UnknownInvocation,
                format!("invocation {id} never existed"),
            )
        } else {
            CallError::with_kind(
                ErrorKind::InvocationFinished,
                format!("invocation {id} has already finished (long ago)"),
            )
        }
    }

    /// Hands `message` to a receiver waiting on `port` of invocation `n`, waiting up to `wait`
    /// for one; fails at once if the invocation is not running.
    pub fn send(
        &self,
        n: u64,
        port: &str,
        mut message: Vec<u8>,
        wait: Duration,
    ) -> Result<(), CallError> {
        check_port(port)?;
        let deadline = Instant::now() + wait;
        let mut s = self.lock();
        loop {
            match self.offer(&mut s, n, port, message)? {
                Offer::Handed => {
                    drop(s);
                    self.notify();
                    return Ok(());
                }
                Offer::NoReceiver(back) => message = back,
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(self.no_receiver(n, port, wait));
            }
            s = self
                .changed
                .wait_timeout(s, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// As [`Mailboxes::send`], waiting as a future: dropping it withdraws the message.
    pub async fn send_async(
        &self,
        n: u64,
        port: &str,
        mut message: Vec<u8>,
        wait: Duration,
    ) -> Result<(), CallError> {
        check_port(port)?;
        let deadline = tokio::time::Instant::now()
            .checked_add(wait)
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(86_400));
        let mut changes = self.wake.subscribe();
        loop {
            // Marked seen before looking: a change after the look wakes the wait below.
            changes.borrow_and_update();
            let offered = {
                let mut s = self.lock();
                self.offer(&mut s, n, port, message)?
            };
            match offered {
                Offer::Handed => {
                    self.notify();
                    return Ok(());
                }
                Offer::NoReceiver(back) => message = back,
            }
            if tokio::time::timeout_at(deadline, changes.changed())
                .await
                .is_err()
            {
                return Err(self.no_receiver(n, port, wait));
            }
        }
    }

    /// Hands `message` to the first receiver waiting on `port` of invocation `n`, if any.
    fn offer(
        &self,
        s: &mut State,
        n: u64,
        port: &str,
        message: Vec<u8>,
    ) -> Result<Offer, CallError> {
        if !s.running.contains(&n) {
            return Err(self.not_running(s, n));
        }
        let key = (n, port.to_owned());
        let Some(ticket) = s.waiting.get_mut(&key).and_then(VecDeque::pop_front) else {
            return Ok(Offer::NoReceiver(message));
        };
        let ports = s
            .tickets
            .get(&ticket)
            .map(|t| t.ports.clone())
            .unwrap_or_default();
        for p in ports.iter().filter(|p| **p != port) {
            if let Some(q) = s.waiting.get_mut(&(n, p.clone())) {
                q.retain(|t| *t != ticket);
            }
        }
        if let Some(t) = s.tickets.get_mut(&ticket) {
            t.mail = Some(Delivered {
                port: port.to_owned(),
                message,
            });
        }
        Ok(Offer::Handed)
    }

    fn no_receiver(&self, n: u64, port: &str, wait: Duration) -> CallError {
        CallError::with_kind(
            ErrorKind::Timeout,
            format!(
                "no receiver on port {port:?} of invocation {} within {} (port_wait)",
                self.id(n),
                humantime::format_duration(Duration::from_millis(wait.as_millis() as u64))
            ),
        )
    }

    /// Waits up to `timeout` (forever with `None`) for a message on any of `ports` of
    /// invocation `n`.
    pub fn receive(
        &self,
        n: u64,
        ports: &[String],
        timeout: Option<Duration>,
    ) -> Result<Delivered, CallError> {
        if ports.is_empty() || !ports.iter().all(|p| valid_port(p)) {
            return Err(CallError::bad_arguments(format!(
                "{ports:?} are not port names"
            )));
        }
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut s = self.lock();
        s.next_ticket += 1;
        let ticket = s.next_ticket;
        s.tickets.insert(
            ticket,
            Ticket {
                invocation: n,
                ports: ports.to_vec(),
                mail: None,
            },
        );
        for p in ports {
            s.waiting
                .entry((n, p.clone()))
                .or_default()
                .push_back(ticket);
        }
        self.notify();
        loop {
            if let Some(mail) = s.tickets.get_mut(&ticket).and_then(|t| t.mail.take()) {
                s.tickets.remove(&ticket);
                return Ok(mail);
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                Self::withdraw(&mut s, ticket);
                return Err(CallError::with_kind(
                    ErrorKind::ReceiveTimeout,
                    format!(
                        "no message on port(s) {} of invocation {} within {}",
                        ports.join(", "),
                        self.id(n),
                        humantime::format_duration(timeout.unwrap_or_default())
                    ),
                ));
            }
            s = match deadline {
                Some(d) => {
                    self.changed
                        .wait_timeout(s, d - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
                None => self.changed.wait(s).unwrap_or_else(|p| p.into_inner()),
            };
        }
    }

    fn withdraw(s: &mut State, ticket: u64) {
        if let Some(t) = s.tickets.remove(&ticket) {
            for p in t.ports {
                let key = (t.invocation, p);
                if let Some(q) = s.waiting.get_mut(&key) {
                    q.retain(|x| *x != ticket);
                    if q.is_empty() {
                        s.waiting.remove(&key);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_send_waits_for_a_receiver_and_hands_over() {
        let m = Arc::new(Mailboxes::new("c"));
        let (n, _) = m.begin();
        let m2 = m.clone();
        let receiver = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            m2.receive(n, &["in".into()], Some(Duration::from_secs(5)))
        });
        m.send(n, "in", b"hello".to_vec(), Duration::from_secs(5))
            .unwrap();
        assert_eq!(
            receiver.join().unwrap().unwrap(),
            Delivered {
                port: "in".into(),
                message: b"hello".to_vec()
            }
        );
    }

    #[test]
    fn one_receiver_on_two_ports_takes_one_message() {
        let m = Arc::new(Mailboxes::new("c"));
        let (n, _) = m.begin();
        let m2 = m.clone();
        let receiver = std::thread::spawn(move || {
            m2.receive(n, &["a".into(), "b".into()], Some(Duration::from_secs(5)))
        });
        m.send(n, "b", b"1".to_vec(), Duration::from_secs(5))
            .unwrap();
        assert_eq!(receiver.join().unwrap().unwrap().port, "b");
        // The ticket left port "a" too: nobody waits there now.
        let e = m
            .send(n, "a", b"2".to_vec(), Duration::from_millis(50))
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Timeout);
    }

    #[test]
    fn errors_tell_finished_unknown_and_timeouts_apart() {
        let m = Mailboxes::new("c");
        let (n, _) = m.begin();
        let e = m
            .receive(n, &["x".into()], Some(Duration::from_millis(20)))
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::ReceiveTimeout);
        let e = m
            .send(n, "x", vec![], Duration::from_millis(20))
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Timeout);
        m.end(n);
        assert_eq!(
            m.send(n, "x", vec![], Duration::from_secs(1))
                .unwrap_err()
                .kind,
            ErrorKind::InvocationFinished
        );
        assert_eq!(
            m.send(n + 1000, "x", vec![], Duration::from_secs(1))
                .unwrap_err()
                .kind,
            ErrorKind::UnknownInvocation
        );
        assert_eq!(
            m.send(1, "x", vec![], Duration::from_secs(1))
                .unwrap_err()
                .kind,
            ErrorKind::UnknownInvocation
        );
    }

    #[test]
    fn ending_an_invocation_fails_its_waiting_senders() {
        let m = Arc::new(Mailboxes::new("c"));
        let (n, _) = m.begin();
        let m2 = m.clone();
        let sender =
            std::thread::spawn(move || m2.send(n, "late", vec![1], Duration::from_secs(10)));
        std::thread::sleep(Duration::from_millis(50));
        m.end(n);
        assert_eq!(
            sender.join().unwrap().unwrap_err().kind,
            ErrorKind::InvocationFinished
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_async_send_waits_without_a_thread_and_hands_over() {
        let m = Arc::new(Mailboxes::new("c"));
        let (n, _) = m.begin();
        let m2 = m.clone();
        let receiver = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            m2.receive(n, &["in".into()], Some(Duration::from_secs(5)))
        });
        m.send_async(n, "in", b"hi".to_vec(), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(receiver.join().unwrap().unwrap().message, b"hi");

        let e = m
            .send_async(n, "in", vec![], Duration::from_millis(20))
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Timeout);
        assert!(e.message.contains("port_wait"), "{e:?}");
        let e = m
            .send_async(n, "", vec![], Duration::from_secs(1))
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadArguments);

        // Ending the invocation fails a waiting async sender at once.
        let m3 = m.clone();
        let ender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            m3.end(n);
        });
        let e = m
            .send_async(n, "late", vec![1], Duration::from_secs(30))
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvocationFinished);
        ender.join().unwrap();
    }

    #[test]
    fn invocation_ids_parse() {
        assert_eq!(parse_invocation("demo/42"), Some(("demo", 42)));
        assert_eq!(parse_invocation("demo"), None);
        assert_eq!(parse_invocation("/42"), None);
    }
}
