//! The seed panel's components. Each takes the [`Seeder`] from context.

use leptos::prelude::*;

use super::Seeder;
use crate::Tab;
use leptos::task::spawn_local;

/// The seed panel: the switches, the adapter, the state line and the live numbers.
#[component]
pub fn SeedView() -> impl IntoView {
    let seeder = expect_context::<Seeder>();
    view! {
        <div class="seed">
            <ShareSwitch/>
            <PauseSwitch/>
            <PriceInput/>
            <p id="adapter">{move || seeder.adapter.get()}</p>
            <SeedStatus/>
            <progress id="seed-progress"
                class:hidden=move || seeder.download.with(Option::is_none)
                max=move || seeder.download.with(|d| d.map_or(1, |(_, t)| t.max(1)))
                value=move || seeder.download.with(|d| d.map_or(0, |(d, _)| d))></progress>
            <SeedStats/>
            <SeedEarnings/>
        </div>
    }
}

#[component]
fn PriceInput() -> impl IntoView {
    let seeder = expect_context::<Seeder>();
    view! {
        <label class="price">
            "Charge "
            <input type="text" id="seed-price" placeholder="0 (free)" size="12"
                prop:value=move || seeder.price.get()
                prop:disabled=move || seeder.state.get().is_on()
                on:change=move |ev| seeder.price.set(event_target_value(&ev)) />
            " AIT per layer-token (paid to the wallet connected in the Wallet panel)"
        </label>
    }
}

/// A charging tab's earnings: vouchers held, redeemed, credited, per hour; redeem and spend.
/// Read every [`EARNINGS_EVERY`](super::EARNINGS_EVERY) while the Seed panel is shown, one
/// read at a time.
#[component]
fn SeedEarnings() -> impl IntoView {
    let seeder = expect_context::<Seeder>();
    let tab = expect_context::<RwSignal<Tab>>();
    spawn_local(async move {
        loop {
            if tab.get_untracked() == Tab::Seed {
                seeder.read_earnings().await;
                futures_timer::Delay::new(super::EARNINGS_EVERY).await;
            } else {
                futures_timer::Delay::new(std::time::Duration::from_secs(1)).await;
            }
        }
    });
    let e = seeder.earnings;
    let ait = |v: alloy_primitives::U256| format!("{} AIT", web_node::settle::format_ait(v));
    let field = move |f: fn(&super::Earnings) -> String| move || e.with(|e| e.as_ref().map(f).unwrap_or_default());
    view! {
        <div id="seed-earnings" class:hidden=move || e.with(Option::is_none)
            data-pending=field(|e| e.pending.to_string())
            data-sessions=field(|e| e.pending_sessions.to_string())
            data-redeemed=field(|e| e.redeemed.to_string())
            data-earned=field(|e| e.earned.to_string())
            data-per-hour=field(|e| e.per_hour.to_string())
            data-waiting=field(|e| e.waiting.to_string())>
            <dl class="stats">
                <dt>"Vouchers to redeem"</dt>
                <dd>{move || e.with(|e| e.as_ref().map(|e| format!("{} ({} sessions)", ait(e.pending), e.pending_sessions)).unwrap_or_default())}</dd>
                <dt>"Redeemed (last day, this node's share)"</dt><dd>{move || e.with(|e| e.as_ref().map(|e| ait(e.redeemed)).unwrap_or_default())}</dd>
                <dt>"Earned, in the escrow"</dt><dd>{move || e.with(|e| e.as_ref().map(|e| ait(e.earned)).unwrap_or_default())}</dd>
                <dt>"Earning"</dt><dd>{move || e.with(|e| e.as_ref().map(|e| format!("{} per hour", ait(e.per_hour))).unwrap_or_default())}</dd>
                <dt>"Payers' keys and allocations to submit"</dt>
                <dd>{move || e.with(|e| e.as_ref().map(|e| match e.waiting {
                    0 => "none".to_string(),
                    n => format!("{n}: redeem to submit them (until then each such payer gets one credit cap)"),
                }).unwrap_or_default())}</dd>
            </dl>
            <button id="seed-redeem" on:click=move |_| seeder.redeem()>"Redeem vouchers"</button>
            " "
            <button id="seed-spend" on:click=move |_| seeder.spend_earned()>"Pay my chats with my earnings"</button>
            <p id="seed-earn-state" data-error=move || seeder.earn_message.with(|(_, err)| err.to_string())>
                {move || seeder.earn_message.with(|(m, _)| m.clone())}
            </p>
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
