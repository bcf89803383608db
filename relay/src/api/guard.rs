//! Who may use the HTTP port: the `Host` check (no DNS rebinding), the `Origin` check and CORS
//! (no other web page drives this relay unless `--cors-origin` names it), and the API key.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tower_http::cors::{AllowOrigin, CorsLayer};

use super::limits::HttpLimits;
use crate::openai::ApiError;

/// The allowed hosts and origins.
pub(super) struct Guard {
    any_host: bool,
    hosts: Vec<String>,
    any_origin: bool,
    origins: Vec<String>,
}

impl Guard {
    pub(super) fn new(limits: &HttpLimits) -> Guard {
        let norm =
            |v: &[String]| v.iter().map(|s| s.trim().trim_end_matches('/').to_ascii_lowercase()).collect::<Vec<_>>();
        let hosts = norm(&limits.http_allow_host);
        let origins = norm(&limits.cors_origin);
        Guard { any_host: hosts.iter().any(|h| h == "*"), hosts, any_origin: origins.iter().any(|o| o == "*"), origins }
    }

    /// Whether a request's `Host` (with or without port) names this relay: an IP address,
    /// `localhost`, or a name allowed by a flag. A DNS-rebinding page sends its own name.
    fn host_allowed(&self, host: &str) -> bool {
        if self.any_host {
            return true;
        }
        let name = host_name(host).to_ascii_lowercase();
        name.parse::<IpAddr>().is_ok()
            || name == "localhost"
            || name.ends_with(".localhost")
            || self.hosts.iter().any(|h| *h == name || host_name(h) == name)
    }

    /// Whether a request from a page of `origin` may be served: the relay's own pages (same
    /// origin as `host`) or a listed origin.
    fn origin_allowed(&self, origin: &str, host: Option<&str>) -> bool {
        let origin = origin.trim_end_matches('/').to_ascii_lowercase();
        if self.any_origin || self.origins.contains(&origin) {
            return true;
        }
        let Some(host) = host else { return false };
        let host = host.to_ascii_lowercase();
        origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://")) == Some(host.as_str())
    }
}

/// The host name of `host[:port]` (brackets of an IPv6 literal removed).
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

fn forbidden(message: String) -> Response {
    let e = ApiError { status: 403, kind: "invalid_request_error", code: Some("forbidden"), param: None, message };
    (StatusCode::FORBIDDEN, axum::Json(e.body())).into_response()
}

fn peer(req: &Request) -> String {
    req.extensions().get::<ConnectInfo<SocketAddr>>().map_or_else(|| "?".into(), |c| c.0.to_string())
}

async fn check(State(guard): State<Arc<Guard>>, req: Request, next: Next) -> Response {
    let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).map(str::to_string);
    if let Some(h) = &host {
        if !guard.host_allowed(h) {
            limited_warn!("http-host", "HTTP request from {} refused: unknown Host {h:?}", peer(&req));
            return forbidden(format!(
                "This relay does not answer to host `{h}` (start it with --http-allow-host {})",
                host_name(h)
            ));
        }
    }
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("?").to_string();
        if !guard.origin_allowed(&origin, host.as_deref()) {
            limited_warn!("http-origin", "HTTP request from {} refused: web origin {origin:?} not allowed", peer(&req));
            return forbidden(format!(
                "Pages of `{origin}` may not use this relay (start it with --cors-origin {origin})"
            ));
        }
    }
    next.run(req).await
}

/// `app` behind the Host and Origin checks, with CORS headers for the `--cors-origin` list.
pub(super) fn layer(app: Router, limits: &HttpLimits) -> Router {
    let guard = Arc::new(Guard::new(limits));
    let app = if guard.origins.is_empty() {
        app
    } else {
        let allow = if guard.any_origin {
            AllowOrigin::any()
        } else {
            AllowOrigin::list(guard.origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
        };
        app.layer(
            CorsLayer::new()
                .allow_origin(allow)
                .allow_methods([Method::GET, Method::POST])
                .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE]),
        )
    };
    app.layer(axum::middleware::from_fn_with_state(guard, check))
}

/// The token of an `Authorization: Bearer <token>` header (the scheme in any case, as HTTP
/// has it).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Whether `headers` carry `Authorization: Bearer <key>`, compared in constant time (over
/// SHA-256 digests, so the key's length does not leak either).
pub(super) fn key_matches(key: &str, headers: &HeaderMap) -> bool {
    let given = Sha256::digest(bearer(headers).unwrap_or_default().as_bytes());
    let key = Sha256::digest(key.as_bytes());
    bool::from(given.as_slice().ct_eq(key.as_slice()))
}

/// Refuses requests without the API key (when one is set).
pub(super) async fn require_key(State(key): State<Option<Arc<str>>>, req: Request, next: Next) -> Response {
    if let Some(key) = key {
        if !key_matches(&key, req.headers()) {
            limited_warn!("http-api-key", "HTTP request from {} refused: missing or wrong API key", peer(&req));
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(req).await
}

/// The account a request is charged to (`--api-keys`), set by [`require_account`].
#[derive(Clone, Debug)]
pub(super) struct AccountName(pub(super) String);

/// Refuses requests without one of the prepaid API keys, and names the key's account for
/// the handlers.
pub(super) async fn require_account(
    State(accounts): State<Arc<super::Accounts>>,
    mut req: Request,
    next: Next,
) -> Response {
    let Some(name) = bearer(req.headers()).and_then(|k| accounts.account_of(k)) else {
        limited_warn!("http-api-key", "HTTP request from {} refused: missing or unknown API key", peer(&req));
        return ApiError::unauthorized().into_response();
    };
    req.extensions_mut().insert(AccountName(name));
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(hosts: &[&str], origins: &[&str]) -> Guard {
        Guard::new(&HttpLimits {
            http_allow_host: hosts.iter().map(|s| s.to_string()).collect(),
            cors_origin: origins.iter().map(|s| s.to_string()).collect(),
            ..HttpLimits::default()
        })
    }

    #[test]
    fn hosts() {
        let g = guard(&["relay.example.org"], &[]);
        for ok in [
            "127.0.0.1:8080",
            "127.0.0.1",
            "[::1]:80",
            "localhost:8080",
            "LOCALHOST",
            "a.localhost:1",
            "relay.example.org:443",
            "10.1.2.3",
        ] {
            assert!(g.host_allowed(ok), "{ok}");
        }
        for bad in ["evil.example:8080", "evil.example", "127.0.0.1.evil.example", "localhost.evil.example"] {
            assert!(!g.host_allowed(bad), "{bad}");
        }
        assert!(guard(&["*"], &[]).host_allowed("anything.example"));
    }

    #[test]
    fn origins() {
        let g = guard(&[], &["https://chat.example.org/"]);
        assert!(g.origin_allowed("http://127.0.0.1:8080", Some("127.0.0.1:8080")));
        assert!(g.origin_allowed("https://chat.example.org", Some("127.0.0.1:8080")));
        assert!(!g.origin_allowed("http://evil.example", Some("127.0.0.1:8080")));
        assert!(!g.origin_allowed("http://127.0.0.1:9999", Some("127.0.0.1:8080")));
        assert!(!g.origin_allowed("null", Some("127.0.0.1:8080")));
        assert!(!g.origin_allowed("http://127.0.0.1:8080", None));
        assert!(guard(&[], &["*"]).origin_allowed("http://evil.example", None));
    }

    #[test]
    fn api_key() {
        let mut h = HeaderMap::new();
        assert!(!key_matches("k", &h));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer k"));
        assert!(key_matches("k", &h));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer kk"));
        assert!(!key_matches("k", &h));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("bearer k"));
        assert!(key_matches("k", &h));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic k"));
        assert!(!key_matches("k", &h));
    }
}
