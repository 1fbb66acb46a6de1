//! How a worker process died, told from its wait status and its last words on stderr: a pure
//! function, so every way of dying is unit-tested without killing anything.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

/// How a worker ended, as an operator reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Death {
    /// The signal that ended it (`SIGSEGV`), if one did.
    pub signal: Option<&'static str>,
    /// Its exit code, if it exited.
    pub code: Option<i32>,
    /// What its last words say happened (`stack overflow`, `out of memory`), if they say.
    pub cause: Option<&'static str>,
}

/// The name of signal `n`, as `kill -l` prints it with its `SIG` prefix.
pub fn signal_name(n: i32) -> &'static str {
    match n {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGSYS => "SIGSYS",
        _ => "a signal",
    }
}

/// What the last lines a process wrote to stderr say killed it.
fn cause(last_words: &[String]) -> Option<&'static str> {
    last_words.iter().rev().find_map(|line| {
        if line.contains("has overflowed its stack") {
            Some("stack overflow")
        } else if line.contains("memory allocation of") && line.contains("failed") {
            Some("out of memory")
        } else {
            None
        }
    })
}

impl Death {
    /// The death `status` and `last_words` tell of.
    pub fn of(status: ExitStatus, last_words: &[String]) -> Death {
        Death {
            signal: status.signal().map(signal_name),
            code: status.code(),
            cause: cause(last_words),
        }
    }

    /// A short label for metrics: the cause if known, else the signal, else `exit_N`.
    pub fn reason(&self) -> String {
        match (self.cause, self.signal, self.code) {
            (Some(cause), _, _) => cause.replace(' ', "_"),
            (None, Some(signal), _) => signal.to_owned(),
            (None, None, Some(code)) => format!("exit_{code}"),
            (None, None, None) => "unknown".to_owned(),
        }
    }
}

impl std::fmt::Display for Death {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.signal, self.code) {
            (Some(signal), _) => f.write_str(signal)?,
            (None, Some(code)) => write!(f, "exited with code {code}")?,
            (None, None) => f.write_str("ended")?,
        }
        if let Some(cause) = self.cause {
            write!(f, ", {cause}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signalled(n: i32) -> ExitStatus {
        ExitStatus::from_raw(n)
    }

    fn exited(code: i32) -> ExitStatus {
        ExitStatus::from_raw(code << 8)
    }

    #[test]
    fn signals_codes_and_last_words_name_the_death() {
        let none: Vec<String> = Vec::new();
        let segv = Death::of(signalled(libc::SIGSEGV), &none);
        assert_eq!(segv.to_string(), "SIGSEGV");
        assert_eq!(segv.reason(), "SIGSEGV");
        let words = vec![
            "some log".to_owned(),
            "thread 'main' has overflowed its stack".to_owned(),
            "fatal runtime error: stack overflow".to_owned(),
        ];
        let overflow = Death::of(signalled(libc::SIGABRT), &words);
        assert_eq!(overflow.to_string(), "SIGABRT, stack overflow");
        assert_eq!(overflow.reason(), "stack_overflow");
        let oom = Death::of(
            signalled(libc::SIGABRT),
            &["memory allocation of 16777216 bytes failed".to_owned()],
        );
        assert_eq!(oom.to_string(), "SIGABRT, out of memory");
        let exit = Death::of(exited(3), &none);
        assert_eq!(exit.to_string(), "exited with code 3");
        assert_eq!(exit.reason(), "exit_3");
        assert_eq!(
            Death::of(signalled(libc::SIGKILL), &none).to_string(),
            "SIGKILL"
        );
    }
}
