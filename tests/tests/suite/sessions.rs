//! Sessions of one executor on the real model (CPU backend): independent KV caches, limits,
//! idle expiry, and clear errors for bad steps.

use std::time::Duration;

use ait_tests::default_model;
use web_node::engine::{AnyBackend, BlockExecutor, EngineError, ExecutorConfig};
use web_node::model::ModelFile;

fn executor(config: ExecutorConfig) -> (BlockExecutor<AnyBackend>, Vec<f32>, Vec<f32>, usize) {
    let file = ModelFile::open(&default_model()).expect("model opens");
    let c = file.config().clone();
    let head = file.load_head().expect("head");
    let embed = |tokens: &[u32]| {
        let mut out = vec![0.0; tokens.len() * c.hidden];
        for (t, row) in tokens.iter().zip(out.chunks_exact_mut(c.hidden)) {
            head.token_embd.dequantize_row(*t as usize, row);
        }
        out
    };
    let a = embed(&[1, 9690, 198, 2683, 314, 260, 3575, 282, 4649, 47]);
    let b = embed(&[504, 3586, 2816, 28120, 17, 314, 253, 2136]);
    let layers = file.load_layers(0..4).expect("layers");
    let backend = AnyBackend::cpu(c.clone(), 0..4, layers).expect("backend");
    (BlockExecutor::new(backend, config), a, b, c.hidden)
}

/// Runs `x` (`[n, hidden]`) as a prefill of all but the last token, then one decode step.
fn run(e: &mut BlockExecutor<AnyBackend>, id: web_node::engine::SessionId, x: &[f32], h: usize) -> Vec<Vec<f32>> {
    let n = x.len() / h;
    vec![
        pollster::block_on(e.step(id, &x[..(n - 1) * h], n - 1)).expect("prefill"),
        pollster::block_on(e.step(id, &x[(n - 1) * h..], 1)).expect("decode"),
    ]
}

#[test]
fn interleaved_sessions_equal_each_run_alone() {
    let (mut e, a, b, h) = executor(ExecutorConfig::default());
    let sa = e.open_session(64).expect("open a");
    let alone_a = run(&mut e, sa, &a, h);
    e.close_session(sa).expect("close a");
    let sb = e.open_session(64).expect("open b");
    let alone_b = run(&mut e, sb, &b, h);
    e.close_session(sb).expect("close b");

    // Now interleave: a's prefill, b's prefill, a's decode, b's decode.
    let (sa, sb) = (e.open_session(64).expect("a"), e.open_session(64).expect("b"));
    assert_eq!(e.session_count(), 2);
    let (na, nb) = (a.len() / h, b.len() / h);
    let pa = pollster::block_on(e.step(sa, &a[..(na - 1) * h], na - 1)).expect("a prefill");
    let pb = pollster::block_on(e.step(sb, &b[..(nb - 1) * h], nb - 1)).expect("b prefill");
    let da = pollster::block_on(e.step(sa, &a[(na - 1) * h..], 1)).expect("a decode");
    let db = pollster::block_on(e.step(sb, &b[(nb - 1) * h..], 1)).expect("b decode");
    assert_eq!(vec![pa, da], alone_a, "session a changed by session b");
    assert_eq!(vec![pb, db], alone_b, "session b changed by session a");
    assert_eq!(e.session_len(sa).expect("len"), na);
}

#[test]
fn limits_and_bad_steps_are_errors() {
    let (mut e, a, _, h) = executor(ExecutorConfig::new().with_max_sessions(2).with_max_session_len(16));
    assert!(matches!(e.open_session(17), Err(EngineError::SessionTooLong { asked: 17, limit: 16 })));
    let s1 = e.open_session(4).expect("s1");
    let _s2 = e.open_session(4).expect("s2");
    assert!(matches!(e.open_session(4), Err(EngineError::TooManySessions(2))));
    // Wrong shape: 1.5 tokens' worth of values.
    let err = pollster::block_on(e.step(s1, &a[..h + h / 2], 1)).unwrap_err();
    assert!(matches!(err, EngineError::Shape { .. }), "{err}");
    // Past the capacity of 4 tokens.
    let err = pollster::block_on(e.step(s1, &a[..5 * h], 5)).unwrap_err();
    assert_eq!(err.to_string(), format!("session {}: 0 + 5 tokens exceeds its capacity of 4", s1.0));
    // The failed steps left the session usable.
    pollster::block_on(e.step(s1, &a[..4 * h], 4)).expect("a step that fits");
    e.close_session(s1).expect("close");
    assert!(matches!(e.close_session(s1), Err(EngineError::UnknownSession(_))));
    let unknown = web_node::engine::SessionId(999);
    assert!(matches!(pollster::block_on(e.step(unknown, &a[..h], 1)), Err(EngineError::UnknownSession(999))));
}

#[test]
fn idle_sessions_expire() {
    // A timeout long enough that the fresh session, stepped right after it opens, never comes
    // near it on a loaded machine (it closes idle sessions too).
    let (mut e, a, _, h) = executor(ExecutorConfig::new().with_idle_timeout(Duration::from_secs(1)));
    let old = e.open_session(8).expect("old");
    std::thread::sleep(Duration::from_millis(2500));
    let fresh = e.open_session(8).expect("fresh");
    assert_eq!(e.session_count(), 1, "the idle session was not closed");
    assert!(matches!(pollster::block_on(e.step(old, &a[..h], 1)), Err(EngineError::UnknownSession(_))));
    pollster::block_on(e.step(fresh, &a[..h], 1)).expect("fresh session works");
}

#[test]
fn max_tokens_zero_generates_nothing() {
    use relay::local::{BackendKind, LocalModel};
    use web_node::client::{FinishReason, GenerateOptions, SamplingParams};
    let mut m = LocalModel::load(&default_model(), BackendKind::Cpu, None).expect("model");
    let prompt = m.client.encode("The capital of France is").expect("tokens");
    let opts = GenerateOptions { max_tokens: 0, sampling: SamplingParams::greedy(), ..GenerateOptions::default() };
    let g = pollster::block_on(m.client.generate(&mut m.chain, &prompt, &opts, |_| {})).expect("runs");
    assert!(g.tokens.is_empty() && g.text.is_empty(), "generated {:?}", g.text);
    assert_eq!(g.finish, FinishReason::Length);
}
