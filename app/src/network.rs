//! The network panel: the relays and nodes this tab sees, and for each model which blocks are
//! covered by how many nodes.

use leptos::prelude::*;

use crate::{model_entries, Ui};

/// How many servers cover each block of `model`.
pub fn coverage(servers: &[web_node::net::record::ServerRecord], model: &str, n_layers: usize) -> Vec<usize> {
    let mut cover = vec![0; n_layers];
    for r in servers.iter().filter(|r| r.status.model == model) {
        for c in cover.iter_mut().take(r.status.end).skip(r.status.start) {
            *c += 1;
        }
    }
    cover
}

fn short(peer: &str) -> String {
    format!("…{}", &peer[peer.len().saturating_sub(10)..])
}

/// The network panel.
#[component]
pub fn NetworkView() -> impl IntoView {
    let ui = expect_context::<Ui>();
    view! {
        <div class="network">
            <h2>"Models"</h2>
            {move || {
                let servers = ui.servers.get();
                let offered = crate::net().and_then(|n| n.boot.model.clone());
                model_entries(&servers, offered.as_ref()).into_iter().map(|m| {
                    let cover = coverage(&servers, &m.id, m.n_layers);
                    view! {
                        <div class="model">
                            <h3>{m.name.clone()}</h3>
                            <div class="blocks" data-model=m.id.clone()>
                                {cover.into_iter().enumerate().map(|(i, c)| {
                                    let class = format!("block c{}", c.min(3));
                                    view! { <span class=class title=format!("block {i}: {c} node(s)")>{c}</span> }
                                }).collect_view()}
                            </div>
                        </div>
                    }
                }).collect_view()
            }}
            <h2>"Servers"</h2>
            <table id="servers">
                <tr><th>"Node"</th><th>"Blocks"</th><th>"Backend"</th><th>"ms/block"</th><th>"Free slots"</th></tr>
                {move || ui.servers.get().into_iter().map(|r| view! {
                    <tr>
                        <td title=r.peer.clone()>{short(&r.peer)}</td>
                        <td>{format!("{}..{}", r.status.start, r.status.end)}</td>
                        <td>{r.status.backend.clone()}</td>
                        <td>{format!("{:.2}", r.status.ms_per_block)}</td>
                        <td>{r.status.free_slots}</td>
                    </tr>
                }).collect_view()}
            </table>
            <h2>"Connected peers"</h2>
            <table id="peers">
                <tr><th>"Peer"</th><th>"Kind"</th><th>"Address"</th></tr>
                {move || ui.peers.get().into_iter().map(|p| view! {
                    <tr>
                        <td title=p.peer.clone()>{short(&p.peer)}</td>
                        <td>{if p.relay { "relay".to_string() } else { p.agent.clone() }}</td>
                        <td class="addr">{p.addr.clone()}</td>
                    </tr>
                }).collect_view()}
            </table>
        </div>
    }
}
