//! The tab as a seeder: picks a span of blocks the swarm lacks, downloads and verifies them,
//! runs them on WebGPU with the engine's WGSL kernels, announces itself in the DHT like a
//! native server and serves sessions that reach it through the relay's circuit.
//!
//! With a price and a connected wallet the tab charges for its work ([`earn`]): the panel
//! shows its earnings and redeems and spends them.
//!
//! [`serve`] starts serving; [`Seeder`] is the panel's state and its switch; [`view`] draws it.

pub mod earn;
pub mod serve;
pub mod view;

pub use earn::{Charging, Earnings};
pub use serve::{open_gpu, Adapter, Seeding, Stats};
pub use view::SeedView;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use leptos::prelude::*;
use leptos::task::spawn_local;
use web_node::model::ModelId;

use crate::http;
use crate::swarm::{Conn, Swarm};
use crate::wallet::Wallet;

/// How often a charging tab's earnings are read again while the Seed panel is shown.
pub const EARNINGS_EVERY: Duration = Duration::from_secs(10);

/// Where seeding is. `Display` is the `data-state` of `#seed-state`: `off`, `starting`,
/// `serving` or `error`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeedState {
    /// Not serving.
    Off,
    /// Loading blocks, measuring, reserving.
    Starting,
    /// Serving blocks.
    Serving,
    /// Could not start (the message says why).
    Failed,
}

impl SeedState {
    /// Whether the switch is on.
    pub fn is_on(self) -> bool {
        matches!(self, SeedState::Starting | SeedState::Serving)
    }
}

impl fmt::Display for SeedState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SeedState::Off => "off",
            SeedState::Starting => "starting",
            SeedState::Serving => "serving",
            SeedState::Failed => "error",
        })
    }
}

/// The seed panel's state and actions. Copy: provided as context to its components.
#[derive(Clone, Copy)]
pub struct Seeder {
    /// Where seeding is.
    pub state: RwSignal<SeedState>,
    /// Progress, address served at, or error line.
    pub message: RwSignal<String>,
    /// A download's bytes done and in all, while one runs.
    pub download: RwSignal<Option<(u64, u64)>>,
    /// The adapter line (or why there is no WebGPU).
    pub adapter: RwSignal<String>,
    /// Live numbers, every second.
    pub stats: RwSignal<Stats>,
    /// Pause while the tab is hidden.
    pub pause_hidden: RwSignal<bool>,
    /// Paused because the tab is hidden.
    paused: RwSignal<bool>,
    /// The price asked per layer-token, in AIT (empty: serve free); `?price=` fills it.
    pub price: RwSignal<String>,
    /// A charging tab's earnings, as last read.
    pub earnings: RwSignal<Option<Earnings>>,
    /// What the last redeem or spend said, and whether it failed.
    pub earn_message: RwSignal<(String, bool)>,
    /// The gate, ledger and chain of the tab's charging (kept after it stops serving, to
    /// redeem what it earned).
    charging: StoredValue<Option<Arc<Charging>>, LocalStorage>,
    wallet: Wallet,
    swarm: Swarm,
    /// The running service (not `Send`: local to the page's thread).
    seeding: StoredValue<Option<Seeding>, LocalStorage>,
}

impl Seeder {
    /// The switch, off; probes the adapter, starts at once with `?seed=A..B` (once connected
    /// and a model is known), keeps the stats fresh and pauses on hiding when asked.
    pub fn new(swarm: Swarm, wallet: Wallet) -> Seeder {
        let seeder = Seeder {
            state: RwSignal::new(SeedState::Off),
            message: RwSignal::new(String::new()),
            download: RwSignal::new(None),
            adapter: RwSignal::new(String::new()),
            stats: RwSignal::new(Stats::default()),
            pause_hidden: RwSignal::new(false),
            paused: RwSignal::new(false),
            price: RwSignal::new(http::query_param("price").unwrap_or_default()),
            earnings: RwSignal::new(None),
            earn_message: RwSignal::new((String::new(), false)),
            charging: StoredValue::new_local(None),
            wallet,
            swarm,
            seeding: StoredValue::new_local(None),
        };
        spawn_local(async move {
            seeder.adapter.set(match open_gpu().await {
                Ok((_, a)) => a.line(),
                Err(e) => e.to_string(),
            })
        });
        seeder.start_from_page();
        seeder.tick_stats();
        seeder.pause_when_hidden();
        seeder
    }

    /// Turns seeding on: the blocks of `?seed=`, or those the swarm lacks.
    pub fn turn_on(self) {
        if self.state.get_untracked().is_on() {
            return;
        }
        let Some(net) = self.swarm.net() else {
            self.message.set("Not connected to the swarm yet.".into());
            return;
        };
        let Some(id) = self.swarm.selected.get_untracked().and_then(|h| ModelId::from_hex(&h)) else {
            self.message.set("No model to serve yet.".into());
            return;
        };
        let price = self.price.get_untracked();
        let charge = match price.trim() {
            "" => None,
            p => match web_node::settle::parse_ait(p) {
                Ok(price) if self.wallet.connected().is_ok() => Some((self.wallet, price)),
                Ok(_) => {
                    self.message
                        .set("Connect a wallet (Wallet panel) to charge, or clear the price to serve free.".into());
                    return;
                }
                Err(e) => {
                    self.message.set(format!("The price: {e}"));
                    return;
                }
            },
        };
        self.state.set(SeedState::Starting);
        let want = http::query_param("seed");
        spawn_local(async move {
            let progress = move |p: String, download: Option<(u64, u64)>| {
                self.message.set(p);
                self.download.set(download);
            };
            let started = serve::start(&net, id, want.as_deref(), charge, &progress).await;
            self.download.set(None);
            match started {
                Ok(s) => {
                    let charging = match (&s.charging, charge) {
                        (Some(_), Some((_, price))) => {
                            format!(", charging {} AIT per layer-token,", web_node::settle::format_ait(price))
                        }
                        _ => String::new(),
                    };
                    self.message
                        .set(format!("Serving blocks {}..{}{charging} at {}", s.blocks.start, s.blocks.end, s.addr));
                    if s.charging.is_some() {
                        self.charging.set_value(s.charging.clone());
                        self.refresh_earnings();
                    }
                    let spawn: web_node::net::serve::in_process::Spawn = Arc::new(|f| spawn_local(f));
                    let local = web_node::net::serve::InProcess::new(s.server.clone(), spawn);
                    self.swarm.set_local_server(Some(Arc::new(local)));
                    self.seeding.set_value(Some(s));
                    self.state.set(SeedState::Serving);
                }
                Err(e) => {
                    self.message.set(e.to_string());
                    self.state.set(SeedState::Failed);
                }
            }
        });
    }

    /// Withdraws the tab from the swarm.
    pub fn turn_off(self) {
        self.swarm.set_local_server(None);
        if let Some(s) = self.seeding.try_update_value(Option::take).flatten() {
            s.stop();
        }
        if self.state.get_untracked() == SeedState::Serving {
            self.state.set(SeedState::Off);
            self.message.set("Withdrawn from the swarm.".into());
        }
    }

    /// `?seed=A..B`: turns on once connected and a model is known (and, with `?price=`, once a
    /// wallet is connected to be paid).
    fn start_from_page(self) {
        let auto = RwSignal::new(http::query_param("seed").is_some());
        let paid = !self.price.get_untracked().trim().is_empty();
        Effect::new(move |_| {
            let wallet_ready =
                !paid || (self.wallet.address.with(Option::is_some) && self.wallet.chain.with(Option::is_some));
            if auto.get()
                && wallet_ready
                && self.swarm.conn.with(Conn::is_connected)
                && self.swarm.selected.with(Option::is_some)
            {
                auto.set(false);
                self.turn_on();
            }
        });
    }

    /// Reads the live numbers every second (for the page's life).
    fn tick_stats(self) {
        let tick = move || {
            let stats = self.seeding.try_update_value(|s| s.as_mut().map(Seeding::stats)).flatten();
            self.stats.set(stats.unwrap_or_default());
        };
        if let Err(e) = set_interval_with_handle(tick, Duration::from_secs(1)) {
            tracing::warn!("no stats timer: {e:?}");
        }
    }

    /// Reads a charging tab's earnings again (the ledger and the chain), in the background.
    pub fn refresh_earnings(self) {
        spawn_local(self.read_earnings());
    }

    /// Reads a charging tab's earnings (nothing when it has not charged).
    pub async fn read_earnings(self) {
        let Some(c) = self.charging.get_value() else { return };
        match c.earnings().await {
            Ok(e) => self.earnings.set(Some(e)),
            Err(e) => tracing::warn!("reading the earnings: {e}"),
        }
    }

    /// Runs a step on the tab's earnings (redeem, spend), then reads them again.
    fn earn_step<F>(self, step: impl FnOnce(Arc<Charging>) -> F + 'static)
    where
        F: std::future::Future<Output = Result<String, crate::error::AppError>> + 'static,
    {
        let Some(c) = self.charging.get_value() else {
            self.earn_message.set(("This tab has not charged for anything yet.".into(), true));
            return;
        };
        self.earn_message.set(("Waiting for the wallet…".into(), false));
        spawn_local(async move {
            let result = step(c).await;
            self.earn_message.set(match result {
                Ok(m) => (m, false),
                Err(e) => (e.to_string(), true),
            });
            self.refresh_earnings();
        });
    }

    /// Redeems the vouchers the tab holds (wallet transactions).
    pub fn redeem(self) {
        self.earn_step(|c| async move { c.redeem().await });
    }

    /// Moves what the tab earned into its deposit, to pay for its own chats.
    pub fn spend_earned(self) {
        let wallet = self.wallet;
        self.earn_step(move |c| async move {
            let amount = c.spend_earned().await?;
            wallet.refresh().await?;
            Ok(format!(
                "{} AIT of earnings are now your deposit: authorize a session key in the Wallet panel to chat with them.",
                web_node::settle::format_ait(amount)
            ))
        });
    }

    /// Withdraws while the tab is hidden and comes back when it is shown, if asked to.
    fn pause_when_hidden(self) {
        let Some(doc) = web_sys::window().and_then(|w| w.document()) else {
            return;
        };
        let d = doc.clone();
        let handler = wasm_bindgen::closure::Closure::<dyn FnMut()>::new(move || self.visibility_changed(d.hidden()));
        let _ = doc.add_event_listener_with_callback(
            "visibilitychange",
            wasm_bindgen::JsCast::unchecked_ref(handler.as_ref()),
        );
        // The listener lives as long as the page.
        handler.forget();
    }

    fn visibility_changed(self, hidden: bool) {
        if !self.pause_hidden.get_untracked() {
            return;
        }
        if hidden && self.state.get_untracked() == SeedState::Serving {
            self.turn_off();
            self.paused.set(true);
            self.message.set("Paused while the tab is hidden.".into());
        } else if !hidden && self.paused.get_untracked() {
            self.paused.set(false);
            self.turn_on();
        }
    }
}
