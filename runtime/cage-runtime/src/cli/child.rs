//! Stopping a `cage` process this command started: SIGTERM (a graceful stop, so queued work
//! is left consistent and the last logs are flushed), then SIGKILL if it takes too long.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// Stops `child`, waiting up to `grace` for it to exit after SIGTERM.
pub fn terminate(child: &mut Child, grace: Duration) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}
