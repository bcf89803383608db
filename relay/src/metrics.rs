//! `GET /metrics` on the relay's HTTP port: Prometheus text from the `metrics` facade
//! (`metrics-exporter-prometheus`). Counters the relay keeps as it goes (redeem rounds and
//! failures, vouchers redeemed) are recorded where they happen; the rest is read at scrape
//! time: the session server's counters and load, and the voucher ledger's pending vouchers.

use std::sync::{Arc, OnceLock};

use axum::extract::State;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use web_node::net::serve::Server;

use crate::settle::Ledger;

/// What `/metrics` reads at scrape time.
#[derive(Clone, Default)]
pub struct MetricsState {
    /// The session server, when this relay serves blocks.
    pub server: Option<Arc<Server>>,
    /// The voucher ledger, when this relay charges.
    pub ledger: Option<Arc<Ledger>>,
}

/// The process's recorder, installed on first use.
fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        // Only fails when another recorder was installed first; then this one's handle
        // renders nothing of the counters recorded elsewhere, which the scrape would show.
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics shows only scrape-time values");
        }
        handle
    })
}

/// Installs the recorder, so counters recorded before the first scrape are kept.
pub fn install() {
    handle();
}

/// The `/metrics` route.
pub fn router(state: MetricsState) -> Router {
    install();
    Router::new().route("/metrics", get(render)).with_state(Arc::new(state))
}

async fn render(State(s): State<Arc<MetricsState>>) -> String {
    if let Some(server) = &s.server {
        let model = server.config().model.to_hex();
        let stats = &server.stats;
        let load = std::sync::atomic::Ordering::Relaxed;
        let status = server.status();
        metrics::gauge!("ait_sessions_opened_total").set(stats.sessions.load(load) as f64);
        metrics::gauge!("ait_tokens_served_total", "model" => model.clone()).set(stats.tokens.load(load) as f64);
        metrics::gauge!("ait_streams_refused_total").set(stats.refused.load(load) as f64);
        metrics::gauge!("ait_sessions_active").set(status.active_sessions as f64);
        metrics::gauge!("ait_session_slots_free").set(status.free_slots as f64);
        if let Some(queued) = status.queued {
            metrics::gauge!("ait_session_queue_length").set(queued as f64);
        }
    }
    if let Some(ledger) = &s.ledger {
        let ledger = ledger.clone();
        let entries = tokio::task::spawn_blocking(move || ledger.entries()).await;
        match entries {
            Ok(Ok(entries)) => {
                let pending = entries.iter().filter(|e| !e.outstanding().is_zero()).count();
                let owed = entries.iter().fold(alloy::primitives::U256::ZERO, |a, e| a.saturating_add(e.outstanding()));
                metrics::gauge!("ait_vouchers_pending").set(pending as f64);
                metrics::gauge!("ait_vouchers_pending_ait").set(web_node::settle::ait_f64(owed));
            }
            Ok(Err(e)) => tracing::warn!("reading the ledger for /metrics: {e}"),
            Err(e) => tracing::warn!("reading the ledger for /metrics: {e}"),
        }
    }
    handle().render()
}
