//! The Creator view: for each model the swarm serves, what it earned its creator, from the
//! settlement chain's data (`GET /ait/models/{id}/earnings` on the relay, see
//! `relay::settle::royalties`): who registered it and where its royalties go, the paid
//! sessions, the tokens that went through it, what they paid and the royalties. Refreshed
//! every [`REFRESH`] while the Publish panel is shown; a relay without a chain shows none.

use std::time::Duration;

use alloy_primitives::{Address, U256};
use leptos::prelude::*;
use leptos::task::spawn_local;
use serde::Deserialize;
use web_node::settle::format_ait;

use crate::error::AppError;
use crate::http;
use crate::swarm::Swarm;
use crate::wallet::Wallet;
use crate::Tab;

/// How often the numbers are read again.
const REFRESH: Duration = Duration::from_secs(10);

/// What the relay says a model earned (amounts in AIT's smallest unit, as decimal text).
#[derive(Clone, Debug, PartialEq, Deserialize)]
struct Earnings {
    model: String,
    creator: Address,
    payout: Address,
    royalty_bps: u16,
    sessions: u64,
    work: String,
    paid: String,
    royalties: String,
}

/// One line of the view.
#[derive(Clone, Debug, PartialEq)]
struct Row {
    name: String,
    earnings: Earnings,
    /// Tokens through the model: the layer-tokens over its layers.
    tokens: U256,
}

fn amount(text: &str) -> U256 {
    text.parse().unwrap_or_default()
}

/// Reads every model's earnings; `None` when the relay has no chain.
async fn read(swarm: Swarm) -> Result<Option<Vec<Row>>, AppError> {
    let models = swarm.models.get_untracked();
    let mut rows = Vec::with_capacity(models.len());
    for m in models {
        let earnings: Earnings = match http::json(&format!("/ait/models/{}/earnings", m.id)).await {
            Ok(e) => e,
            Err(AppError::Status { status: 404, .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let tokens = amount(&earnings.work) / U256::from(m.n_layers.max(1));
        rows.push(Row { name: m.name, earnings, tokens });
    }
    Ok(Some(rows))
}

/// The Creator view.
#[component]
pub fn CreatorView() -> impl IntoView {
    let (swarm, wallet) = (expect_context::<Swarm>(), expect_context::<Wallet>());
    let tab = expect_context::<RwSignal<Tab>>();
    let rows = RwSignal::new(Vec::<Row>::new());
    let line = RwSignal::new("Reading the chain…".to_string());
    spawn_local(async move {
        loop {
            // Only while the Publish panel is shown.
            if tab.get_untracked() != Tab::Publish {
                futures_timer::Delay::new(Duration::from_secs(1)).await;
                continue;
            }
            match read(swarm).await {
                Ok(Some(r)) => {
                    line.set(if r.is_empty() { "No model announced yet.".into() } else { String::new() });
                    rows.set(r);
                }
                Ok(None) => {
                    line.set(
                        "This relay runs without a settlement chain: nothing is paid, so nothing is earned.".into(),
                    );
                    return;
                }
                Err(e) => line.set(e.to_string()),
            }
            futures_timer::Delay::new(REFRESH).await;
        }
    });
    let mine = move |payout: Address| wallet.address.get() == Some(payout);
    view! {
        <div class="creator">
            <h3>"Creator earnings"</h3>
            <p>"What each model the swarm serves earned its creator, from the chain: a route opens one paid \
                session per server, tokens are the layer-tokens paid for over the model's layers, royalties \
                are the creator's share of every payment (models not registered pay theirs to the DAO)."</p>
            <p id="creator-line">{move || line.get()}</p>
            <table id="creator-earnings">
                <tr><th>"Model"</th><th>"Royalties to"</th><th>"Sessions"</th><th>"Tokens"</th><th>"Paid (AIT)"</th><th>"Royalties (AIT)"</th></tr>
                {move || rows.get().into_iter().map(|r| {
                    let e = r.earnings;
                    let to = match e.creator.is_zero() {
                        true => "not registered".to_string(),
                        false => format!("{} ({}%)", e.payout, f64::from(e.royalty_bps) / 100.0),
                    };
                    view! {
                        <tr data-model=e.model.clone() data-sessions=e.sessions.to_string()
                            data-tokens=r.tokens.to_string() data-paid=e.paid.clone() data-royalties=e.royalties.clone()
                            class:mine=move || mine(e.payout)>
                            <td>{r.name}</td><td class="addr">{to}</td><td>{e.sessions}</td><td>{r.tokens.to_string()}</td>
                            <td>{format_ait(amount(&e.paid))}</td><td>{format_ait(amount(&e.royalties))}</td>
                        </tr>
                    }
                }).collect_view()}
            </table>
        </div>
    }
}
