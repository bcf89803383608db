//! The tab as a seeder: picks a span of blocks the swarm lacks, downloads and verifies them,
//! runs them on WebGPU with the engine's WGSL kernels, announces itself in the DHT like a
//! native server and serves sessions that reach it through the relay's circuit.
//!
//! [`serve`] starts serving; [`Seeder`] is the panel's state and its switch; [`view`] draws it.

pub mod serve;
pub mod view;

pub use serve::{open_gpu, Adapter, Seeding, Stats};
pub use view::SeedView;

use std::fmt;
use std::time::Duration;

use leptos::prelude::*;
use leptos::task::spawn_local;
use web_node::model::ModelId;

use crate::http;
use crate::swarm::{Conn, Swarm};

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
    swarm: Swarm,
    /// The running service (not `Send`: local to the page's thread).
    seeding: StoredValue<Option<Seeding>, LocalStorage>,
}

impl Seeder {
    /// The switch, off; probes the adapter, starts at once with `?seed=A..B` (once connected
    /// and a model is known), keeps the stats fresh and pauses on hiding when asked.
    pub fn new(swarm: Swarm) -> Seeder {
        let seeder = Seeder {
            state: RwSignal::new(SeedState::Off),
            message: RwSignal::new(String::new()),
            download: RwSignal::new(None),
            adapter: RwSignal::new(String::new()),
            stats: RwSignal::new(Stats::default()),
            pause_hidden: RwSignal::new(false),
            paused: RwSignal::new(false),
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
        self.state.set(SeedState::Starting);
        let want = http::query_param("seed");
        spawn_local(async move {
            let progress = move |p: String, download: Option<(u64, u64)>| {
                self.message.set(p);
                self.download.set(download);
            };
            let started = serve::start(&net, id, want.as_deref(), &progress).await;
            self.download.set(None);
            match started {
                Ok(s) => {
                    self.message.set(format!("Serving blocks {}..{} at {}", s.blocks.start, s.blocks.end, s.addr));
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
        if let Some(s) = self.seeding.try_update_value(Option::take).flatten() {
            s.stop();
        }
        if self.state.get_untracked() == SeedState::Serving {
            self.state.set(SeedState::Off);
            self.message.set("Withdrawn from the swarm.".into());
        }
    }

    /// `?seed=A..B`: turns on once connected and a model is known.
    fn start_from_page(self) {
        let auto = RwSignal::new(http::query_param("seed").is_some());
        Effect::new(move |_| {
            if auto.get() && self.swarm.conn.with(Conn::is_connected) && self.swarm.selected.with(Option::is_some) {
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
