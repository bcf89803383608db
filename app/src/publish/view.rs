//! The Publish panel: a GGUF file, the labels, a button, progress and the result. Takes the
//! [`Publisher`] from context.

use leptos::prelude::*;
use wasm_bindgen::JsCast;
use web_node::model::card::Labels;

use super::creator::CreatorView;
use super::{PublishState, Publisher};

/// The value of the text input `id` (empty when missing).
fn input(id: &str) -> String {
    let el = web_sys::window().and_then(|w| w.document()).and_then(|d| d.get_element_by_id(id));
    el.and_then(|e| e.dyn_into::<web_sys::HtmlInputElement>().ok())
        .map(|i| i.value().trim().to_string())
        .unwrap_or_default()
}

/// The file picked in `#publish-file`.
fn picked_file() -> Option<web_sys::File> {
    let el = web_sys::window()?.document()?.get_element_by_id("publish-file")?;
    el.dyn_into::<web_sys::HtmlInputElement>().ok()?.files()?.get(0)
}

fn some(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

/// The labels typed in the panel.
fn labels() -> Labels {
    Labels {
        name: some(input("publish-name")),
        tags: input("publish-tags").split(',').map(|t| t.trim().to_string()).filter(|t| !t.is_empty()).collect(),
        license: some(input("publish-license")),
        payout: some(input("publish-payout")),
    }
}

/// The Publish panel.
#[component]
pub fn PublishView() -> impl IntoView {
    let p = expect_context::<Publisher>();
    let go = move |_| match picked_file() {
        Some(f) => p.start(f, labels()),
        None => p.message.set("Pick a GGUF file first.".into()),
    };
    let creator = super::creator_key().public().to_peer_id().to_string();
    view! {
        <div class="publish">
            <p>"Publish a model: this tab cuts a GGUF file into parts, hashes them, signs the model's card with \
                this browser's creator key and seeds the parts to the swarm while the tab stays open."</p>
            <p>"Creator (relays pin by it): " <span id="publish-creator" class="addr">{creator}</span></p>
            <label>"GGUF file " <input type="file" id="publish-file" accept=".gguf"/></label>
            <label>"Name " <input type="text" id="publish-name" placeholder="from the file"/></label>
            <label>"Tags " <input type="text" id="publish-tags" placeholder="chat, small"/></label>
            <label>"License (SPDX) " <input type="text" id="publish-license" placeholder="from the file"/></label>
            <label>"Payout address " <input type="text" id="publish-payout" placeholder="0x…"/></label>
            <button id="publish-go" disabled=move || p.state.get() == PublishState::Working on:click=go>"Publish"</button>
            <progress id="publish-progress"
                class:hidden=move || p.state.get() != PublishState::Working
                max=move || p.progress.with(|(_, t)| (*t).max(1))
                value=move || p.progress.with(|(d, _)| *d)></progress>
            <p id="publish-state" data-state=move || p.state.get().to_string()
                data-model=move || p.model.get().unwrap_or_default()>
                {move || p.message.get()}
            </p>
            <CreatorView/>
        </div>
    }
}
