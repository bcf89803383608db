//! Batched steps (issue 12): a session's output through [`BlockExecutor::step_batch`] equals
//! its output alone, bit for bit, whatever else shares the batch and however its prefill is
//! cut into chunks; and a step that cannot run fails alone.
//!
//! Each test runs the same schedule twice: every session alone (prefill in one step, then
//! decode steps), and all sessions interleaved in batches that mix prefill chunks and decode
//! steps, in which sessions join late, leave when done, and one is lost mid-way and replayed
//! while the others go on. Over a tiny generated model and over the default model (on wgpu, its
//! first 6 layers), on the CPU and on wgpu (lavapipe here).

use std::ops::Range;
use std::path::Path;

use ait_tests::default_model;
use ait_tests::tiny_model::{TempDir, TinyModel};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use web_node::engine::gpu::GpuContext;
use web_node::engine::{AnyBackend, Backend, BatchStep, BlockExecutor, EngineError, ExecutorConfig, SessionId};
use web_node::model::{ModelFile, WeightType};

/// Prompt lengths of the sessions, and decode steps each runs after its prompt.
const PROMPTS: [usize; 4] = [5, 13, 1, 8];
const DECODE: usize = 4;

fn random(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// Session `s`'s input: its prompt's rows, then one row per decode step.
fn inputs(s: usize, dim: usize) -> Vec<f32> {
    random((PROMPTS[s] + DECODE) * dim, 100 + s as u64)
}

fn executor(file: &ModelFile, layers: Range<usize>, gpu: bool) -> BlockExecutor<AnyBackend> {
    let config = file.config().clone();
    let weights = file.load_layers(layers.clone()).expect("layers");
    let backend = if gpu {
        let ctx = pollster::block_on(GpuContext::new()).expect("a wgpu adapter (lavapipe)");
        AnyBackend::gpu(ctx, config, layers, &weights).expect("wgpu backend")
    } else {
        AnyBackend::cpu(config, layers, weights).expect("cpu backend")
    };
    // No prompt prefixes kept: these tests compare batching with running alone, and
    // `prefixes_are_reused_exactly` tests reuse.
    BlockExecutor::new(backend, ExecutorConfig::default().with_prefix_cache_tokens(0))
}

/// Every session alone: its prompt in one step, then its decode steps. Per session, the
/// output rows of its whole sequence.
fn alone(ex: &mut BlockExecutor<AnyBackend>) -> Vec<Vec<f32>> {
    let dim = ex.backend().config().hidden;
    (0..PROMPTS.len())
        .map(|s| {
            let x = inputs(s, dim);
            let id = ex.open_session(64).expect("open");
            let p = PROMPTS[s];
            let mut out = pollster::block_on(ex.step(id, &x[..p * dim], p)).expect("prefill");
            for t in p..p + DECODE {
                out.extend(pollster::block_on(ex.step(id, &x[t * dim..(t + 1) * dim], 1)).expect("decode"));
            }
            ex.close_session(id).expect("close");
            out
        })
        .collect()
}

/// All sessions in batches: each batch takes the next `chunk` tokens (at most) of every
/// session that has some left, so prompts are cut into chunks and mixed with other sessions'
/// decode steps. Session `s` starts `s` batches late, so batches change membership. With
/// `lose = Some((s, round))` session `s` is lost at that batch (its server closed it): its
/// step there fails alone, then it is replayed in a new session from position 0, in chunks,
/// while the others go on. The replayed outputs must repeat the ones it had, bit for bit;
/// the returned outputs are the replay's.
fn batched(ex: &mut BlockExecutor<AnyBackend>, chunk: usize, lose: Option<(usize, usize)>) -> Vec<Vec<f32>> {
    let dim = ex.backend().config().hidden;
    let xs: Vec<Vec<f32>> = (0..PROMPTS.len()).map(|s| inputs(s, dim)).collect();
    let mut ids: Vec<SessionId> = xs.iter().map(|_| ex.open_session(64).expect("open")).collect();
    let mut done = vec![0usize; PROMPTS.len()];
    let mut outs = vec![Vec::new(); PROMPTS.len()];
    let mut round = 0;
    let mut before_loss = Vec::new();
    loop {
        if let Some((lost, at)) = lose.filter(|&(_, at)| at == round) {
            assert!(done[lost] > 0, "session {lost} has run some steps by batch {at}");
            ex.close_session(ids[lost]).expect("close");
        }
        let mut steps = Vec::new();
        let mut who = Vec::new();
        for s in 0..PROMPTS.len() {
            let total = PROMPTS[s] + DECODE;
            if round < s || done[s] == total {
                continue;
            }
            // Prompt tokens in chunks; decode tokens one per step, as a client sends them.
            let n = if done[s] < PROMPTS[s] { chunk.min(PROMPTS[s] - done[s]) } else { 1 };
            let hidden = &xs[s][done[s] * dim..(done[s] + n) * dim];
            steps.push(BatchStep { id: ids[s], pos: Some(done[s]), hidden, n_tokens: n });
            who.push((s, n));
        }
        if steps.is_empty() {
            break;
        }
        let results = pollster::block_on(ex.step_batch(&steps));
        for ((s, n), r) in who.into_iter().zip(results) {
            if lose.is_some_and(|(lost, at)| lost == s && at == round) {
                assert!(matches!(r, Err(EngineError::UnknownSession(_))), "{:?}", r.err());
                // Replay from the start in a new session; keep what it had to compare.
                before_loss = std::mem::take(&mut outs[s]);
                ids[s] = ex.open_session(64).expect("reopen");
                done[s] = 0;
                continue;
            }
            outs[s].extend(r.expect("batched step"));
            done[s] += n;
        }
        round += 1;
    }
    for id in ids {
        ex.close_session(id).expect("close");
    }
    if let Some((lost, _)) = lose {
        assert!(!before_loss.is_empty());
        let (n, d) = diff(&outs[lost][..before_loss.len()], &before_loss);
        assert_eq!(n, 0, "session {lost}: the replay differs from its first run in {n} values (max {d:e})");
    }
    outs
}

/// How many values differ between `a` and `b` in their bits, and the largest difference.
fn diff(a: &[f32], b: &[f32]) -> (usize, f32) {
    assert_eq!(a.len(), b.len());
    let n = a.iter().zip(b).filter(|(x, y)| x.to_bits() != y.to_bits()).count();
    (n, ait_tests::max_abs_diff(a, b))
}

fn tiny(dir: &TempDir) -> ModelFile {
    let path = dir.path().join("tiny.gguf");
    std::fs::write(&path, TinyModel::random(11, true).gguf(WeightType::Q8_0)).expect("write the model");
    ModelFile::open(&path).expect("open the model")
}

/// Asserts that every schedule gives each session its outputs alone, bit for bit.
/// Then once more with session 1 lost at the fourth batch and replayed while the others go on.
fn assert_batching_exact(file: &ModelFile, layers: Range<usize>, gpu: bool, chunks: &[usize]) {
    let mut ex = executor(file, layers, gpu);
    let reference = alone(&mut ex);
    let runs = chunks.iter().map(|&c| (c, None)).chain([(chunks[chunks.len() - 1], Some((1, 3)))]);
    for (chunk, lose) in runs {
        let got = batched(&mut ex, chunk, lose);
        for (s, (a, b)) in got.iter().zip(&reference).enumerate() {
            let (n, d) = diff(a, b);
            assert_eq!(n, 0, "chunks of {chunk}, lost {lose:?}: session {s}: {n} values differ (max {d:e})");
        }
    }
}

#[test]
fn cpu_batches_are_exact() {
    let dir = TempDir::new("batching-cpu");
    let file = tiny(&dir);
    let n = file.config().n_layers;
    // 64: every prompt whole (batched with others); 4 and 1: prompts cut into chunks.
    assert_batching_exact(&file, 0..n, false, &[64, 4, 1]);
}

#[test]
fn cpu_batches_are_exact_on_the_default_model() {
    let path = default_model();
    let file = ModelFile::open(Path::new(&path)).expect("the default model");
    assert_batching_exact(&file, 0..file.config().n_layers, false, &[64, 3]);
}

#[test]
fn wgpu_batches_are_exact() {
    let dir = TempDir::new("batching-wgpu");
    let file = tiny(&dir);
    let n = file.config().n_layers;
    assert_batching_exact(&file, 0..n, true, &[64, 4, 1]);
}

#[test]
fn wgpu_batches_are_exact_on_the_default_model() {
    let path = default_model();
    let file = ModelFile::open(Path::new(&path)).expect("the default model");
    // Prompts in chunks of 3 only (whole prompts are covered on the tiny model), and the first
    // 6 of the 30 layers: lavapipe is slow (about 20 ms per layer per token here, prefill no
    // faster), and batching is per layer, so more layers of the same shapes test nothing more.
    assert_batching_exact(&file, 0..6, true, &[3]);
}

/// A batch with steps that cannot run (unknown session, wrong position, wrong shape, too
/// long, the same session twice): those fail with their own errors, the others run and give
/// what they give alone; on both backends.
#[test]
fn a_failing_step_fails_alone() {
    for gpu in [false, true] {
        failing_step_fails_alone(gpu);
    }
}

fn failing_step_fails_alone(gpu: bool) {
    let dir = TempDir::new("batching-fail");
    let file = tiny(&dir);
    let mut ex = executor(&file, 0..file.config().n_layers, gpu);
    let dim = ex.backend().config().hidden;
    let reference = alone(&mut ex);
    let good: Vec<SessionId> = (0..2).map(|_| ex.open_session(64).expect("open")).collect();
    let short = ex.open_session(2).expect("open");
    let xs: Vec<Vec<f32>> = (0..2).map(|s| inputs(s, dim)).collect();
    let p = |s: usize| &xs[s][..PROMPTS[s] * dim];
    let steps = [
        BatchStep { id: good[0], pos: Some(0), hidden: p(0), n_tokens: PROMPTS[0] },
        BatchStep { id: SessionId(9999), pos: Some(0), hidden: p(1), n_tokens: PROMPTS[1] },
        BatchStep { id: good[1], pos: Some(3), hidden: p(1), n_tokens: PROMPTS[1] },
        BatchStep { id: good[1], pos: Some(0), hidden: &p(1)[1..], n_tokens: PROMPTS[1] },
        BatchStep { id: short, pos: Some(0), hidden: p(1), n_tokens: PROMPTS[1] },
        BatchStep { id: good[1], pos: Some(0), hidden: p(1), n_tokens: PROMPTS[1] },
        BatchStep { id: good[1], pos: Some(0), hidden: p(1), n_tokens: PROMPTS[1] },
    ];
    let r = pollster::block_on(ex.step_batch(&steps));
    assert_eq!(r[0].as_deref().expect("good step 0"), &reference[0][..PROMPTS[0] * dim]);
    assert!(matches!(r[1], Err(EngineError::UnknownSession(9999))), "{:?}", r[1].as_ref().err());
    assert!(matches!(r[2], Err(EngineError::WrongPosition { held: 0, asked: 3, .. })), "{:?}", r[2].as_ref().err());
    assert!(matches!(r[3], Err(EngineError::Shape { .. })), "{:?}", r[3].as_ref().err());
    assert!(matches!(r[4], Err(EngineError::ContextFull { capacity: 2, .. })), "{:?}", r[4].as_ref().err());
    assert_eq!(r[5].as_deref().expect("good step 1"), &reference[1][..PROMPTS[1] * dim]);
    let held = PROMPTS[1];
    assert!(
        matches!(r[6], Err(EngineError::WrongPosition { held: h, asked: 0, .. }) if h == held),
        "{:?}",
        r[6].as_ref().err()
    );
    assert_eq!(ex.session_len(good[0]).unwrap(), PROMPTS[0]);
    assert_eq!(ex.session_len(good[1]).unwrap(), PROMPTS[1]);
    assert_eq!(ex.session_len(short).unwrap(), 0);
}

/// Sessions whose prompts start with rows a kept prefill had (a shared system prompt, or a
/// whole earlier prompt extended) reuse its keys, values and outputs, and get the bits they
/// get with no reuse, in their prefill and in the decode steps after; on both backends.
#[test]
fn prefixes_are_reused_exactly() {
    for gpu in [false, true] {
        let dir = TempDir::new("batching-prefix");
        let file = tiny(&dir);
        let layers = 0..file.config().n_layers;
        let mut plain = executor(&file, layers.clone(), gpu);
        let mut ex = executor(&file, layers, gpu);
        ex = BlockExecutor::new(ex.into_backend(), ExecutorConfig::default().with_prefix_cache_tokens(64));
        let dim = ex.backend().config().hidden;
        let shared = random(10 * dim, 1);
        let a = [shared.clone(), random(5 * dim, 2)].concat();
        let b = [shared.clone(), random(7 * dim, 3)].concat();
        let c = [a.clone(), random(3 * dim, 4)].concat();
        let d = random(9 * dim, 5);
        let e = [shared, random(2 * dim, 6)].concat();
        let decode = random(3 * dim, 7);
        // Prompt, then three decode steps, alone; with `chunk`, the prompt in chunks.
        let run = |ex: &mut BlockExecutor<AnyBackend>, prompts: &[&Vec<f32>], chunk: usize| {
            let ids: Vec<SessionId> = prompts.iter().map(|_| ex.open_session(32).expect("open")).collect();
            let mut outs = vec![Vec::new(); prompts.len()];
            let mut at = 0;
            while prompts.iter().any(|p| at * dim < p.len()) {
                let steps: Vec<BatchStep> = (0..prompts.len())
                    .filter(|&i| at * dim < prompts[i].len())
                    .map(|i| {
                        let n = chunk.min(prompts[i].len() / dim - at);
                        BatchStep {
                            id: ids[i],
                            pos: Some(at),
                            hidden: &prompts[i][at * dim..(at + n) * dim],
                            n_tokens: n,
                        }
                    })
                    .collect();
                let who: Vec<usize> = (0..prompts.len()).filter(|&i| at * dim < prompts[i].len()).collect();
                for (i, r) in who.into_iter().zip(pollster::block_on(ex.step_batch(&steps))) {
                    outs[i].extend(r.expect("prefill"));
                }
                at += chunk;
            }
            for t in 0..3 {
                let steps: Vec<BatchStep> = (0..prompts.len())
                    .map(|i| BatchStep { id: ids[i], pos: None, hidden: &decode[t * dim..(t + 1) * dim], n_tokens: 1 })
                    .collect();
                for (i, r) in pollster::block_on(ex.step_batch(&steps)).into_iter().enumerate() {
                    outs[i].extend(r.expect("decode"));
                }
            }
            for id in ids {
                ex.close_session(id).expect("close");
            }
            outs
        };
        let want = run(&mut plain, &[&a, &b, &c, &d], 64);
        let want_e = run(&mut plain, &[&e], 64);
        assert_eq!(plain.prefix_reuse(), (0, 0));
        // `a` first and alone: kept. Then `b` (its first 10 rows), `c` (all 15 of `a`) and `d`
        // (nothing) in one batch; then `e` in chunks of 4: 3 rows of each of its first two
        // (each step computes its last row) and the 2 shared rows of its third.
        let mut got = run(&mut ex, &[&a], 64);
        got.extend(run(&mut ex, &[&b, &c, &d], 64));
        let got_e = run(&mut ex, &[&e], 4);
        assert_eq!(ex.prefix_reuse(), (5, 10 + 15 + 3 + 3 + 2), "gpu {gpu}: steps and tokens reused");
        for (s, (g, w)) in got.iter().chain(&got_e).zip(want.iter().chain(&want_e)).enumerate() {
            let (n, d) = diff(g, w);
            assert_eq!(n, 0, "gpu {gpu}: session {s}: {n} values differ from no reuse (max {d:e})");
        }
    }
}
