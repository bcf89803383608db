//! Replays every saved corpus input (`fuzz/corpus/<target>/*`) and every built-in seed
//! through its target on the stable toolchain: what the fuzzer once found, or kept for its
//! coverage, must still neither panic nor hang.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ait_fuzz_targets::net::{record_key, sign_record_payload, RECORD_NOW_MS};
use ait_fuzz_targets::TARGETS;
use web_node::net::record::ServerRecord;

/// Longest one input may take (the fuzzing runs use `-timeout=10`).
const PER_INPUT: Duration = Duration::from_secs(10);

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../corpus").join(target)
}

fn replay(target: &str, run: fn(&[u8]), name: &str, bytes: &[u8]) {
    let start = Instant::now();
    run(bytes);
    let took = start.elapsed();
    assert!(took < PER_INPUT, "{target}/{name} took {took:?}");
}

#[test]
fn saved_corpora_replay() {
    for &(target, run) in TARGETS {
        let dir = corpus_dir(target);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.expect("a directory entry").path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "{} holds no inputs", dir.display());
        let start = Instant::now();
        for path in &files {
            let bytes = std::fs::read(path).expect("a corpus file reads");
            replay(target, run, &path.display().to_string(), &bytes);
        }
        println!("{target}: {} inputs in {:?}", files.len(), start.elapsed());
    }
}

#[test]
fn built_in_seeds_replay() {
    for (target, name, bytes) in ait_fuzz_targets::seeds::all(None) {
        // Without the `api` feature, its seeds have no target.
        let Some(&(_, run)) = TARGETS.iter().find(|(t, _)| *t == target) else { continue };
        replay(target, run, &name, &bytes);
    }
}

/// The record target signs payloads the way servers do: a real record signed by it verifies,
/// so fuzzed payloads get past the signature check to the record's checks.
#[test]
fn record_target_signs_like_a_server() {
    let seeds = ait_fuzz_targets::seeds::all(None);
    let (_, _, payload) = seeds.iter().find(|(t, n, _)| *t == "record" && n == "payload").expect("a payload seed");
    let peer = record_key().public().to_peer_id();
    let rec = ServerRecord::verify_any(&sign_record_payload(&payload[1..]), &peer, RECORD_NOW_MS);
    assert!(rec.is_ok(), "{rec:?}");
}

fn seed(target: &str, name: &str) -> Vec<u8> {
    let seeds = ait_fuzz_targets::seeds::all(None);
    seeds.into_iter().find(|(t, n, _)| *t == target && n == name).map(|(_, _, b)| b).expect("a seed of that name")
}

/// The session seeds reach the compute loop: a generation gets hidden states back for every
/// step, so fuzzing starts from inputs that run the model.
#[test]
fn session_seed_runs_the_model() {
    use web_node::net::frame::{read_frame, MAX_FRAME};
    use web_node::net::protocol::Response;
    let out = ait_fuzz_targets::net::session_output(&seed("session", "generate"));
    let mut r = futures::io::Cursor::new(out);
    let mut kinds = Vec::new();
    futures::executor::block_on(async {
        while let Ok(f) = read_frame(&mut r, MAX_FRAME, PER_INPUT, PER_INPUT).await {
            kinds.push(match Response::decode(&f).expect("the server's answers decode") {
                Response::Opened { .. } => "opened".to_string(),
                Response::Hidden { n_tokens, .. } => format!("hidden {n_tokens}"),
                other => format!("{other:?}"),
            });
        }
    });
    assert_eq!(kinds, ["opened", "hidden 3", "hidden 1", "hidden 1"]);
}

/// The API seeds reach generation: a chat completion of the tiny model answers 200 with a
/// choice, and a streamed one ends with `[DONE]`.
#[cfg(feature = "api")]
#[test]
fn api_seeds_generate() {
    let (status, body) = ait_fuzz_targets::api::call(&seed("api", "chat")).expect("a request");
    let body = String::from_utf8_lossy(&body);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"choices\""), "{body}");
    let (status, body) = ait_fuzz_targets::api::call(&seed("api", "chat_stream")).expect("a request");
    let body = String::from_utf8_lossy(&body);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("data: [DONE]"), "{body}");
    let (status, _) = ait_fuzz_targets::api::call(&seed("api", "block")).expect("a request");
    assert_eq!(status, 200);
}

/// The report target's seeds reach past decoding: one report checks (so fuzzed reports get
/// to `check` and `judge`), the other decodes and is refused by `check`.
#[test]
fn report_seeds_reach_the_check() {
    use web_node::trust::{FraudReport, ReportError};
    let seeds = ait_fuzz_targets::seeds::all(None);
    let seed = |name: &str| {
        let (_, _, bytes) = seeds.iter().find(|(t, n, _)| *t == "report" && n == name).expect("a report seed");
        FraudReport::decode(bytes).expect("the seed decodes")
    };
    seed("convicting").check().expect("the convicting seed checks");
    let refused = seed("clearing").check().expect_err("the clearing seed convicts nobody");
    assert!(matches!(refused, ReportError::NoConviction(_)), "{refused}");
}
