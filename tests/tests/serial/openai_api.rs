//! The OpenAI-compatible API (issue 5, test 4) checked with the official `openai` Python
//! package (`tests/openai/check_api.py`) against a relay holding every block, and against the
//! first relay of a three-relay chain (the API relay then runs as a client of the swarm); plus
//! `ait chat` against both the API and the swarm.

use std::io::Write;
use std::path::PathBuf;
use std::process::Stdio;

use ait_tests::procs::{ait, temp_dir, three_relays, Relay};
use ait_tests::{default_model, python};

use crate::serial;

fn check_api(base: &str, key: &str) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("openai/check_api.py");
    let out = python().arg(&script).arg(base).arg(key).output().expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "API checks failed against {base}:\n{stdout}\n{stderr}");
    assert!(stdout.contains("all API checks passed"), "{stdout}");
}

fn chat(args: &[&str], input: &str) -> String {
    let mut child = ait()
        .arg("chat")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ait chat");
    child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("write");
    let out = child.wait_with_output().expect("ait chat ends");
    assert!(out.status.success(), "ait chat failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn openai_sdk_against_one_relay_and_ait_chat() {
    let _serial = serial();
    let model = default_model();
    let root = temp_dir("api-one");
    let relay = Relay::start(
        &root.join("r"),
        &["--model", model.to_str().unwrap(), "--blocks", "all", "--api-key", "test-key", "--api-concurrency", "4"],
    );
    let base = relay.http.clone().expect("the relay serves HTTP");
    check_api(&base, "test-key");

    // `ait chat` over the API: a follow-up question uses the history; /reset forgets it.
    let input = "What is the capital of France?\nAnd of Italy?\n/reset\nWhat did I ask first?\n/exit\n";
    let url_args = ["--url", base.as_str(), "--api-key", "test-key", "--temperature", "0", "--max-tokens", "40"];
    let out = chat(&url_args, input);
    assert!(out.contains("Paris"), "{out}");
    assert!(out.contains("Rome"), "the follow-up should be answered in context: {out}");
    assert!(out.contains("(conversation cleared)"), "{out}");
    let _ = std::fs::remove_dir_all(root);
}

#[test]
fn openai_sdk_against_a_three_relay_chain_and_ait_chat_over_the_swarm() {
    let _serial = serial();
    let model = default_model();
    let root = temp_dir("api-chain");
    let relays: Vec<Relay> = three_relays(&root, &model);
    // The first relay serves [0, 10) itself (in-process) and reaches [10, 30) over the swarm.
    check_api(relays[0].http.as_deref().expect("HTTP"), "none");

    let swarm_args = ["--swarm", &relays[1].addr("tcp"), "--model", model.to_str().unwrap(), "--temperature", "0"];
    let out = chat(&swarm_args, "What is the capital of France?\n");
    assert!(out.contains("Paris"), "{out}");
    let _ = std::fs::remove_dir_all(root);
}
