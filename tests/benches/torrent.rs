//! `cargo bench -p ait-tests --bench torrent`: the part exchange's throughput on loopback, in
//! one run, printing JSON (issue 14, deliverable 7).
//!
//! Seeders are in-process libp2p nodes (TCP on 127.0.0.1) answering `/ait/parts/1` from parts
//! of random bytes held in memory (`AIT_TORRENT_MIB`, default 1024, cut into 64 MiB parts);
//! the fetcher is another node in the same process. Measured in MB/s, the first four in
//! `AIT_TORRENT_ROUNDS` rounds (default 3; medians, and each round's plain-to-verified ratio),
//! the rest once:
//! - `plain`: the transport's ceiling, the same bytes sent over 4 plain libp2p streams at once
//!   from one seeder (a bench-only protocol of this process, no checks);
//! - `verified_1` and `verified_3`: every part fetched with `fetch_ranges` (4 peers at once, or
//!   `AIT_TORRENT_PARALLEL`, each with its next range asked ahead; each range checked against
//!   the part's root, then dropped as `plain` drops its bytes) from 1 and from 3 seeders;
//! - `assembled_1`: the same from 1 seeder into a new buffer per part (`fetch_part`, as a tab
//!   assembles a part in memory), so the cost of that copy and its page faults shows apart;
//! - `paced_1` and `paced_3`: the same from seeders each capped at `AIT_TORRENT_CAP_MBPS`
//!   (default 400 Mbit/s, to emulate real uplinks) over a quarter of the bytes;
//! - `decode`: checking the ranges alone (no network), the verification's own ceiling.
//!
//! Then a relay's time from start to serving blocks it did not have: a relay process seeds a
//! generated 6-layer model (hidden 256, FFN 1536, Q8_0, 24 MB) and another, given only the
//! model id, fetches its head and all blocks and starts serving.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ait_tests::procs::{temp_dir, Relay};
use ait_tests::tiny_model::torrent_model;
use bytes::Bytes;
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::{Multiaddr, PeerId, StreamProtocol};
use rand::{RngCore, SeedableRng};
use serde_json::json;
use web_node::model::manifest::PartRef;
use web_node::model::verified::decode_range;
use web_node::model::ModelId;
use web_node::net::node::NodeHandle;
use web_node::net::parts::{
    fetch_part, fetch_ranges, ranges_of, HeldPart, PartSource, PartStreams, SeedLimits, MAX_RANGE,
};

/// The bench-only plain protocol: the client sends a u64 (little-endian), the server that
/// many bytes.
const PLAIN: StreamProtocol = StreamProtocol::new("/ait-bench/plain/1");
const PART_MIB: usize = 64;

/// Parts held in memory by root.
struct MemParts(Vec<(String, Arc<HeldPart>)>);

impl PartSource for MemParts {
    fn part(&self, root: &str) -> Option<Arc<HeldPart>> {
        self.0.iter().find(|(r, _)| r == root).map(|(_, p)| p.clone())
    }
    fn has(&self, root: &str) -> bool {
        self.0.iter().any(|(r, _)| r == root)
    }
    fn manifest(&self, _: &ModelId) -> Option<Bytes> {
        None
    }
    fn models(&self) -> Vec<ModelId> {
        Vec::new()
    }
    fn card(&self, _: &ModelId) -> Option<Bytes> {
        None
    }
}

/// An in-process seeder of `parts`, paced to `bytes_per_sec`, also serving [`PLAIN`].
async fn seeder(parts: Arc<MemParts>, bytes_per_sec: Option<u64>) -> (NodeHandle, PeerId, Multiaddr) {
    let listen: Multiaddr = "/ip4/127.0.0.1/tcp/0".parse().unwrap();
    let node = relay::swarm_client::connect_from(&[], &[listen]).await.expect("node");
    let limits = SeedLimits { bytes_per_sec, ..SeedLimits::default() };
    let streams = PartStreams::new(&mut node.control(), parts, limits).expect("register");
    tokio::spawn(streams.for_each(|t| {
        tokio::spawn(t);
        std::future::ready(())
    }));
    let mut plain = node.control().accept(PLAIN).expect("register plain");
    tokio::spawn(async move {
        while let Some((_, mut s)) = plain.next().await {
            tokio::spawn(async move {
                let mut n = [0u8; 8];
                if s.read_exact(&mut n).await.is_err() {
                    return;
                }
                let mut left = u64::from_le_bytes(n);
                let chunk = vec![7u8; 1 << 20];
                while left > 0 {
                    let k = left.min(chunk.len() as u64) as usize;
                    if s.write_all(&chunk[..k]).await.is_err() {
                        return;
                    }
                    left -= k as u64;
                }
                let _ = s.close().await;
            });
        }
    });
    let addr = node.addresses().await.expect("addrs").into_iter().next().expect("an address");
    let peer = node.peer_id();
    (node, peer, addr)
}

/// `total` bytes from `peer` over plain streams of `each` bytes, 4 at a time, in seconds. A
/// stream the seeder dropped before it read a byte is opened again a moment later, as fetches
/// do: libp2p-stream drops an inbound stream while the one stream before it waits to be taken
/// (its accept queue has a single slot; rust-libp2p #5651).
async fn plain(fetcher: &NodeHandle, peer: PeerId, total: u64, each: u64) -> f64 {
    let t = Instant::now();
    let runs = futures::stream::iter(0..total / each).map(|_| {
        let mut control = fetcher.control();
        async move {
            for attempt in 1.. {
                match plain_once(&mut control, peer, each).await {
                    Ok(got) => return assert_eq!(got, each),
                    Err((0, e)) if attempt < 4 => {
                        eprintln!("plain stream dropped ({e}); opening another");
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                    Err((got, e)) => panic!("plain stream failed after {got} bytes: {e}"),
                }
            }
        }
    });
    runs.buffer_unordered(4).collect::<Vec<()>>().await;
    t.elapsed().as_secs_f64()
}

/// One plain stream of `each` bytes: the bytes read, or those read before an error.
async fn plain_once(control: &mut libp2p_stream::Control, peer: PeerId, each: u64) -> Result<u64, (u64, String)> {
    let mut s = control.open_stream(peer, PLAIN).await.map_err(|e| (0, e.to_string()))?;
    s.write_all(&each.to_le_bytes()).await.map_err(|e| (0, e.to_string()))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut got = 0u64;
    loop {
        match s.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => got += n as u64,
            Err(e) => return Err((got, e.to_string())),
        }
    }
    let _ = s.close().await;
    if got == 0 {
        return Err((0, "closed before any byte".into()));
    }
    Ok(got)
}

/// Every part in `refs` fetched from `peers`, each range verified and then dropped as the
/// plain stream's bytes are (the exchange alone), in seconds.
async fn verified(fetcher: &NodeHandle, peers: &[PeerId], refs: &[PartRef]) -> f64 {
    let t = Instant::now();
    for r in refs {
        let mut got = 0u64;
        let count = |_: std::ops::Range<u64>, bytes: &[u8]| {
            got += bytes.len() as u64;
            Ok(())
        };
        fetch_ranges(fetcher, peers, r, ranges_of(r.size), parallel(), count).await.expect("fetch");
        assert_eq!(got, r.size);
    }
    t.elapsed().as_secs_f64()
}

/// Every part in `refs` fetched from `peers` and assembled in memory ([`fetch_part`], a new
/// buffer per part, as a tab does), in seconds.
async fn assembled(fetcher: &NodeHandle, peers: &[PeerId], refs: &[PartRef]) -> f64 {
    let t = Instant::now();
    for r in refs {
        let (bytes, _) = fetch_part(fetcher, peers, r, parallel()).await.expect("fetch");
        assert_eq!(bytes.len() as u64, r.size);
    }
    t.elapsed().as_secs_f64()
}

/// Ranges of a part fetched at once (`AIT_TORRENT_PARALLEL`, default 4 as relays do).
fn parallel() -> usize {
    std::env::var("AIT_TORRENT_PARALLEL").ok().and_then(|v| v.parse().ok()).unwrap_or(4)
}

/// The median of `xs` (the upper one of an even count).
fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn mb_s(bytes: u64, secs: f64) -> f64 {
    (bytes as f64 / 1e6 / secs).round()
}

/// Seconds for a relay given only the model id to fetch a generated model's parts and serve.
fn start_to_serving() -> serde_json::Value {
    let root = temp_dir("bench-torrent");
    let (path, manifest) = torrent_model(&root);
    let id = manifest.id().to_hex();
    let seed = Relay::start(&root.join("seed"), &["--model", path.to_str().unwrap(), "--no-http"]);
    let t = Instant::now();
    let r = Relay::start(
        &root.join("fetcher"),
        &["--model", &id, "--blocks", "all", "--bootstrap", &seed.addr("tcp"), "--no-http"],
    );
    let secs = t.elapsed().as_secs_f64();
    let bytes: u64 = manifest.parts.as_ref().map_or(0, |p| p.head.size + p.blocks.iter().map(|b| b.size).sum::<u64>());
    drop((r, seed));
    let _ = std::fs::remove_dir_all(root);
    json!({"model_bytes": bytes, "seconds": (secs * 100.0).round() / 100.0})
}

fn main() {
    let mib: usize = std::env::var("AIT_TORRENT_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(1024);
    let rounds: usize = std::env::var("AIT_TORRENT_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3).max(1);
    let cap_mbps: f64 = std::env::var("AIT_TORRENT_CAP_MBPS").ok().and_then(|v| v.parse().ok()).unwrap_or(400.0);
    let n_parts = (mib / PART_MIB).max(1);
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let held: Vec<(String, Arc<HeldPart>)> = (0..n_parts)
        .map(|_| {
            let mut data = vec![0u8; PART_MIB << 20];
            rng.fill_bytes(&mut data);
            let p = HeldPart::new(Bytes::from(data));
            (p.root().to_hex(), Arc::new(p))
        })
        .collect();
    let refs: Vec<PartRef> =
        held.iter().map(|(root, p)| PartRef { size: p.len(), root: root.clone(), flops: 0 }).collect();
    let total: u64 = refs.iter().map(|r| r.size).sum();
    let parts = Arc::new(MemParts(held));

    // Verification alone: decode every 1 MiB range of the first part.
    let first = &parts.0[0].1;
    let root = first.root();
    let encoded: Vec<(std::ops::Range<u64>, Vec<u8>)> = (0..first.len() / MAX_RANGE)
        .map(|i| {
            let r = i * MAX_RANGE..(i + 1) * MAX_RANGE;
            (r.clone(), first.encode(r).expect("encode"))
        })
        .collect();
    let t = Instant::now();
    for (r, e) in &encoded {
        std::hint::black_box(decode_range(root, r.clone(), &e[..]).expect("decode"));
    }
    let decode = mb_s(first.len(), t.elapsed().as_secs_f64());

    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let out = rt.block_on(async {
        let cap = (cap_mbps * 1e6 / 8.0) as u64;
        let mut free = Vec::new();
        let mut paced = Vec::new();
        for _ in 0..3 {
            free.push(seeder(parts.clone(), None).await);
            paced.push(seeder(parts.clone(), Some(cap)).await);
        }
        let fetcher = relay::swarm_client::connect(&[]).await.expect("fetcher");
        for (_, peer, addr) in free.iter().chain(&paced) {
            let at = relay::p2p::with_peer(addr.clone(), *peer);
            fetcher.dial(at, Duration::from_secs(10)).await.expect("dial");
        }
        let ids = |s: &[(NodeHandle, PeerId, Multiaddr)]| s.iter().map(|x| x.1).collect::<Vec<_>>();
        let (free_ids, paced_ids) = (ids(&free), ids(&paced));
        // Rounds of plain, verified from 1 and from 3 seeders, and assembled, one after the
        // other, so that each ratio compares neighbours; medians over the rounds.
        let (mut plain_s, mut v1, mut v3, mut a1, mut ratios) = (vec![], vec![], vec![], vec![], vec![]);
        for _ in 0..rounds {
            plain_s.push(plain(&fetcher, free_ids[0], total, total / 4).await);
            v1.push(verified(&fetcher, &free_ids[..1], &refs).await);
            v3.push(verified(&fetcher, &free_ids, &refs).await);
            a1.push(assembled(&fetcher, &free_ids[..1], &refs).await);
            ratios.push(((plain_s[plain_s.len() - 1] / v1[v1.len() - 1]) * 100.0).round() / 100.0);
        }
        let quarter = &refs[..(refs.len() / 4).max(1)];
        let qbytes: u64 = quarter.iter().map(|r| r.size).sum();
        let p1 = verified(&fetcher, &paced_ids[..1], quarter).await;
        let p3 = verified(&fetcher, &paced_ids, quarter).await;
        json!({
            "bytes": total,
            "rounds": rounds,
            "plain_mb_s": mb_s(total, median(&plain_s)),
            "verified_1_mb_s": mb_s(total, median(&v1)),
            "verified_3_mb_s": mb_s(total, median(&v3)),
            "assembled_1_mb_s": mb_s(total, median(&a1)),
            "verified_1_vs_plain": ((median(&plain_s) / median(&v1)) * 100.0).round() / 100.0,
            "verified_1_vs_plain_each_round": ratios,
            "cap_mbit_s": cap_mbps,
            "paced_bytes": qbytes,
            "paced_1_mb_s": mb_s(qbytes, p1),
            "paced_3_mb_s": mb_s(qbytes, p3),
            "paced_3_vs_1": ((p1 / p3) * 100.0).round() / 100.0,
            "decode_mb_s": decode,
        })
    });
    let start = start_to_serving();
    let report = json!({"exchange": out, "relay_start_to_serving": start});
    println!("{}", serde_json::to_string_pretty(&report).expect("json"));
}
