//! The tab as a seeder: picks a span of blocks the swarm lacks, downloads and verifies them,
//! runs them on WebGPU with the engine's WGSL kernels, announces itself in the DHT like a
//! native server and serves sessions that reach it through the relay's circuit.

use std::ops::Range;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures::channel::oneshot;
use futures::future::{select, Either, FutureExt, Shared};
use futures::StreamExt;
use libp2p::multiaddr::Protocol;
use wasm_bindgen_futures::spawn_local;
use web_node::engine::gpu::{GpuBackend, GpuContext};
use web_node::engine::{Backend, BlockExecutor, ExecutorConfig};
use web_node::model::{Manifest, ModelId};
use web_node::net::announce::{announce, directory};
use web_node::net::protocol::PROTOCOL;
use web_node::net::routing::least_covered_span;
use web_node::net::serve::{compute_channel, run_compute, ServeConfig, Server};

use crate::net::{self, Net};

/// The adapter a tab would seed with.
#[derive(Clone, Debug, PartialEq)]
pub struct Adapter {
    /// Adapter name.
    pub name: String,
    /// Largest storage buffer binding, bytes.
    pub max_binding: u64,
    /// Largest buffer, bytes.
    pub max_buffer: u64,
}

/// Opens WebGPU, or says why it cannot.
pub async fn open_gpu() -> Result<(Arc<GpuContext>, Adapter), String> {
    if !crate::has_webgpu() {
        return Err("WebGPU is not available in this browser: this tab can chat but not seed.".into());
    }
    let ctx = GpuContext::new()
        .await
        .map_err(|e| format!("WebGPU is not available in this browser ({e}): this tab can chat but not seed."))?;
    let info = ctx.adapter_info();
    let l = ctx.limits();
    let name = if info.name.is_empty() { format!("{} ({})", info.device_type, info.backend) } else { info.name };
    let adapter =
        Adapter { name, max_binding: l.max_storage_buffer_binding_size as u64, max_buffer: l.max_buffer_size };
    Ok((ctx, adapter))
}

/// Bytes the weights of one block take, assuming at most 1 byte per weight.
fn block_bytes(m: &Manifest) -> u64 {
    let h = m.hidden as u64;
    let q = (m.n_heads * m.head_dim) as u64;
    let kv = (m.n_kv_heads * m.head_dim) as u64;
    h * q * 2 + h * kv * 2 + 3 * h * m.intermediate as u64
}

/// Parses `A..B`.
pub fn parse_span(s: &str) -> Option<Range<usize>> {
    let (a, b) = s.split_once("..")?;
    Some(a.trim().parse().ok()?..b.trim().parse().ok()?)
}

/// A tab serving blocks. Dropping it (or [`Seeding::stop`]) withdraws the tab: the DHT
/// records stop, new sessions are refused, and the GPU memory is released.
pub struct Seeding {
    /// Blocks served.
    pub blocks: Range<usize>,
    /// The session server (stats, status).
    pub server: Arc<Server>,
    /// When serving began.
    pub started: web_time::Instant,
    /// The circuit address others dial.
    pub addr: String,
    _stop: oneshot::Sender<()>,
}

impl Seeding {
    /// Withdraws the tab from the swarm.
    pub fn stop(self) {}
}

/// Median time of one decode step per block, in ms.
async fn measure<B: Backend>(executor: &mut BlockExecutor<B>) -> Result<f64, String> {
    let dim = executor.backend().config().hidden;
    let n = executor.layers().len() as f64;
    let id = executor.open_session(16).map_err(|e| e.to_string())?;
    let x: Vec<f32> = (0..dim).map(|i| ((i % 7) as f32 - 3.0) * 0.01).collect();
    let mut times = Vec::new();
    for _ in 0..5 {
        let t = web_time::Instant::now();
        executor.step(id, &x, 1).await.map_err(|e| e.to_string())?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let _ = executor.close_session(id);
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2] / n)
}

/// Progress of [`start`], for the page.
pub type Progress<'a> = &'a dyn Fn(String);

/// Starts seeding model `id` on this tab.
pub async fn start(
    net: &Rc<Net>,
    id: ModelId,
    want: Option<Range<usize>>,
    progress: Progress<'_>,
) -> Result<Seeding, String> {
    progress("Opening WebGPU…".into());
    let (ctx, adapter) = open_gpu().await?;
    let manifest: Manifest = net::manifest(&id).await?;
    progress("Finding the blocks the swarm lacks…".into());
    let mut cover = vec![0usize; manifest.n_layers];
    if want.is_none() {
        for r in directory(&net.handle, Duration::from_secs(5)).await.unwrap_or_default() {
            if r.status.model == id.to_hex() {
                for b in r.status.start..r.status.end.min(cover.len()) {
                    cover[b] += 1;
                }
            }
        }
    }
    // WebGPU does not say how much memory the adapter has: take the largest buffer it allows
    // (and at most a quarter of the machine's memory when the browser tells it) as the budget.
    let device_gib = web_sys::window()
        .and_then(|w| js_sys::Reflect::get(&w.navigator(), &"deviceMemory".into()).ok())
        .and_then(|v| v.as_f64())
        .unwrap_or(4.0);
    let budget = adapter.max_buffer.min((device_gib * (1u64 << 30) as f64 / 4.0) as u64);
    let max_blocks = (budget / block_bytes(&manifest).max(1)).min(10) as usize;
    if max_blocks == 0 {
        return Err(format!("{} has too little memory for one block ({} MB budget)", adapter.name, budget >> 20));
    }
    let blocks = least_covered_span(&cover, max_blocks, want)?;

    let mut layers = Vec::new();
    let mut config = None;
    let mut warning = None;
    for (k, i) in blocks.clone().enumerate() {
        let what = format!("Loading block {i} ({}/{})", k + 1, blocks.len());
        let ((c, w), warn) = net::load_block(&manifest, i, |done, total| {
            progress(format!("{what}: {:.1} / {:.1} MB", done as f64 / 1e6, total as f64 / 1e6))
        })
        .await?;
        config = Some(c);
        layers.push(w);
        warning = warning.or(warn);
    }
    let config = config.ok_or("no blocks chosen")?;
    progress("Uploading the blocks to the GPU…".into());
    let backend = GpuBackend::new(ctx, config.clone(), blocks.clone(), &layers)
        .map_err(|e| format!("{} cannot hold blocks {}..{}: {e}", adapter.name, blocks.start, blocks.end))?;
    drop(layers);
    let mut executor = BlockExecutor::new(backend, ExecutorConfig::default().with_max_sessions(8));
    progress("Measuring…".into());
    let ms = measure(&mut executor).await?;

    let kv_bytes = (blocks.len() * config.kv_dim() * 2 * 4) as u64;
    let mut sc = ServeConfig::new(id, blocks.clone(), "webgpu", config.max_seq_len, kv_bytes);
    sc.ms_per_block = ms;
    sc.max_sessions = 8;
    sc.kv_budget = 512 << 20;
    let executor = BlockExecutor::new(
        executor.into_backend(),
        ExecutorConfig::default().with_max_sessions(8).with_idle_timeout(sc.idle_timeout * 2),
    );
    let (compute, jobs) = compute_channel();
    spawn_local(run_compute(executor, jobs));
    let server = Arc::new(Server::new(sc, compute));

    progress("Reserving a slot on the relay…".into());
    let addr = reserve(net).await?;
    let mut incoming = net.handle.control().accept(PROTOCOL).map_err(|_| "this tab is already serving".to_string())?;
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let stop: Shared<_> = stop_rx.map(|_| ()).shared();
    let (s, st) = (server.clone(), stop.clone());
    spawn_local(async move {
        let mut st = std::pin::pin!(st);
        while let Either::Left((Some((peer, stream)), _)) = select(incoming.next(), st.as_mut()).await {
            let s = s.clone();
            spawn_local(async move { s.serve_stream(peer, stream).await });
        }
        // Dropping `incoming` unregisters the protocol: new sessions are refused.
    });
    let (h, k, s) = (net.handle.clone(), net.key.clone(), server.clone());
    spawn_local(async move {
        if let Err(e) = announce(h, k, s, stop).await {
            tracing::warn!("announcing stopped: {e}");
        }
    });
    if let Some(w) = warning {
        progress(w);
    }
    Ok(Seeding { blocks, server, started: web_time::Instant::now(), addr, _stop: stop_tx })
}

/// Holds a circuit relay reservation on the page's relay; returns the tab's circuit address.
async fn reserve(net: &Rc<Net>) -> Result<String, String> {
    let is_circuit = |a: &libp2p::Multiaddr| a.iter().any(|p| p == Protocol::P2pCircuit);
    if let Some(a) = net.handle.addresses().await.map_err(|e| e.to_string())?.into_iter().find(is_circuit) {
        return Ok(a.to_string());
    }
    net.handle.listen_on(net.relay_addr.clone().with(Protocol::P2pCircuit)).await.map_err(|e| e.to_string())?;
    for _ in 0..100 {
        if let Some(a) = net.handle.addresses().await.map_err(|e| e.to_string())?.into_iter().find(is_circuit) {
            return Ok(a.to_string());
        }
        futures_timer::Delay::new(Duration::from_millis(100)).await;
    }
    Err("the relay did not grant a circuit reservation within 10 s".into())
}

thread_local! {
    static SEEDING: std::cell::RefCell<Option<Seeding>> = const { std::cell::RefCell::new(None) };
}

use leptos::prelude::*;

use crate::Ui;

/// Live numbers of the seeding panel.
#[derive(Clone, Debug, Default, PartialEq)]
struct Stats {
    blocks: String,
    addr: String,
    sessions: u64,
    active: usize,
    tokens: u64,
    uptime_s: u64,
    tokens_per_s: f64,
}

/// The seed panel.
#[component]
pub fn SeedView() -> impl IntoView {
    let ui = expect_context::<Ui>();
    let state = RwSignal::new("off".to_string());
    let message = RwSignal::new(String::new());
    let adapter = RwSignal::new(String::new());
    let stats = RwSignal::new(Stats::default());
    let pause_hidden = RwSignal::new(false);
    let paused = RwSignal::new(false);
    // Copy, so the switch's closures stay Copy.
    let want = crate::http::query_param("seed").and_then(|s| parse_span(&s)).map(|r| (r.start, r.end));
    let auto = RwSignal::new(want.is_some());

    let turn_on = move || {
        if matches!(state.get_untracked().as_str(), "starting" | "serving") {
            return;
        }
        let Some(net) = crate::net() else {
            message.set("Not connected to the swarm yet.".into());
            return;
        };
        let Some(id) = ui.selected.get_untracked().and_then(|h| ModelId::from_hex(&h)) else {
            message.set("No model to serve yet.".into());
            return;
        };
        state.set("starting".into());
        let want = want.map(|(a, b)| a..b);
        leptos::task::spawn_local(async move {
            let progress = move |p: String| message.set(p);
            match start(&net, id, want, &progress).await {
                Ok(s) => {
                    message.set(format!("Serving blocks {}..{} at {}", s.blocks.start, s.blocks.end, s.addr));
                    SEEDING.with_borrow_mut(|slot| *slot = Some(s));
                    state.set("serving".into());
                }
                Err(e) => {
                    message.set(e);
                    state.set("error".into());
                }
            }
        });
    };
    let turn_off = move || {
        SEEDING.with_borrow_mut(|s| s.take().map(Seeding::stop));
        if state.get_untracked() == "serving" {
            state.set("off".into());
            message.set("Withdrawn from the swarm.".into());
        }
    };

    // Adapter facts, shown before the switch is used.
    leptos::task::spawn_local(async move {
        match open_gpu().await {
            Ok((_, a)) => adapter.set(format!(
                "{} — largest buffer {} MB, largest storage binding {} MB",
                a.name,
                a.max_buffer >> 20,
                a.max_binding >> 20
            )),
            Err(e) => adapter.set(e),
        }
    });
    // `?seed=A..B`: start once connected and a model is known.
    Effect::new(move |_| {
        if auto.get() && ui.conn.get() == "connected" && ui.selected.get().is_some() {
            auto.set(false);
            turn_on();
        }
    });
    // Live stats.
    let last_tokens = std::rc::Rc::new(std::cell::Cell::new((0u64, web_time::Instant::now())));
    let interval = set_interval_with_handle(
        move || {
            let s = SEEDING.with_borrow(|s| {
                s.as_ref().map(|s| {
                    let tokens = s.server.stats.tokens.load(std::sync::atomic::Ordering::Relaxed);
                    let (prev, at) = last_tokens.get();
                    let dt = at.elapsed().as_secs_f64().max(1e-3);
                    last_tokens.set((tokens, web_time::Instant::now()));
                    Stats {
                        blocks: format!("{}..{}", s.blocks.start, s.blocks.end),
                        addr: s.addr.clone(),
                        sessions: s.server.stats.sessions.load(std::sync::atomic::Ordering::Relaxed),
                        active: s.server.status().active_sessions,
                        tokens,
                        uptime_s: s.started.elapsed().as_secs(),
                        tokens_per_s: tokens.saturating_sub(prev) as f64 / dt,
                    }
                })
            });
            stats.set(s.unwrap_or_default());
        },
        Duration::from_secs(1),
    );
    // The panel lives as long as the page; the interval with it.
    if let Err(e) = interval {
        tracing::warn!("no stats timer: {e:?}");
    }
    // Pause while the tab is hidden, if asked.
    if let Some(doc) = web_sys::window().and_then(|w| w.document()) {
        let d = doc.clone();
        let handler = wasm_bindgen::closure::Closure::<dyn FnMut()>::new(move || {
            if !pause_hidden.get_untracked() {
                return;
            }
            if d.hidden() && state.get_untracked() == "serving" {
                turn_off();
                paused.set(true);
                message.set("Paused while the tab is hidden.".into());
            } else if !d.hidden() && paused.get_untracked() {
                paused.set(false);
                turn_on();
            }
        });
        let _ = doc.add_event_listener_with_callback(
            "visibilitychange",
            wasm_bindgen::JsCast::unchecked_ref(handler.as_ref()),
        );
        handler.forget();
    }

    view! {
        <div class="seed">
            <label class="switch">
                <input type="checkbox" id="share"
                    prop:checked=move || matches!(state.get().as_str(), "starting" | "serving")
                    on:change=move |ev| if event_target_checked(&ev) { turn_on() } else { turn_off() } />
                " Share this tab's GPU"
            </label>
            <label class="switch">
                <input type="checkbox" id="pause-hidden"
                    prop:checked=move || pause_hidden.get()
                    on:change=move |ev| pause_hidden.set(event_target_checked(&ev)) />
                " Pause while this tab is hidden"
            </label>
            <p id="adapter">{move || adapter.get()}</p>
            <p id="seed-state" data-state=move || state.get() data-blocks=move || stats.get().blocks
                data-tokens=move || stats.get().tokens.to_string()>{move || message.get()}</p>
            <dl class="stats">
                <dt>"Blocks served"</dt><dd>{move || stats.get().blocks}</dd>
                <dt>"Sessions (open now)"</dt><dd>{move || format!("{} ({})", stats.get().sessions, stats.get().active)}</dd>
                <dt>"Tokens served"</dt><dd>{move || stats.get().tokens}</dd>
                <dt>"Throughput"</dt><dd>{move || format!("{:.1} tokens/s", stats.get().tokens_per_s)}</dd>
                <dt>"Uptime"</dt><dd>{move || format!("{} s", stats.get().uptime_s)}</dd>
                <dt>"Reached at"</dt><dd class="addr">{move || stats.get().addr}</dd>
            </dl>
        </div>
    }
}
