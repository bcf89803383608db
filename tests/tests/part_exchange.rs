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
use web_node::model::{Manifest, ModelFile};
use web_node::net::frame::{read_frame, write_frame};
use web_node::net::parts::{fetch_part, fetch_range, Reply, Request, MAX_RANGE, PARTS_PROTOCOL};

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
        for (part, r) in [(Part::Block(5), &parts.blocks[5]), (Part::Head, &parts.head)] {
            let (bytes, report) = fetch_part(&control, &peers, r, 4).await.expect("fetch");
            assert!(bytes == extract(g.file(), n, part).unwrap(), "{part}: other bytes");
            let from: Vec<u64> =
                peers.iter().map(|p| report.from.iter().find(|(q, _)| q == p).map_or(0, |x| x.1)).collect();
            assert!(from.iter().all(|&b| b > 0), "{part}: not fetched from both seeders: {from:?}");
            assert_eq!(from.iter().sum::<u64>(), r.size);
            assert!(report.banned.is_empty());
            println!("{part}: {} bytes, {from:?} from the two seeders", r.size);
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
        // Still serving.
        let again = fetch_range(&mut control.clone(), peers[1], r, 0..r.size.min(MAX_RANGE)).await.expect("range");
        assert_eq!(again.len() as u64, r.size.min(MAX_RANGE));
    });
    drop(relays);
    let _ = std::fs::remove_dir_all(root);
}
