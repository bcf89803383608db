//! The HTTP port's limits, each a flag of `ait relay` with a safe default.

use std::time::Duration;

/// Limits of the HTTP port (the API and the browser routes). `Default` gives the flags'
/// defaults.
#[derive(Clone, Debug, clap::Args)]
pub struct HttpLimits {
    /// Seconds a client has to send a request's headers; also how long an idle keep-alive
    /// connection stays open.
    #[arg(long, value_name = "SECS", default_value_t = HttpLimits::DEFAULT.http_header_timeout)]
    pub http_header_timeout: u64,
    /// Seconds a client has to send a whole request body.
    #[arg(long, value_name = "SECS", default_value_t = HttpLimits::DEFAULT.http_body_timeout)]
    pub http_body_timeout: u64,
    /// Seconds a client may leave response bytes unread before its connection is closed.
    #[arg(long, value_name = "SECS", default_value_t = HttpLimits::DEFAULT.http_write_timeout)]
    pub http_write_timeout: u64,
    /// Open HTTP connections in all; more are answered 503 and closed.
    #[arg(long, value_name = "N", default_value_t = HttpLimits::DEFAULT.http_max_connections)]
    pub http_max_connections: usize,
    /// Open HTTP connections per client IP address; more are answered 503 and closed.
    #[arg(long, value_name = "N", default_value_t = HttpLimits::DEFAULT.http_max_connections_per_ip)]
    pub http_max_connections_per_ip: usize,
    /// Largest request body in bytes (larger ones get 413).
    #[arg(long, value_name = "BYTES", default_value_t = HttpLimits::DEFAULT.http_max_body)]
    pub http_max_body: usize,
    /// API requests that may wait for a free slot (beyond --api-concurrency); more are refused
    /// at once with 429.
    #[arg(long, value_name = "N", default_value_t = HttpLimits::DEFAULT.api_queue)]
    pub api_queue: usize,
    /// `max_tokens` of a chat request that gives none.
    #[arg(long, value_name = "N", default_value_t = HttpLimits::DEFAULT.api_default_max_tokens)]
    pub api_default_max_tokens: usize,
    /// Most tokens one API request may generate (a larger `max_tokens` is lowered to this).
    #[arg(long, value_name = "N", default_value_t = HttpLimits::DEFAULT.api_max_tokens)]
    pub api_max_tokens: usize,
    /// Another host name this relay answers to (repeatable; `*` allows any). IP addresses,
    /// `localhost` and `*.localhost` are always allowed; requests naming another host are
    /// refused, which stops DNS rebinding.
    #[arg(long, value_name = "HOST")]
    pub http_allow_host: Vec<String>,
    /// A web origin (e.g. `https://chat.example.org`) whose pages may call this relay's HTTP
    /// routes (repeatable; `*` allows any). Pages the relay serves itself need none.
    #[arg(long, value_name = "ORIGIN")]
    pub cors_origin: Vec<String>,
}

impl HttpLimits {
    /// The defaults.
    pub const DEFAULT: HttpLimits = HttpLimits {
        http_header_timeout: 10,
        http_body_timeout: 30,
        http_write_timeout: 60,
        http_max_connections: 256,
        http_max_connections_per_ip: 64,
        http_max_body: 1 << 20,
        api_queue: 64,
        api_default_max_tokens: 256,
        api_max_tokens: 2048,
        http_allow_host: Vec::new(),
        cors_origin: Vec::new(),
    };

    /// `--http-header-timeout` as a duration (at least 1 s).
    pub fn header_timeout(&self) -> Duration {
        Duration::from_secs(self.http_header_timeout.max(1))
    }

    /// `--http-body-timeout` as a duration (at least 1 s).
    pub fn body_timeout(&self) -> Duration {
        Duration::from_secs(self.http_body_timeout.max(1))
    }

    /// `--http-write-timeout` as a duration (at least 1 s).
    pub fn write_timeout(&self) -> Duration {
        Duration::from_secs(self.http_write_timeout.max(1))
    }
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits::DEFAULT
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Args, FromArgMatches};

    #[test]
    fn flag_defaults_match_default() {
        let cmd = HttpLimits::augment_args(clap::Command::new("t"));
        let parsed = HttpLimits::from_arg_matches(&cmd.get_matches_from(["t"])).expect("parses");
        assert_eq!(format!("{parsed:?}"), format!("{:?}", HttpLimits::default()));
    }
}
