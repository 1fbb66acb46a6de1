//! What the listings (`cage pending`, `dead`, `jobs`, `chains`) and the site-wide orders
//! (`cage cancel --all`…) share: asking each cage, keeping what the cages that answered said,
//! and saying which did not answer. A listing missing a cage is incomplete, so it says so
//! and exits non-zero, with `--json` too.

use super::queue_view::TIMEOUT;
use super::{exit, target};
use cage_runtime::config::Site;
use cage_runtime::maintenance::StoppedCage;
use cage_runtime::transport::client::{Client, ClientError};
use cage_runtime::transport::protocol::{QueueQuery, Request, Response};
use cage_sdk::{CallError, ErrorKind};
use std::process::ExitCode;

/// A cage that did not answer, and why.
pub struct Unread {
    /// The cage.
    pub cage: String,
    /// Why it could not be read.
    pub error: CallError,
}

/// What a listing gathered from the cages it asked.
pub struct Gathered<T> {
    /// What the cages that answered hold.
    pub items: Vec<T>,
    /// The cages that did not answer.
    pub unread: Vec<Unread>,
    /// How many cages were asked.
    asked: usize,
}

impl<T> Gathered<T> {
    /// Asks each of `cages` `question` on a connection of its own; a cage that cannot be
    /// reached or cannot answer is noted and the others are still asked. A cage the site does
    /// not know, or a config error, stops the listing (with its exit code).
    pub fn ask(
        site: &Site,
        cages: &[String],
        question: impl Fn(&mut Client) -> Result<Vec<T>, CallError>,
    ) -> Result<Self, ExitCode> {
        Self::gather(site, cages, |_, connected| {
            connected
                .map_err(ClientError::into_call_error)
                .and_then(|mut c| question(&mut c))
        })
    }

    /// Asks each of `cages` by `answer` (given the cage and its connection, or why there is
    /// none); what each answers, or why it could not.
    fn gather(
        site: &Site,
        cages: &[String],
        answer: impl Fn(&str, Result<Client, ClientError>) -> Result<Vec<T>, CallError>,
    ) -> Result<Self, ExitCode> {
        let mut gathered = Gathered {
            items: Vec::new(),
            unread: Vec::new(),
            asked: cages.len(),
        };
        for cage in cages {
            let route = target::route(site, cage)?;
            match answer(cage, Client::connect(cage, &route)) {
                Ok(items) => gathered.items.extend(items),
                Err(error) => gathered.unread.push(Unread {
                    cage: cage.clone(),
                    error,
                }),
            }
        }
        Ok(gathered)
    }

    /// Asks each of `cages` the queue question `query` builds, as [`Gathered::ask`] does; a
    /// cage that cannot be reached (it is not running) has its queue opened directly, with
    /// the lock a running cage takes, and answers from it (saying so on stderr); `take` reads
    /// an answer.
    pub fn ask_queue(
        site: &Site,
        cages: &[String],
        query: &dyn Fn() -> QueueQuery,
        take: impl Fn(Response) -> Result<Vec<T>, CallError>,
    ) -> Result<Self, ExitCode> {
        Self::gather(site, cages, |cage, connected| match connected {
            Ok(mut c) => c
                .request(Request::Queue(query()), TIMEOUT)
                .map_err(ClientError::into_call_error)
                .and_then(&take),
            Err(e @ ClientError::Unreachable { .. }) => match StoppedCage::open(site, cage) {
                Ok(Some(mut stopped)) => {
                    eprintln!(
                        "(cage {cage} is not running: read from {})",
                        shown(site, &stopped.data_dir)
                    );
                    take(stopped.answer(query()))
                }
                Ok(None) => {
                    eprintln!("(cage {cage} is not running, and has never stored a call)");
                    Ok(Vec::new())
                }
                Err(stopped) => Err(CallError::with_kind(
                    ErrorKind::Unreachable,
                    format!("{}; {stopped}", e.into_call_error().message),
                )),
            },
            Err(e) => Err(e.into_call_error()),
        })
    }

    /// The line a table prints when it has no rows: `none`, or, when some cage could not be
    /// read, that the cages that were read hold none.
    pub fn nothing(&self, none: &str) -> String {
        match self.unread.len() {
            0 => none.to_owned(),
            n => format!(
                "{none} on the cages that answered ({n} of {} could not be read)",
                self.asked
            ),
        }
    }

    /// Says which cages could not be read (after a table, on stdout; always on stderr) and
    /// answers the exit code: success if every cage was read, else the code of the first
    /// failure's kind (unreachable, timeout, refused…).
    pub fn finish(&self, json: bool) -> ExitCode {
        if !json {
            for u in &self.unread {
                println!("could not read cage {}: {}", u.cage, u.error);
            }
        }
        self.fail_if_unread("the listing is incomplete")
    }

    /// Success if every cage answered; else names each that did not on stderr, then fails
    /// with the code of the first failure's kind, saying `consequence`.
    pub fn fail_if_unread(&self, consequence: &str) -> ExitCode {
        let Some(first) = self.unread.first() else {
            return ExitCode::SUCCESS;
        };
        for u in &self.unread {
            eprintln!("warning: cage {} did not answer: {}", u.cage, u.error);
        }
        let names: Vec<&str> = self.unread.iter().map(|u| u.cage.as_str()).collect();
        exit::fail(
            exit::for_kind(first.error.kind),
            format!(
                "{} of {} cage(s) did not answer ({}): {consequence}",
                self.unread.len(),
                self.asked,
                names.join(", ")
            ),
        )
    }
}

/// `dir` as the site's operator knows it: relative to the site when inside it.
fn shown(site: &Site, dir: &std::path::Path) -> String {
    dir.strip_prefix(site.root())
        .unwrap_or(dir)
        .display()
        .to_string()
}

/// Reads a queue answer holding calls.
pub fn calls(
    answer: Response,
) -> Result<Vec<cage_runtime::transport::protocol::CallView>, CallError> {
    match answer {
        Response::Calls(calls) => Ok(calls),
        other => Err(refusal(other)),
    }
}

/// Reads a queue answer counting the calls an order changed.
pub fn changed(answer: Response) -> Result<Vec<usize>, CallError> {
    match answer {
        Response::Changed(n) => Ok(vec![n]),
        other => Err(refusal(other)),
    }
}

/// The error an answer that is not the one asked for carries.
pub fn refusal(answer: Response) -> CallError {
    match answer {
        Response::Failed(f) => f.error,
        other => CallError::with_kind(ErrorKind::Internal, format!("unexpected answer: {other:?}")),
    }
}
