//! The network panel: the relays and nodes this tab sees, and for each model which blocks are
//! covered by how many nodes.

use leptos::prelude::*;
use web_node::net::directory::{coverage, tail_chars};
use web_node::net::record::ServerRecord;

use crate::swarm::{ModelEntry, PeerRow, Swarm};

fn short(peer: &str) -> String {
    format!("…{}", tail_chars(peer, 10))
}

/// The network panel.
#[component]
pub fn NetworkView() -> impl IntoView {
    let swarm = expect_context::<Swarm>();
    view! {
        <div class="network">
            <h2>"Models"</h2>
            {move || {
                let servers = swarm.servers.get();
                swarm.models.get().into_iter().map(|m| {
                    let cover = coverage(&servers, &m.id, m.n_layers);
                    view! { <ModelBlocks model=m cover=cover/> }
                }).collect_view()
            }}
            <h2>"Servers"</h2>
            <table id="servers">
                <tr><th>"Node"</th><th>"Blocks"</th><th>"Backend"</th><th>"ms/block"</th><th>"Free slots"</th></tr>
                {move || swarm.servers.get().into_iter().map(|r| view! { <ServerRow record=r/> }).collect_view()}
            </table>
            <h2>"Connected peers"</h2>
            <table id="peers">
                <tr><th>"Peer"</th><th>"Kind"</th><th>"Address"</th></tr>
                {move || swarm.peers.get().into_iter().map(|p| view! { <PeerLine peer=p/> }).collect_view()}
            </table>
        </div>
    }
}

/// One model: a square per block, with how many nodes serve it (`cover`).
#[component]
fn ModelBlocks(model: ModelEntry, cover: Vec<usize>) -> impl IntoView {
    view! {
        <div class="model">
            <h3>{model.name}</h3>
            <div class="blocks" data-model=model.id>
                {cover.into_iter().enumerate().map(|(i, c)| {
                    let class = format!("block c{}", c.min(3));
                    view! { <span class=class title=format!("block {i}: {c} node(s)")>{c}</span> }
                }).collect_view()}
            </div>
        </div>
    }
}

#[component]
fn ServerRow(record: ServerRecord) -> impl IntoView {
    let s = &record.status;
    view! {
        <tr>
            <td title=record.peer.clone()>{short(&record.peer)}</td>
            <td>{format!("{}..{}", s.start, s.end)}</td>
            <td>{s.backend.clone()}</td>
            <td>{format!("{:.2}", s.ms_per_block)}</td>
            <td>{s.free_slots}</td>
        </tr>
    }
}

#[component]
fn PeerLine(peer: PeerRow) -> impl IntoView {
    view! {
        <tr>
            <td title=peer.peer.clone()>{short(&peer.peer)}</td>
            <td>{peer.kind()}</td>
            <td class="addr">{peer.addr}</td>
        </tr>
    }
}
