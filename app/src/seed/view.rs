//! The seed panel's components. Each takes the [`Seeder`] from context.

use leptos::prelude::*;

use super::Seeder;

/// The seed panel: the switches, the adapter, the state line and the live numbers.
#[component]
pub fn SeedView() -> impl IntoView {
    let seeder = expect_context::<Seeder>();
    view! {
        <div class="seed">
            <ShareSwitch/>
            <PauseSwitch/>
            <p id="adapter">{move || seeder.adapter.get()}</p>
            <SeedStatus/>
            <progress id="seed-progress"
                class:hidden=move || seeder.download.with(Option::is_none)
                max=move || seeder.download.with(|d| d.map_or(1, |(_, t)| t.max(1)))
                value=move || seeder.download.with(|d| d.map_or(0, |(d, _)| d))></progress>
            <SeedStats/>
        </div>
    }
}

#[component]
fn ShareSwitch() -> impl IntoView {
    let seeder = expect_context::<Seeder>();
    view! {
        <label class="switch">
            <input type="checkbox" id="share"
                prop:checked=move || seeder.state.get().is_on()
                on:change=move |ev| if event_target_checked(&ev) { seeder.turn_on() } else { seeder.turn_off() } />
            " Share this tab's GPU"
        </label>
    }
}

#[component]
fn PauseSwitch() -> impl IntoView {
    let seeder = expect_context::<Seeder>();
    view! {
        <label class="switch">
            <input type="checkbox" id="pause-hidden"
                prop:checked=move || seeder.pause_hidden.get()
                on:change=move |ev| seeder.pause_hidden.set(event_target_checked(&ev)) />
            " Pause while this tab is hidden"
        </label>
    }
}

#[component]
fn SeedStatus() -> impl IntoView {
    let seeder = expect_context::<Seeder>();
    view! {
        <p id="seed-state" data-state=move || seeder.state.get().to_string()
            data-blocks=move || seeder.stats.with(|s| s.blocks.clone())
            data-tokens=move || seeder.stats.with(|s| s.tokens.to_string())
            data-sent=move || seeder.stats.with(|s| s.sent.to_string())
            data-received=move || seeder.stats.with(|s| s.received.to_string())>
            {move || seeder.message.get()}
        </p>
    }
}

#[component]
fn SeedStats() -> impl IntoView {
    let stats = expect_context::<Seeder>().stats;
    view! {
        <dl class="stats">
            <dt>"Blocks served"</dt><dd>{move || stats.with(|s| s.blocks.clone())}</dd>
            <dt>"Sessions (open now)"</dt><dd>{move || stats.with(|s| format!("{} ({})", s.sessions, s.active))}</dd>
            <dt>"Tokens served"</dt><dd>{move || stats.with(|s| s.tokens)}</dd>
            <dt>"Throughput"</dt><dd>{move || stats.with(|s| format!("{:.1} tokens/s", s.tokens_per_s))}</dd>
            <dt>"Uptime"</dt><dd>{move || stats.with(|s| format!("{} s", s.uptime_s))}</dd>
            <dt>"Reached at"</dt><dd class="addr">{move || stats.with(|s| s.addr.clone())}</dd>
            <dt>"Weights from"</dt><dd id="seed-origins">{move || stats.with(|s| s.origins.clone())}</dd>
            <dt>"Parts sent / received"</dt><dd id="seed-ratio">{move || stats.with(ratio_line)}</dd>
        </dl>
    }
}

/// `3.1 MB / 6.2 MB (ratio 0.50)`: the tab's seeding ratio.
fn ratio_line(s: &super::Stats) -> String {
    let ratio =
        if s.received > 0 { format!(" (ratio {:.2})", s.sent as f64 / s.received as f64) } else { String::new() };
    format!("{:.1} MB / {:.1} MB{ratio}", s.sent as f64 / 1e6, s.received as f64 / 1e6)
}
