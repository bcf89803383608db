//! Rate-limited logging: a flood of refused peers must not become a flood of log lines.
//!
//! A [`LogLimit`] lets through at most one line per kind of event per interval and counts the
//! lines it held back, so the next line that passes says how many were dropped.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use web_time::Instant;

/// Lets at most one log line per kind through per interval.
pub struct LogLimit {
    every: Duration,
    last: Mutex<HashMap<&'static str, (Instant, u64)>>,
}

impl LogLimit {
    /// At most one line per kind every `every`.
    pub fn new(every: Duration) -> LogLimit {
        LogLimit { every, last: Mutex::new(HashMap::new()) }
    }

    /// Whether a line of `kind` may be logged now; `Some(n)` with the number of lines of
    /// that kind held back since the last one that passed.
    pub fn allow(&self, kind: &'static str) -> Option<u64> {
        let now = Instant::now();
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        match last.get_mut(kind) {
            Some((at, held)) if now.duration_since(*at) < self.every => {
                *held += 1;
                None
            }
            Some((at, held)) => {
                let n = *held;
                *at = now;
                *held = 0;
                Some(n)
            }
            None => {
                last.insert(kind, (now, 0));
                Some(0)
            }
        }
    }
}

/// Logs a warning through a [`LogLimit`]: `limited_warn!(limit, "kind", "message {}", x)`.
#[macro_export]
macro_rules! limited_warn {
    ($limit:expr, $kind:expr, $($arg:tt)+) => {
        if let Some(held) = $limit.allow($kind) {
            if held > 0 {
                tracing::warn!(held_back = held, $($arg)+);
            } else {
                tracing::warn!($($arg)+);
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_kind_per_interval_and_a_count_of_the_rest() {
        let l = LogLimit::new(Duration::from_millis(200));
        assert_eq!(l.allow("a"), Some(0));
        assert_eq!(l.allow("a"), None);
        assert_eq!(l.allow("a"), None);
        assert_eq!(l.allow("b"), Some(0), "kinds are limited apart");
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(l.allow("a"), Some(2));
    }
}
