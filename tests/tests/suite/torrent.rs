//! The torrent, with real relay processes on loopback: relays that know a model only by its id
//! fetch the parts they serve from the swarm's seeders (found in the DHT), verified, onto
//! disk; then serve. A generated model keeps it fast (parts of about 1.5 MB per block and
//! 15 MB for the head, so each is cut into several 1 MiB ranges spread over the seeders).

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use ait_tests::procs::{temp_dir, warm_seeders, Relay};
use ait_tests::tiny_model::{torrent_model, write_default_tokenizer, TinyModel};

/// `fetched <part>: <bytes> bytes from <peers> peers, <resumed> resumed` lines, by part.
fn fetched(relay: &Relay) -> Vec<(String, u64, usize, u64)> {
    relay
        .stdout
        .iter()
        .filter_map(|l| {
            let (part, rest) = l.strip_prefix("fetched ")?.split_once(": ")?;
            let w: Vec<&str> = rest.split_whitespace().collect();
            Some((part.to_string(), w.first()?.parse().ok()?, w.get(3)?.parse().ok()?, w.get(5)?.parse().ok()?))
        })
        .collect()
}

fn ait(args: &[&str]) -> String {
    ait_tests::procs::ait_stdout(args)
}

/// Deliverable 6a: one node publishes the file (`ait publish`, with a signed card) and another
/// seeds it too; three relays started with only the model id
/// each fetch the head and their own two blocks and nothing else (the head's ranges from both
/// seeders at once; a block's two ranges may both come from the faster one); then the chain
/// of the three generates what one process does from the file. The creator's card travels
/// with the model: every relay keeps it and `ait models` shows it with its creator.
#[test]
fn relays_fetch_their_blocks_from_two_seeders_then_generate_what_one_process_does() {
    let root = temp_dir("torrent-chain");
    let (path, manifest) = torrent_model(&root);
    let p = path.to_str().unwrap();
    let id = manifest.id().to_hex();
    let parts = manifest.parts.clone().expect("parts");
    let payout = format!("0x{}", "5e".repeat(20));
    let card_flags =
        ["--name", "Tiny Torrent", "--tag", "chat", "--tag", "Tiny", "--license", "MIT", "--payout", &payout];
    let seed1 = Relay::publish(&root.join("seed1"), &path, &card_flags);
    let card_line = format!("card: \"Tiny Torrent\" by {}", seed1.peer);
    assert!(seed1.stdout.iter().any(|l| l.starts_with(&card_line)), "{:?}", seed1.stdout);
    let boot = seed1.addr("tcp");
    let seed2 = Relay::start(&root.join("seed2"), &["--model", p, "--bootstrap", &boot]);
    warm_seeders(
        &[&seed1, &seed2],
        &std::iter::once(parts.head.clone()).chain(parts.blocks.clone()).collect::<Vec<_>>(),
    );
    let started = Instant::now();
    let relays: Vec<Relay> = [0..2, 2..4, 4..6]
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let blocks = format!("{}..{}", b.start, b.end);
            Relay::start(&root.join(format!("r{i}")), &["--model", &id, "--blocks", &blocks, "--bootstrap", &boot])
        })
        .collect();
    println!("three relays fetched and started in {:.1} s", started.elapsed().as_secs_f64());
    for (relay, b) in relays.iter().zip([0..2, 2..4, 4..6]) {
        assert_eq!(relay.model_id(), id, "{:?}", relay.serving);
        let got = fetched(relay);
        let mut expected: Vec<(String, u64)> = vec![("head".into(), parts.head.size)];
        expected.extend(b.clone().map(|i| (format!("block {i}"), parts.blocks[i].size)));
        let mut names: Vec<(String, u64)> = got.iter().map(|(n, bytes, _, _)| (n.clone(), *bytes)).collect();
        names.sort();
        expected.sort();
        // Exactly its own parts, each whole once: it read nothing it does not serve.
        assert_eq!(names, expected, "{:?}", relay.stdout);
        for (part, _, peers, resumed) in &got {
            // The head's 15 ranges are spread over both seeders; a block's two ranges may
            // both go to the faster one (the other's second range is then asked of it too).
            let least = if part == "head" { 2 } else { 1 };
            assert!(*peers >= least, "{part} came from {peers} seeders: {:?}", relay.stdout);
            assert_eq!(*resumed, 0);
        }
        // The creator's card came with the manifest, checked, and is seeded from the store.
        assert!(relay.stdout.contains(&card_line), "{:?}", relay.stdout);
        assert!(relay.data_dir.join("store/cards").join(format!("{id}.card")).exists());
        // Seeding what it fetched: its store holds these parts, named by their roots.
        for i in b {
            assert!(relay.data_dir.join("store/parts").join(&parts.blocks[i].root).exists());
        }
    }
    // Tabs can get a relay's parts over HTTP from what its store holds: r0 has the head and
    // blocks 0 and 1, each the bytes under its root, and not block 4.
    let http = relays[0].http.clone().expect("http");
    let get = |path: &str| ureq::get(&format!("{http}/ait/models/{id}/{path}")).call();
    for (path, r) in [("head", &parts.head), ("blocks/1", &parts.blocks[1])] {
        let body = get(path).expect(path).body_mut().with_config().limit(1 << 30).read_to_vec().expect("body");
        assert_eq!(web_node::model::verified::PartTree::new(&body).root().to_hex(), r.root, "{path}");
    }
    assert!(matches!(get("blocks/4"), Err(ureq::Error::StatusCode(404))));
    // Seeding ratios (`GET /ait/seeding`): each relay received exactly the bytes it fetched;
    // the seeders received nothing; all five sent at least what was received (proofs, and
    // ranges asked twice in the end game).
    let seeding = |r: &Relay| -> (u64, u64) {
        let url = format!("{}/ait/seeding", r.http.as_deref().expect("http"));
        let v: serde_json::Value =
            ureq::get(&url).call().expect("GET /ait/seeding").body_mut().read_json().expect("json");
        (v["sent_bytes"].as_u64().expect("sent"), v["received_bytes"].as_u64().expect("received"))
    };
    let mut all = (0, 0);
    for relay in &relays {
        let (sent, received) = seeding(relay);
        assert_eq!(received, fetched(relay).iter().map(|f| f.1).sum::<u64>(), "{:?}", relay.stdout);
        all = (all.0 + sent, all.1 + received);
    }
    for seeder in [&seed1, &seed2] {
        let (sent, received) = seeding(seeder);
        assert_eq!(received, 0);
        all.0 += sent;
    }
    assert!(all.0 >= all.1 && all.1 > 0, "sent {} < received {}", all.0, all.1);
    // `ait models` finds the model held by all five: a complete copy on each seeder, and each
    // block also on the relay that serves it, so 3 copies of the scarcest part.
    let listed: serde_json::Value = serde_json::from_str(&ait(&["models", "--swarm", &boot, "--json"])).expect("json");
    let m = listed.as_array().and_then(|a| a.iter().find(|m| m["id"] == id.as_str())).expect("the model is listed");
    assert_eq!((m["layers"].as_u64(), m["seeders"].as_u64(), m["copies"].as_u64()), (Some(6), Some(5), Some(3)), "{m}");
    let total = parts.head.size + parts.blocks.iter().map(|b| b.size).sum::<u64>();
    assert_eq!(m["bytes"].as_u64(), Some(total));
    let card = &m["card"];
    assert_eq!(m["creator"].as_str(), Some(seed1.peer.as_str()), "{m}");
    assert_eq!((card["name"].as_str(), card["license"].as_str()), (Some("Tiny Torrent"), Some("mit")), "{m}");
    assert_eq!(card["tags"], serde_json::json!(["chat", "tiny"]), "{m}");
    assert_eq!(card["payout"].as_str(), Some(payout.as_str()));
    assert!(card["parameters"].as_u64().is_some_and(|n| n > 1_000_000), "{m}");
    assert!(card["measured"]["ms_per_block"].as_f64().is_some_and(|ms| ms > 0.0), "{m}");
    let args = ["generate", "--model", p, "--temperature", "0", "--max-tokens", "12", "--prompt", "Hello there"];
    let local = ait(&[&args[..], &["--backend", "cpu"]].concat());
    let swarm = ait(&[&args[..], &["--swarm", &relays[0].addr("tcp")]].concat());
    assert!(!local.trim().is_empty(), "no local output");
    assert_eq!(swarm, local, "the chain of fetched blocks generates otherwise than the file");
    drop(relays);
    let _ = std::fs::remove_dir_all(root);
}

/// Deliverable 5 from a Hugging Face checkpoint: `ait publish DIR --quantize q8_0` converts an
/// f16 checkpoint (config.json, safetensors, tokenizer.json) into a q8_0 GGUF file, prints
/// how far the quantized model's greedy tokens and logits drift from the original's, and
/// publishes it; a relay that knows only the id fetches it and generates what one process
/// does from the converted file. Publishing the same directory again reuses the converted
/// file and its report.
#[test]
fn a_hugging_face_checkpoint_is_quantized_published_and_fetched() {
    use web_node::model::{gguf::GgufModel, Arch, ModelFile, WeightType};
    let root = temp_dir("torrent-hf");
    let vocab = GgufModel::open(&ait_tests::default_model()).expect("default model").config().vocab;
    let hf = root.join("tiny-hf");
    std::fs::create_dir_all(&hf).expect("mkdir");
    TinyModel::random_shape(9, Arch::Llama, (128, 256), 3, vocab, true).write_hf(&hf, WeightType::F16, 1);
    write_default_tokenizer(&hf);
    let card = "---\nlicense: apache-2.0\nlanguage:\n- en\ntags:\n- Smol\n- text-generation\n---\n# Tiny\n";
    std::fs::write(hf.join("README.md"), card).expect("write README.md");
    let args = ["--quantize", "q8_0", "--name", "Tiny HF"];
    let seed = Relay::publish(&root.join("seed"), &hf, &args);
    let line = |r: &Relay, prefix: &str| {
        r.stdout
            .iter()
            .find_map(|l| l.strip_prefix(prefix))
            .map(str::to_string)
            .unwrap_or_else(|| panic!("no {prefix:?} line: {:?}", r.stdout))
    };
    // drift: greedy tokens identical A/72; top-1 agreement B/72; max |logit diff| X; mean KL Y nats
    let drift = line(&seed, "drift: ");
    let nums: Vec<f64> = drift
        .replace("top-1", "top")
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .filter_map(|w| w.parse().ok())
        .collect();
    let [same, total, agree, total2, max_diff, kl, ..] = nums[..] else { panic!("{drift}") };
    assert_eq!((total, total2), (72.0, 72.0), "3 prompts of 24 tokens: {drift}");
    // Where both generated the same tokens, their most likely tokens agree.
    assert!(agree >= same, "{drift}");
    // q8_0 of random weights moves the logits, but only a little.
    assert!(max_diff > 0.0 && kl > 0.0 && kl < 0.05, "{drift}");
    let converted = line(&seed, "converted: ");
    let file = ModelFile::open(Path::new(&converted)).expect("the converted file");
    assert_eq!(file.load_layer(2).expect("layer").ffn_down.dtype, WeightType::Q8_0);
    assert!(file.tokenizer().is_ok() && file.chat_template().is_some());
    let id = line(&seed, "published: model ").split_whitespace().next().expect("id").to_string();
    // The model card's front matter labels the model.
    let listed: serde_json::Value =
        serde_json::from_str(&ait(&["models", "--swarm", &seed.addr("tcp"), "--json"])).expect("json");
    let m = listed.as_array().and_then(|a| a.iter().find(|m| m["id"] == id.as_str())).expect("the model is listed");
    let card = &m["card"];
    assert_eq!((card["name"].as_str(), card["license"].as_str()), (Some("Tiny HF"), Some("apache-2.0")), "{m}");
    assert_eq!(
        (&card["languages"], &card["tags"]),
        (&serde_json::json!(["en"]), &serde_json::json!(["smol", "text-generation"])),
        "{m}"
    );

    let relay = Relay::start(&root.join("r"), &["--model", &id, "--blocks", "0..3", "--bootstrap", &seed.addr("tcp")]);
    assert_eq!(relay.model_id(), id);
    let gen =
        ["generate", "--model", &converted, "--temperature", "0", "--max-tokens", "12", "--prompt", "Hello there"];
    let local = ait(&[&gen[..], &["--backend", "cpu"]].concat());
    let swarm = ait(&[&gen[..], &["--swarm", &relay.addr("tcp")]].concat());
    assert!(!local.trim().is_empty(), "no local output");
    assert_eq!(swarm, local, "the fetched model generates otherwise than the converted file");
    drop((relay, seed));

    let again = Relay::publish(&root.join("seed"), &hf, &args);
    assert!(again.stdout.iter().any(|l| l.ends_with("(kept from an earlier run)")), "{:?}", again.stdout);
    assert_eq!(line(&again, "drift: "), drift);
    assert_eq!(line(&again, "published: model ").split_whitespace().next(), Some(id.as_str()));
    drop(again);
    let _ = std::fs::remove_dir_all(root);
}

/// Number of ranges marked verified in a part's `.have` file.
fn ranges_had(have: &Path) -> usize {
    std::fs::read(have).map(|b| b.iter().filter(|&&x| x == 1).count()).unwrap_or(0)
}

/// Waits (up to 60 s) until `have` marks at least `n` ranges.
fn wait_for_ranges(have: &Path, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while ranges_had(have) < n {
        assert!(Instant::now() < deadline, "{} never had {n} ranges", have.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Deliverable 6b and the store's repair: the head part (15 ranges) from two seeders paced to
/// 32 Mbit/s each. One seeder is killed mid-transfer and the fetch completes from the other.
/// A fetcher killed -9 mid-transfer resumes from the ranges it had verified on disk, fetching
/// only the rest (counted). A stored part corrupted on disk is caught at the next start and
/// fetched again.
#[test]
fn fetches_survive_a_dead_seeder_resume_after_kill_9_and_repair_a_corrupted_store() {
    let root = temp_dir("torrent-resume");
    let (path, manifest) = torrent_model(&root);
    let p = path.to_str().unwrap();
    let id = manifest.id().to_hex();
    let head = manifest.parts.clone().expect("parts").head;
    let ranges = head.size.div_ceil(1 << 20) as usize;
    assert!(ranges >= 8, "the head should span several ranges: {} bytes", head.size);
    let pace = ["--seed-mbps", "32"];
    let seed1 = Relay::start(&root.join("seed1"), &[&["--model", p][..], &pace].concat());
    let boot = seed1.addr("tcp");
    let mut seed2 = Relay::start(&root.join("seed2"), &[&["--model", p, "--bootstrap", &boot][..], &pace].concat());

    // A seeder dies after a few ranges; the fetch ends from the other.
    let dir = root.join("fetcher-a");
    let have = dir.join("store/parts").join(format!("{}.have", head.root));
    let (d, b, i) = (dir.clone(), boot.clone(), id.clone());
    let fetcher = std::thread::spawn(move || Relay::start(&d, &["--model", &i, "--bootstrap", &b]));
    let t0 = Instant::now();
    wait_for_ranges(&have, 3);
    println!("3 ranges after {:.1} s", t0.elapsed().as_secs_f64());
    seed2.kill();
    let a = fetcher.join().expect("fetcher");
    println!("fetcher a ready after {:.1} s", t0.elapsed().as_secs_f64());
    let got = fetched(&a);
    assert_eq!(got.len(), 1, "{:?}", a.stdout);
    assert_eq!((got[0].0.as_str(), got[0].1), ("head", head.size), "{:?}", a.stdout);
    assert_eq!(got[0].2, 2, "both seeders sent ranges before one died: {:?}", a.stdout);
    assert!(dir.join("store/parts").join(&head.root).exists());
    drop(a);

    // A fetcher killed -9 mid-transfer, then restarted.
    let dir = root.join("fetcher-b");
    std::fs::create_dir_all(&dir).expect("dir");
    let have = dir.join("store/parts").join(format!("{}.have", head.root));
    let mut child = ait_tests::procs::ait()
        .args(["relay", "--data-dir", dir.to_str().unwrap(), "--host", "127.0.0.1", "--port", "0", "--no-http"])
        .args(["--model", &id, "--bootstrap", &boot])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("killed.log")).map(Stdio::from).unwrap_or(Stdio::null()))
        .spawn()
        .expect("spawn");
    wait_for_ranges(&have, 4);
    child.kill().expect("kill -9");
    child.wait().expect("reap");
    let had = ranges_had(&have);
    println!("killed after {:.1} s", t0.elapsed().as_secs_f64());
    assert!(had < ranges, "the fetch finished before the kill");
    let b = Relay::start(&dir, &["--model", &id, "--bootstrap", &boot, "--no-http"]);
    let got = fetched(&b);
    assert_eq!(got.len(), 1, "{:?}", b.stdout);
    let (_, bytes, _, resumed) = got[0].clone();
    println!("killed with {had} of {ranges} ranges verified; resumed {resumed} bytes, fetched {bytes}");
    assert!(resumed >= (had as u64) << 20, "resumed {resumed} bytes with {had} ranges on disk");
    assert_eq!(bytes + resumed, head.size, "fetched again what it had verified");
    drop(b);

    // One flipped byte in the stored part: caught at the next start, fetched again whole.
    let stored = dir.join("store/parts").join(&head.root);
    let mut bytes = std::fs::read(&stored).expect("stored head");
    bytes[1000] ^= 1;
    std::fs::write(&stored, bytes).expect("corrupt");
    let c = Relay::start(&dir, &["--model", &id, "--bootstrap", &boot, "--no-http"]);
    println!("c ready after {:.1} s", t0.elapsed().as_secs_f64());
    let got = fetched(&c);
    assert_eq!(got.len(), 1, "{:?}", c.stdout);
    assert_eq!((got[0].1, got[0].3), (head.size, 0), "{:?}", c.stdout);
    let repaired = std::fs::read(&stored).expect("repaired head");
    assert_eq!(web_node::model::verified::PartTree::new(&repaired).root().to_hex(), head.root);
    drop(c);
    let _ = std::fs::remove_dir_all(root);
}

/// Pinning (`--pin-quota-gib`): a relay whose `--pin-creator` list names the creator copies
/// the whole model once it is published; a relay whose list names someone else copies none of
/// it. Once the creator's node is gone, a relay started with only the model id gets every part
/// (and the card) from the pinning relay and generates what one process does from the file.
#[test]
fn a_pinning_relay_keeps_a_trusted_creators_model_after_the_creator_leaves() {
    let root = temp_dir("torrent-pin");
    let (path, manifest) = torrent_model(&root);
    let p = path.to_str().unwrap();
    let id = manifest.id().to_hex();
    let parts = manifest.parts.clone().expect("parts");
    let mut creator = Relay::publish(&root.join("creator"), &path, &["--name", "Pinned"]);
    let boot = creator.addr("tcp");
    let stranger = libp2p::identity::Keypair::generate_ed25519().public().to_peer_id().to_string();
    let pin = |name: &str, trusted: &str| {
        Relay::start(&root.join(name), &["--bootstrap", &boot, "--pin-quota-gib", "1", "--pin-creator", trusted])
    };
    // Started first, so its look at the swarm comes no later than the pinner's.
    let other = pin("other", &stranger);
    let pinner = pin("pinner", &creator.peer);
    let roots: Vec<String> = parts.all().map(|r| r.root.clone()).collect();
    let on_disk = |relay: &Relay, root: &str| relay.data_dir.join("store/parts").join(root).exists();
    let deadline = Instant::now() + Duration::from_secs(90);
    while !roots.iter().all(|r| on_disk(&pinner, r)) {
        assert!(Instant::now() < deadline, "the pinning relay did not copy the model");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(!roots.iter().any(|r| on_disk(&other, r)), "a relay pinned a model by a creator it does not trust");
    let creator_peer = creator.peer.clone();
    creator.kill();
    drop(other);
    let fresh =
        Relay::start(&root.join("fresh"), &["--model", &id, "--blocks", "all", "--bootstrap", &pinner.addr("tcp")]);
    let got = fetched(&fresh);
    assert_eq!(got.len(), roots.len(), "{:?}", fresh.stdout);
    assert!(got.iter().all(|(_, _, peers, _)| *peers == 1), "{:?}", fresh.stdout);
    assert!(fresh.stdout.contains(&format!("card: \"Pinned\" by {creator_peer}")), "{:?}", fresh.stdout);
    let args = ["generate", "--model", p, "--temperature", "0", "--max-tokens", "12", "--prompt", "Hello there"];
    let local = ait(&[&args[..], &["--backend", "cpu"]].concat());
    let swarm = ait(&[&args[..], &["--swarm", &fresh.addr("tcp")]].concat());
    assert_eq!(swarm, local, "the pinned copy generates otherwise than the file");
    drop((fresh, pinner));
    let _ = std::fs::remove_dir_all(root);
}
