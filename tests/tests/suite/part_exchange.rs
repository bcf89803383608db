//! The part-exchange protocol (`/ait/parts/1`, issue 14) between real processes on loopback:
//! two relays started from the default model's file seed its parts; an in-process node
//! fetches a block part and the head part from both at once, each range verified against the
//! part's BLAKE3 root in the manifest, and gets exactly the bytes the file cuts into. Bad
//! requests (a range past the end or too long, a part the relay does not hold, garbage) get a
//! clear error on their own stream, and the relays go on serving.

use std::time::Duration;

use ait_tests::default_model;
use ait_tests::procs::{temp_dir, Relay};
use libp2p::{Multiaddr, PeerId};
use relay::swarm_client::connect;
use web_node::model::parts::{extract, Part};
use web_node::model::{Manifest, ModelFile, ModelId};
use web_node::net::frame::{read_frame, write_frame};
use web_node::net::parts::{
    fetch_have, fetch_manifest, fetch_part, fetch_range, FetchError, Reply, Request, MAX_RANGE, PARTS_PROTOCOL,
};

/// One raw request on a stream of its own, and the relay's first answer.
async fn ask(h: &web_node::net::node::NodeHandle, peer: PeerId, payload: &[u8]) -> Reply {
    let mut s = h.control().open_stream(peer, PARTS_PROTOCOL).await.expect("stream");
    write_frame(&mut s, payload).await.expect("write");
    let t = Duration::from_secs(10);
    serde_json::from_slice(&read_frame(&mut s, 1 << 20, t, t).await.expect("answer")).expect("a reply")
}

fn refusal(r: Reply) -> String {
    match r {
        Reply::Error { message } => message,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn two_seeders_serve_verified_parts_and_refuse_bad_requests() {
    let model = default_model();
    let path = model.to_str().unwrap();
    let root = temp_dir("parts");
    let relays: Vec<Relay> = (0..2).map(|i| Relay::start(&root.join(format!("r{i}")), &["--model", path])).collect();
    let peers: Vec<PeerId> = relays.iter().map(|r| r.peer.parse().unwrap()).collect();
    let addrs: Vec<Multiaddr> = relays.iter().map(|r| r.addr("tcp").parse().unwrap()).collect();
    let ModelFile::Gguf(g) = ModelFile::open(&model).unwrap() else { panic!("gguf") };
    let manifest = Manifest::of_file(&ModelFile::Gguf(g.clone())).unwrap();
    let parts = manifest.parts.clone().expect("parts");
    let n = manifest.n_layers;
    tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
        let h = connect(&addrs).await.unwrap();
        let control = h.control();
        // Both seeders hold both parts and have served a range of each (a relay cuts a part
        // out of its file at the first request for it): the split below is between two
        // seeders ready to serve, not a race with one's first cut.
        let roots = vec![parts.blocks[5].root.clone(), parts.head.root.clone()];
        for p in &peers {
            assert_eq!(fetch_have(&mut control.clone(), *p, &roots).await.expect("have"), vec![true, true]);
            for r in [&parts.blocks[5], &parts.head] {
                fetch_range(&mut control.clone(), *p, r, 0..100).await.expect("a first range");
            }
        }
        for (part, r) in [(Part::Block(5), &parts.blocks[5]), (Part::Head, &parts.head)] {
            let (bytes, report) = fetch_part(&h, &peers, r, 4).await.expect("fetch");
            assert!(bytes == extract(g.file(), n, part).unwrap(), "{part}: other bytes");
            let from: Vec<u64> =
                peers.iter().map(|p| report.from.iter().find(|(q, _)| q == p).map_or(0, |x| x.1)).collect();
            // The head's 31 ranges are spread over both seeders; block 5's three may all go to
            // the faster one (the end game asks it for the slower one's range too).
            if part == Part::Head {
                assert!(from.iter().all(|&b| b > 0), "{part}: not fetched from both seeders: {from:?}");
            }
            assert_eq!(from.iter().sum::<u64>(), r.size);
            assert!(report.banned.is_empty());
            println!("{part}: {} bytes, {from:?} from the two seeders", r.size);
        }
        // Parts fetched one after another from one seeder ride the streams the last fetch left
        // open (`StreamPool`, so their flow-control windows need not grow again): once block 6
        // has used both of the seeder's slots, block 7 opens no stream at all.
        let streams_taken = || -> u64 {
            let url = format!("{}/ait/seeding", relays[0].http.as_deref().expect("http"));
            let v: serde_json::Value = ureq::get(&url).call().expect("seeding").body_mut().read_json().expect("json");
            v["streams"].as_u64().expect("streams")
        };
        for b in [6, 7] {
            let before = streams_taken();
            let (bytes, _) = fetch_part(&h, &peers[..1], &parts.blocks[b], 4).await.expect("fetch");
            assert!(bytes == extract(g.file(), n, Part::Block(b)).unwrap(), "block {b}: other bytes");
            let opened = streams_taken() - before;
            println!("block {b}: {} ranges, {opened} new streams", parts.blocks[b].size.div_ceil(MAX_RANGE));
            if b == 7 {
                assert_eq!(opened, 0, "block 7 opened streams beside those block 6 left");
            }
        }
        // One range, then what is asked of a part that does not exist.
        let r = &parts.blocks[2];
        let got = fetch_range(&mut control.clone(), peers[0], r, 100..200).await.expect("range");
        assert_eq!(got, extract(g.file(), n, Part::Block(2)).unwrap()[..got.len()]);
        let mut fake = r.clone();
        fake.root = "ab".repeat(32);
        let e = fetch_range(&mut control.clone(), peers[0], &fake, 0..10).await.unwrap_err().to_string();
        assert!(e.contains("refused") && e.contains("is not held here"), "{e}");

        // Raw requests a client of ours would not send.
        let get =
            |start: u64, end: u64| serde_json::to_vec(&Request::Get { root: r.root.clone(), start, end }).unwrap();
        let e = refusal(ask(&h, peers[1], &get(r.size - 10, r.size + 10)).await);
        assert!(e.contains(&format!("asked of a part of {} bytes", r.size)), "{e}");
        let e = refusal(ask(&h, peers[1], &get(0, MAX_RANGE + 1)).await);
        assert!(e.contains("at most 1048576 per request"), "{e}");
        let e = refusal(ask(&h, peers[1], b"{\"Get\": 7}").await);
        assert!(e.contains("malformed request"), "{e}");
        let have = Request::Have { roots: vec![r.root.clone(), "ab".repeat(32), "zz".into()] };
        assert_eq!(
            ask(&h, peers[1], &serde_json::to_vec(&have).unwrap()).await,
            Reply::Have { held: vec![true, false, false] }
        );
        // Manifests: the relay's own (checked against its id), an unknown id, a malformed one.
        let id = manifest.id();
        let got = fetch_manifest(&mut control.clone(), peers[1], &id).await.expect("manifest");
        assert_eq!(got, manifest);
        let e = fetch_manifest(&mut control.clone(), peers[1], &ModelId([7; 32])).await.unwrap_err().to_string();
        assert!(e.contains("refused") && e.contains("is not known here"), "{e}");
        let e = refusal(ask(&h, peers[1], &serde_json::to_vec(&Request::Manifest { id: "zz".into() }).unwrap()).await);
        assert!(e.contains("is not 64 hex digits"), "{e}");
        // Still serving.
        let again = fetch_range(&mut control.clone(), peers[1], r, 0..r.size.min(MAX_RANGE)).await.expect("range");
        assert_eq!(again.len() as u64, r.size.min(MAX_RANGE));
    });
    drop(relays);
    let _ = std::fs::remove_dir_all(root);
}

/// A seeder that lies, played by an in-process node that answers `/ait/parts/1` itself (no
/// fault switch exists in the relay or the library): for every range it encodes the true
/// part with one byte flipped in the range's first chunk group (`flip`), or encodes another
/// part under the root asked (`!flip`). Asked for any manifest, it sends `manifest`.
async fn liar(bootstrap: &Multiaddr, data: Vec<u8>, flip: bool, manifest: Vec<u8>) -> (PeerId, Vec<Multiaddr>) {
    use futures::StreamExt;
    use web_node::model::verified::{group_range, PartTree};
    let node =
        relay::swarm_client::connect_from(std::slice::from_ref(bootstrap), &["/ip4/127.0.0.1/tcp/0".parse().unwrap()])
            .await
            .unwrap();
    let mut incoming = node.control().accept(PARTS_PROTOCOL).unwrap();
    let (peer, addrs) = (node.peer_id(), node.addresses().await.unwrap());
    tokio::spawn(async move {
        let _node = node;
        let tree = PartTree::new(&data);
        let size = data.len() as u64;
        while let Some((_, mut s)) = incoming.next().await {
            let t = Duration::from_secs(10);
            let Ok(req) = read_frame(&mut s, 1 << 20, t, t).await else { continue };
            let (start, end) = match serde_json::from_slice(&req) {
                Ok(Request::Get { start, end, .. }) => (start, end),
                Ok(Request::Manifest { .. }) => {
                    let reply = serde_json::to_vec(&Reply::Manifest { size: manifest.len() as u64 }).unwrap();
                    let _ = write_frame(&mut s, &reply).await;
                    let _ = write_frame(&mut s, &manifest).await;
                    continue;
                }
                _ => continue,
            };
            let mut encoded = tree.encode(&data, start..end).unwrap();
            if flip {
                let g = group_range(&(start..end), size).start as usize;
                let at = encoded.windows(64).position(|w| w == &data[g..g + 64]).unwrap();
                encoded[at + 10] ^= 1;
            }
            let reply = serde_json::to_vec(&Reply::Range { size }).unwrap();
            let _ = write_frame(&mut s, &reply).await;
            let _ = write_frame(&mut s, &encoded).await;
        }
    });
    (peer, addrs)
}

/// Test c: two lying seeders (flipped bytes; another part of the same size under the root
/// asked) and one honest relay: the fetcher bans each liar it asks at its first range (which
/// of them it asks before the relay has sent every range depends on timing), gets every range
/// from the relay, and returns exactly the part's bytes; none of the liars' bytes counts.
/// Asked alone, each liar is banned and named.
#[test]
fn lying_seeders_are_banned_and_their_ranges_fetched_elsewhere() {
    let model = default_model();
    let root = temp_dir("parts-liars");
    let relay = Relay::start(&root.join("r"), &["--model", model.to_str().unwrap()]);
    let honest: PeerId = relay.peer.parse().unwrap();
    let addr: Multiaddr = relay.addr("tcp").parse().unwrap();
    let ModelFile::Gguf(g) = ModelFile::open(&model).unwrap() else { panic!("gguf") };
    let manifest = Manifest::of_file(&ModelFile::Gguf(g.clone())).unwrap();
    let parts = manifest.parts.clone().expect("parts");
    let n = manifest.n_layers;
    let block = |i| extract(g.file(), n, Part::Block(i)).unwrap();
    assert_eq!(block(5).len(), block(6).len(), "block parts of one model have one size");
    tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
        // One sends another model's manifest under the id asked, the other junk.
        let other = Manifest { hidden: manifest.hidden + 1, ..manifest.clone() };
        let (flipper, flipper_addrs) = liar(&addr, block(5), true, serde_json::to_vec(&other).unwrap()).await;
        let (swapper, swapper_addrs) = liar(&addr, block(6), false, b"{\"version\": 2}".to_vec()).await;
        let h = connect(std::slice::from_ref(&addr)).await.unwrap();
        for (peer, addrs) in [(flipper, flipper_addrs), (swapper, swapper_addrs)] {
            let at = relay::p2p::with_peer(addrs[0].clone(), peer);
            assert_eq!(h.dial(at, Duration::from_secs(10)).await.unwrap(), peer);
        }
        let (bytes, report) = fetch_part(&h, &[flipper, swapper, honest], &parts.blocks[5], 4).await.expect("fetch");
        assert!(bytes == block(5), "other bytes than the part's");
        assert!(!report.banned.is_empty(), "no liar banned: {report:?}");
        assert!(report.banned.iter().all(|p| [flipper, swapper].contains(p)), "{report:?}");
        assert_eq!(report.from, vec![(honest, parts.blocks[5].size)], "{report:?}");
        // With no peer at all, or a liar alone, an error naming it, never bytes.
        assert!(matches!(fetch_part(&h, &[], &parts.blocks[5], 2).await, Err(FetchError::NoPeers { .. })));
        for liar in [flipper, swapper] {
            let e = fetch_part(&h, &[liar], &parts.blocks[5], 2).await.unwrap_err().to_string();
            assert!(e.contains("no peer left") && e.contains(&liar.to_string()), "{e}");
        }
        let id = manifest.id();
        let e = fetch_manifest(&mut h.control(), flipper, &id).await.unwrap_err().to_string();
        assert!(e.contains("bad manifest") && e.contains(&other.id().to_hex()), "{e}");
        let e = fetch_manifest(&mut h.control(), swapper, &id).await.unwrap_err().to_string();
        assert!(e.contains("bad manifest"), "{e}");
        assert_eq!(fetch_manifest(&mut h.control(), honest, &id).await.expect("the relay's"), manifest);
    });
    drop(relay);
    let _ = std::fs::remove_dir_all(root);
}
