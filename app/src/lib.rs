//! The AI Torrent web app: a Leptos client-side-rendered page, built by Trunk.
//!
//! One job: the browser UI of a node. Today it shows the page title and whether this browser
//! exposes WebGPU (the prerequisite for serving model layers from a tab). The model, engine and
//! client logic live in `web-node`; this crate only wires them to the page and has no logic of
//! its own that could not run outside a browser.
#![deny(missing_docs)]

use leptos::prelude::*;

// The app grows on top of the portable node library; keep the dependency explicit so the
// wasm build of `web-node` is exercised by every app build.
use web_node as _;

/// Whether this browser exposes WebGPU (`navigator.gpu` is present).
pub fn has_webgpu() -> bool {
    let Some(window) = web_sys::window() else {
        return false;
    };
    js_sys::Reflect::has(&window.navigator(), &"gpu".into()).unwrap_or(false)
}

/// One-line status shown under the title.
pub fn status_line(webgpu: bool) -> &'static str {
    if webgpu {
        "WebGPU is available: this tab can run model layers."
    } else {
        "WebGPU is not available in this browser: this tab can only act as a client."
    }
}

/// The whole page.
#[component]
pub fn App() -> impl IntoView {
    let webgpu = has_webgpu();
    view! {
        <main>
            <h1>"AI Torrent"</h1>
            <p id="status" data-webgpu=webgpu.to_string()>{status_line(webgpu)}</p>
        </main>
    }
}
