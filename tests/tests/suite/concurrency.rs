//! Many people at once (issue 12): 64 concurrent streamed chat completions through the API of
//! a three-relay chain (real processes; every relay batches the steps of all its sessions,
//! and the first one batches its requests' LM-head products). Every request completes, none
//! is dropped, and each gets, at temperature 0, exactly the text it gets alone.

use std::io::{BufRead, BufReader};
use std::time::Instant;

use ait_tests::default_model;
use ait_tests::procs::{temp_dir, three_relays_with};
use serde_json::{json, Value};

/// Distinct prompts; each is sent [`REPEATS`] times in the concurrent round.
const PROMPTS: [&str; 8] = [
    "Name a color.",
    "What is 2 + 2?",
    "Say hello in French.",
    "Name a planet.",
    "What is the capital of Spain?",
    "Count to three.",
    "Name a fruit.",
    "What do bees make?",
];
const REPEATS: usize = 8;
const MAX_TOKENS: usize = 12;

/// One streamed chat completion: its text.
fn chat(base: &str, model: &str, prompt: &str) -> String {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let body = json!({ "model": model, "stream": true, "temperature": 0, "max_tokens": MAX_TOKENS,
                       "messages": [{ "role": "user", "content": prompt }] });
    let mut resp = agent.post(format!("{base}/v1/chat/completions")).send_json(&body).expect("request sent");
    let status = resp.status();
    assert!(status.is_success(), "status {status}: {}", resp.body_mut().read_to_string().unwrap_or_default());
    let mut text = String::new();
    for line in BufReader::new(resp.into_body().into_reader()).lines() {
        let line = line.expect("read the stream");
        let Some(data) = line.strip_prefix("data: ") else { continue };
        if data == "[DONE]" {
            return text;
        }
        let v: Value = serde_json::from_str(data).expect("a JSON event");
        assert!(v.get("error").is_none(), "{prompt:?}: {v}");
        text.push_str(v["choices"][0]["delta"]["content"].as_str().unwrap_or_default());
    }
    panic!("{prompt:?}: the stream ended without [DONE] after {text:?}");
}

#[test]
fn sixty_four_concurrent_chats_through_a_chain_get_their_own_text() {
    let model = default_model();
    let root = temp_dir("concurrency");
    // All clients come from one address: lift the per-IP connection cap (64).
    let relays = three_relays_with(&root, &model, &["--http-max-connections-per-ip", "256"]);
    let base = relays[0].http.clone().expect("HTTP");
    let agent: ureq::Agent = ureq::Agent::config_builder().build().into();
    let models: Value = agent.get(format!("{base}/v1/models")).call().expect("models").body_mut().read_json().unwrap();
    let name = models["data"][0]["id"].as_str().expect("a model").to_string();

    let started = Instant::now();
    let alone: Vec<String> = PROMPTS.iter().map(|p| chat(&base, &name, p)).collect();
    let alone_secs = started.elapsed().as_secs_f64();
    assert!(alone.iter().all(|t| !t.is_empty()), "{alone:?}");

    let started = Instant::now();
    let together: Vec<(usize, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..PROMPTS.len() * REPEATS)
            .map(|i| {
                let (base, name) = (&base, &name);
                s.spawn(move || (i % PROMPTS.len(), chat(base, name, PROMPTS[i % PROMPTS.len()])))
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("a request failed")).collect()
    });
    eprintln!(
        "{} prompts alone in {alone_secs:.1} s; {} requests at once in {:.1} s",
        PROMPTS.len(),
        together.len(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(together.len(), PROMPTS.len() * REPEATS);
    for (p, text) in &together {
        assert_eq!(text, &alone[*p], "prompt {:?}: another text when sharing batches", PROMPTS[*p]);
    }
    drop(relays);
    let _ = std::fs::remove_dir_all(root);
}
