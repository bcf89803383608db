//! The Wallet panel's view. Takes the [`Wallet`] from context.

use leptos::prelude::*;
use wasm_bindgen::JsCast;

use super::{format_ait, Wallet, WalletState};
use crate::chat::Chat;

/// The deposit amount typed in `#wallet-amount`.
fn amount() -> String {
    let el = web_sys::window().and_then(|w| w.document()).and_then(|d| d.get_element_by_id("wallet-amount"));
    el.and_then(|e| e.dyn_into::<web_sys::HtmlInputElement>().ok()).map(|i| i.value()).unwrap_or_default()
}

/// The Wallet panel.
#[component]
pub fn WalletView() -> impl IntoView {
    let w = expect_context::<Wallet>();
    let chat = expect_context::<Chat>();
    let busy = move || w.state.get() == WalletState::Working;
    let no_account = move || w.address.get().is_none();
    let show = |v: Option<alloy_primitives::U256>| v.map(format_ait).unwrap_or_else(|| "–".into());
    view! {
        <div class="wallet">
            <p>"Pay for what you use with AIT: deposit once into the escrow, then this tab's session key \
                signs small vouchers as nodes serve you, without asking again. Without a wallet this page \
                still chats with the nodes that serve free."</p>
            <button id="wallet-connect" disabled=busy on:click=move |_| w.connect()>"Connect wallet"</button>
            <p>"Account: " <span class="addr">{move || w.address.get().map(|a| a.to_string()).unwrap_or_else(|| "–".into())}</span></p>
            <p>"In the wallet: " {move || show(w.ait.get())} " AIT · deposited: " {move || show(w.deposited.get())} " AIT"</p>
            <label>"Deposit (AIT) " <input type="text" id="wallet-amount" placeholder="10"/></label>
            <button id="wallet-deposit" disabled=move || busy() || no_account() on:click=move |_| w.deposit(amount())>"Deposit"</button>
            <button id="wallet-authorize" disabled=move || busy() || no_account() on:click=move |_| w.authorize()>"Authorize this tab"</button>
            <p>"Withdrawing waits the escrow's thaw period, so nodes can still redeem what you signed: "
                <button id="wallet-thaw" disabled=move || busy() || no_account() on:click=move |_| w.start_withdrawal(amount())>"Start withdrawal"</button>
                <button id="wallet-withdraw" disabled=move || busy() || w.thawing.get().is_none() on:click=move |_| w.finish_withdrawal()>"Withdraw"</button>
                " " {move || w.thawing.get().map(|(a, until)| format!("{} AIT thawing until {}", format_ait(a), js_sys::Date::new(&((until as f64 * 1000.0).into())).to_locale_string("en", &wasm_bindgen::JsValue::UNDEFINED))).unwrap_or_default()}
            </p>
            <p id="wallet-state"
                data-state=move || w.state.get().to_string()
                data-address=move || w.address.get().map(|a| a.to_string()).unwrap_or_default()
                data-ait=move || w.ait.get().map(|a| a.to_string()).unwrap_or_default()
                data-deposited=move || w.deposited.get().map(|a| a.to_string()).unwrap_or_default()
                data-thawing=move || w.thawing.get().map(|(a, _)| a.to_string()).unwrap_or_default()
                data-session-key=move || w.session.get().map(|s| s.signer.to_string()).unwrap_or_default()
                data-authorization=move || w.session.get().and_then(|s| serde_json::to_string(&s).ok()).unwrap_or_default()>
                {move || w.message.get()}
            </p>
            <p id="wallet-free" data-left=move || w.free_left.get().map(|n| n.to_string()).unwrap_or_default()>
                {move || match w.free_left.get() {
                    Some(n) => format!("Free tier left today: {n} tokens (the fewest at the servers of your last unpaid answer)."),
                    None => "Free tier: servers that charge serve a daily quota free to tabs that do not pay.".into(),
                }}
            </p>
            <h3>"Spent"</h3>
            <p id="wallet-spent" data-total=move || chat.conversations.with(|c| c.spent()).to_string()>
                "By this tab's conversations: " {move || format_ait(chat.conversations.with(|c| c.spent()))} " AIT"
            </p>
            <ul id="wallet-spend">
                {move || chat.conversations.get().0.into_iter().filter(|c| !c.spent.is_zero()).map(|c| view! {
                    <li data-id=c.id.clone() data-spent=c.spent.to_string()>
                        {c.display_title()} ": " {format_ait(c.spent)} " AIT"
                    </li>
                }).collect_view()}
            </ul>
        </div>
    }
}
