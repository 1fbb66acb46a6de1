//! Rates as a file gives them: `"50/s"`, `"300/m"`, `"1000/h"` (a queue's `rate_limit`).

use std::fmt;
use std::time::Duration;

/// A number of events per period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Events in each period (at least one).
    pub count: u32,
    /// The period: a second, a minute or an hour.
    pub per: Duration,
}

/// What a rate must look like, for messages.
pub const RATE_FORM: &str = "a rate such as \"50/s\", \"300/m\" or \"1000/h\" (a whole number \
    above zero, per second, minute or hour)";

impl Rate {
    /// Reads `"N/s"`, `"N/m"` or `"N/h"`; `None` for anything else, a zero count among it.
    pub fn parse(text: &str) -> Option<Rate> {
        let (count, unit) = text.trim().split_once('/')?;
        let count: u32 = count.trim().parse().ok().filter(|n| *n > 0)?;
        let per = match unit.trim() {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            _ => return None,
        };
        Some(Rate { count, per })
    }

    /// The time between two events at this rate.
    pub fn interval(&self) -> Duration {
        self.per / self.count
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.per.as_secs() {
            1 => "s",
            60 => "m",
            _ => "h",
        };
        write!(f, "{}/{unit}", self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_read_and_print_as_written() {
        for text in ["50/s", "300/m", "1000/h", "1/s"] {
            assert_eq!(Rate::parse(text).unwrap().to_string(), text);
        }
        assert_eq!(
            Rate::parse(" 20 / s ").unwrap().interval(),
            Duration::from_millis(50)
        );
        for bad in ["fast", "0/s", "-1/s", "5", "5/d", "1.5/s", "/s", "5/"] {
            assert_eq!(Rate::parse(bad), None, "{bad}");
        }
    }
}
