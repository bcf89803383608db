//! `ait calibrate`: how far honest computations of one block range drift apart between our
//! backends, and how far each way of lying moves the same metric, so that the audit's limit
//! ([`web_node::trust::DELTA_LIMIT`]) is chosen from numbers.
//!
//! For each layer range and prompt, the node's side runs the range as a session does (one
//! prefill, then one decode step per token) and the auditor's side as an audit does (the
//! whole span as one prefill), on every pair of backends. The faults run on the CPU backend
//! as a session does:
//! - `skip-layer`: the range without its middle layer;
//! - `other-quant`: the range's weights requantized (the default model's Q4_1 to Q4_0; a
//!   generated model published as Q8_0 runs its Q4_1);
//! - `other-weights`: another model's weights of the same shape (a generated model: another
//!   seed; the default model: the layers half the model away);
//! - `noise`: the honest output plus Gaussian noise of 1e-3 of its root mean square;
//! - `input-returned`: the input, unchanged;
//! - `stale`: each decode step answered with the previous position's output.
//!
//! The metric is [`web_node::trust::deviation`] per token. The report gives, per range and
//! phase (prefill tokens, decode tokens), the worst honest deviation over every backend pair
//! and the mildest faked token of each fault, against every auditor backend.

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};
use web_node::engine::gpu::GpuContext;
use web_node::engine::{AnyBackend, Backend};
use web_node::model::quant::quantize;
use web_node::model::{Arch, ChatMessage, LayerWeights, LlamaConfig, ModelFile, QMatrix, WeightType};
use web_node::trust::{deviation, DELTA_LIMIT};

use crate::local::{pick_gpu, BackendKind};

/// Options of `ait calibrate`.
#[derive(Clone, Debug, clap::Args)]
pub struct CalibrateOpt {
    /// Model file; default: SmolLM2-135M-Instruct Q4_1.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Layer ranges of the model, as START..END; default: the model in three equal parts.
    #[arg(long, value_delimiter = ',')]
    pub ranges: Vec<String>,
    /// Backends to compare (wgpu on a GPU, or on a CPU Vulkan device such as lavapipe).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [BackendKind::Cpu, BackendKind::Wgpu])]
    pub backend: Vec<BackendKind>,
    /// Decode steps after each prompt's prefill (the prompt's last tokens, one at a time).
    #[arg(long, default_value_t = 8)]
    pub decode_steps: usize,
    /// Also calibrate a generated model of another shape (hidden 256, 6 layers, Q8_0).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub generated: bool,
}

/// The prompts of the calibration (the audit tests use others).
pub const PROMPTS: [&str; 3] = [
    "Name three rivers of Africa and the seas they flow into.",
    "Write a haiku about autumn rain on a tin roof.",
    "What does a compiler do, in two sentences?",
];

/// The fault classes, in report order.
pub const FAULTS: [&str; 6] = ["skip-layer", "other-quant", "other-weights", "noise", "input-returned", "stale"];

/// A model to calibrate: its layers, the faulty weights, and the inputs of its first layer.
struct Subject {
    name: String,
    config: LlamaConfig,
    layers: Vec<LayerWeights>,
    /// The same layers in another quantization, and its name.
    requantized: (String, Vec<LayerWeights>),
    /// Other weights of the same shape, and where they come from.
    other: (String, Vec<LayerWeights>),
    /// Per prompt, `[tokens, hidden]` embeddings (the first layer's input).
    inputs: Vec<Vec<f32>>,
    ranges: Vec<Range<usize>>,
}

/// Per-token deviations of one session (prompt), split by phase.
#[derive(Clone, Debug, Default)]
pub struct Samples {
    /// Tokens of the session's prefill.
    pub prefill: Vec<f32>,
    /// Tokens of its decode steps.
    pub decode: Vec<f32>,
}

/// One comparison (an honest pair of backends, or a fault against an auditor's backend) over
/// every session of one range.
#[derive(Clone, Debug)]
pub struct Comparison {
    /// What was compared (`wgpu session vs cpu audit`, `noise vs wgpu audit`).
    pub name: String,
    /// The fault class, one of [`FAULTS`], or `None` for an honest pair.
    pub fault: Option<&'static str>,
    /// Per session, the deviation of each token (of each faked token, for a fault).
    pub sessions: Vec<Samples>,
}

impl Comparison {
    /// The per-token deviations of `phase` (`None`: both).
    fn tokens(&self, phase: Option<Phase>) -> impl Iterator<Item = f32> + '_ {
        self.sessions.iter().flat_map(move |s| {
            let (p, d) = match phase {
                None => (&s.prefill[..], &s.decode[..]),
                Some(Phase::Prefill) => (&s.prefill[..], &[][..]),
                Some(Phase::Decode) => (&[][..], &s.decode[..]),
            };
            p.iter().chain(d).copied()
        })
    }

    /// The largest per-token deviation.
    pub fn max_token(&self) -> f32 {
        self.tokens(None).fold(0.0, f32::max)
    }

    /// The smallest per-token deviation.
    pub fn min_token(&self) -> f32 {
        self.tokens(None).fold(f32::INFINITY, f32::min)
    }

    /// The smallest over sessions of each session's worst token: what an audit of a whole
    /// session (which judges its worst token) sees of the mildest session.
    pub fn min_session(&self) -> f32 {
        let worst = |s: &Samples| s.prefill.iter().chain(&s.decode).copied().fold(0.0, f32::max);
        self.sessions.iter().map(worst).fold(f32::INFINITY, f32::min)
    }

    /// A cell of the report for `phase`: the maximum for an honest pair, min / median for a
    /// fault.
    fn cell(&self, phase: Phase) -> String {
        let v: Vec<f32> = self.tokens(Some(phase)).collect();
        match (v.is_empty(), self.fault) {
            (true, _) => "-".into(),
            (false, None) => format!("{:.3e}", v.iter().copied().fold(0.0, f32::max)),
            (false, Some(_)) => {
                let min = v.iter().copied().fold(f32::INFINITY, f32::min);
                let median = crate::bench::median(&v.iter().map(|&x| f64::from(x)).collect::<Vec<_>>());
                format!("{min:.3e} / {median:.3e}")
            }
        }
    }
}

/// A phase of a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Prefill,
    Decode,
}

/// What the calibration of one range of one model measured.
#[derive(Clone, Debug)]
pub struct RangeCalibration {
    /// The model.
    pub model: String,
    /// The layer range.
    pub range: Range<usize>,
    /// Sessions (prompts) and tokens in all.
    pub sessions: usize,
    /// Tokens in all.
    pub tokens: usize,
    /// Decode steps per session.
    pub decode_steps: usize,
    /// Honest pairs of backends.
    pub honest: Vec<Comparison>,
    /// Faults against each auditor backend.
    pub faults: Vec<Comparison>,
}

/// A whole calibration: every range of every model.
#[derive(Clone, Debug, Default)]
pub struct Calibration {
    /// The backends compared (and the wgpu adapter).
    pub backends: Vec<String>,
    /// Per range.
    pub ranges: Vec<RangeCalibration>,
}

impl Calibration {
    /// The worst honest per-token deviation, and where.
    pub fn worst_honest(&self) -> (f32, String) {
        self.extreme(|r| &r.honest, Comparison::max_token, |a, b| a > b, 0.0)
    }

    /// Honest checks made (a session against an audit, per pair of backends) and how many
    /// of them an audit would have failed (a token above [`DELTA_LIMIT`]): false positives.
    pub fn honest_verdicts(&self) -> (usize, usize) {
        let sessions = self.ranges.iter().flat_map(|r| &r.honest).flat_map(|c| &c.sessions);
        let worst = |s: &Samples| s.prefill.iter().chain(&s.decode).copied().fold(0.0, f32::max);
        sessions.fold((0, 0), |(n, bad), s| (n + 1, bad + usize::from(worst(s) > DELTA_LIMIT)))
    }

    /// The mildest faked token, and where.
    pub fn mildest_token(&self) -> (f32, String) {
        self.extreme(|r| &r.faults, Comparison::min_token, |a, b| a < b, f32::INFINITY)
    }

    /// The mildest faked session (judged by its worst token), and where.
    pub fn mildest_session(&self) -> (f32, String) {
        self.extreme(|r| &r.faults, Comparison::min_session, |a, b| a < b, f32::INFINITY)
    }

    /// The mildest session of fault class `fault`.
    pub fn mildest_session_of(&self, fault: &str) -> f32 {
        self.of(fault).map(Comparison::min_session).fold(f32::INFINITY, f32::min)
    }

    /// The mildest faked token of fault class `fault`.
    pub fn mildest_token_of(&self, fault: &str) -> f32 {
        self.of(fault).map(Comparison::min_token).fold(f32::INFINITY, f32::min)
    }

    /// Every comparison of fault class `fault`.
    fn of<'a>(&'a self, fault: &'a str) -> impl Iterator<Item = &'a Comparison> + 'a {
        self.ranges.iter().flat_map(|r| &r.faults).filter(move |c| c.fault == Some(fault))
    }

    fn extreme(
        &self,
        pick: impl Fn(&RangeCalibration) -> &Vec<Comparison>,
        value: impl Fn(&Comparison) -> f32,
        better: impl Fn(f32, f32) -> bool,
        start: f32,
    ) -> (f32, String) {
        let mut best = (start, String::new());
        for r in &self.ranges {
            for c in pick(r) {
                let v = value(c);
                if better(v, best.0) {
                    best = (v, format!("{}, layers {:?}: {}", r.model, r.range, c.name));
                }
            }
        }
        best
    }
}

impl fmt::Display for Calibration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut model = "";
        for r in &self.ranges {
            if r.model != model {
                model = &r.model;
                writeln!(f, "\n{model}")?;
            }
            writeln!(
                f,
                "  layers {:?}: {} sessions, {} tokens ({} decode steps each)",
                r.range, r.sessions, r.tokens, r.decode_steps
            )?;
            writeln!(f, "    {:<34} {:>24} {:>24}", "honest (max per token)", "prefill tokens", "decode tokens")?;
            for c in &r.honest {
                writeln!(f, "    {:<34} {:>24} {:>24}", c.name, c.cell(Phase::Prefill), c.cell(Phase::Decode))?;
            }
            writeln!(
                f,
                "    {:<34} {:>24} {:>24}",
                "faults (min / median per token)", "prefill tokens", "decode tokens"
            )?;
            for c in &r.faults {
                writeln!(f, "    {:<34} {:>24} {:>24}", c.name, c.cell(Phase::Prefill), c.cell(Phase::Decode))?;
            }
        }
        let floor = |v: f32| v.max(f32::MIN_POSITIVE);
        let (honest, token, session) = (self.worst_honest(), self.mildest_token(), self.mildest_session());
        writeln!(f, "\nbackends compared: {}", self.backends.join(", "))?;
        writeln!(f, "worst honest token:   {:.3e} ({})", honest.0, honest.1)?;
        writeln!(f, "mildest faked token:  {:.3e} ({})", token.0, token.1)?;
        writeln!(f, "mildest faked session (its worst token): {:.3e} ({})", session.0, session.1)?;
        writeln!(f, "per fault class, mildest token / mildest session:")?;
        for fault in FAULTS {
            writeln!(f, "  {fault:<16} {:.3e} / {:.3e}", self.mildest_token_of(fault), self.mildest_session_of(fault))?;
        }
        writeln!(
            f,
            "limit {DELTA_LIMIT:.1e}: {:.0}x the worst honest token; the mildest faked token is {:.2}x it, \
             the mildest faked session {:.1}x it",
            DELTA_LIMIT / floor(honest.0),
            token.0 / DELTA_LIMIT,
            session.0 / DELTA_LIMIT
        )
    }
}

/// Runs the calibration and prints its report.
pub fn run(o: CalibrateOpt) -> anyhow::Result<()> {
    let path = match &o.model {
        Some(p) => p.clone(),
        None => crate::fetch::default_model()?,
    };
    let gpu = if o.backend.iter().any(|b| *b != BackendKind::Cpu) {
        Some(pick_gpu(BackendKind::Wgpu)?.context("no wgpu device")?)
    } else {
        None
    };
    let mut subjects = vec![model_subject(&path, &o.ranges)?];
    if o.generated {
        subjects.push(generated_subject(0x5eed, PROMPTS.len()));
    }
    let mut c = Calibration { backends: backends(gpu.as_ref()), ranges: Vec::new() };
    for s in &subjects {
        for range in &s.ranges {
            c.ranges.push(pollster::block_on(calibrate_range(s, range.clone(), gpu.as_ref(), o.decode_steps, true))?);
        }
    }
    print!("{c}");
    Ok(())
}

/// The calibration of a generated model of another shape than the default (see
/// `generated_subject`), its weights and inputs from `seed`: `sessions` sessions of 24
/// tokens, the last `decode_steps` of them decoded one at a time, on the CPU backend and on
/// `gpu` if given.
pub fn calibrate_generated(
    seed: u64,
    sessions: usize,
    gpu: Option<&Arc<GpuContext>>,
    decode_steps: usize,
) -> anyhow::Result<Calibration> {
    generated(seed, sessions, gpu, decode_steps, true)
}

/// Honest checks only, as [`calibrate_generated`] makes them (every session on each backend
/// against an audit on each backend), without the faults: what the false-positive count is
/// made of. Each session of each range and each pair of backends is one check.
pub fn honest_checks(
    seed: u64,
    sessions: usize,
    gpu: Option<&Arc<GpuContext>>,
    decode_steps: usize,
) -> anyhow::Result<Calibration> {
    generated(seed, sessions, gpu, decode_steps, false)
}

fn generated(
    seed: u64,
    sessions: usize,
    gpu: Option<&Arc<GpuContext>>,
    decode_steps: usize,
    with_faults: bool,
) -> anyhow::Result<Calibration> {
    let s = generated_subject(seed, sessions);
    let mut c = Calibration { backends: backends(gpu), ranges: Vec::new() };
    for range in &s.ranges {
        c.ranges.push(pollster::block_on(calibrate_range(&s, range.clone(), gpu, decode_steps, with_faults))?);
    }
    Ok(c)
}

/// The backends' names, with the wgpu adapter.
fn backends(gpu: Option<&Arc<GpuContext>>) -> Vec<String> {
    let mut names = vec!["cpu".to_string()];
    if let Some(ctx) = gpu {
        let a = ctx.adapter_info();
        names.push(format!("wgpu on {} ({}, {})", a.name, a.backend, a.device_type));
    }
    names
}

/// Calibrates one range of `s`: honest pairs of backends, then (`with_faults`) every fault
/// against every auditor backend.
async fn calibrate_range(
    s: &Subject,
    range: Range<usize>,
    gpu: Option<&Arc<GpuContext>>,
    decode_steps: usize,
    with_faults: bool,
) -> anyhow::Result<RangeCalibration> {
    let h = s.config.hidden;
    let before = if range.start > 0 { Some(Stack::cpu(&s.config, 0..range.start, &s.layers)?) } else { None };
    let mut honest: Vec<(&str, Stack)> = vec![("cpu", Stack::cpu(&s.config, range.clone(), &s.layers)?)];
    if let Some(ctx) = gpu {
        honest.push(("wgpu", Stack::gpu(ctx, &s.config, range.clone(), &s.layers)?));
    }
    let liars = if with_faults {
        let mid = range.start + range.len() / 2;
        let skip = Stack::join(vec![
            Stack::cpu(&s.config, range.start..mid, &s.layers)?,
            Stack::cpu(&s.config, mid + 1..range.end, &s.layers)?,
        ]);
        let requant = Stack::cpu(&s.config, range.clone(), &s.requantized.1)?;
        let other = Stack::cpu(&s.config, range.clone(), &s.other.1)?;
        Some((skip, requant, other))
    } else {
        None
    };

    let mut pairs: Vec<Comparison> = Vec::new();
    let mut faults: Vec<Comparison> = Vec::new();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(range.start as u64);
    let mut tokens = 0;
    for embedded in &s.inputs {
        let x = match &before {
            Some(b) => b.prefill(embedded, h).await?,
            None => embedded.clone(),
        };
        let n = x.len() / h;
        tokens += n;
        let prefill_len =
            n.checked_sub(decode_steps).filter(|&p| p > 0).context("prompt shorter than the decode steps")?;
        let mut audits = Vec::new();
        let mut sessions = Vec::new();
        for (name, stack) in &honest {
            audits.push((*name, stack.prefill(&x, h).await?));
            sessions.push((*name, stack.session(&x, h, prefill_len).await?));
        }
        for (node, out) in &sessions {
            for (auditor, reference) in &audits {
                let samples = per_token(&x, reference, out, h, prefill_len, 0)?;
                add(&mut pairs, format!("{node} session vs {auditor} audit"), None, samples);
            }
        }
        let Some((skip, requant, other)) = &liars else { continue };
        let cpu_session = &sessions[0].1;
        let mut faked: Vec<(&'static str, Vec<f32>, usize)> = vec![
            ("skip-layer", skip.session(&x, h, prefill_len).await?, 0),
            ("other-quant", requant.session(&x, h, prefill_len).await?, 0),
            ("other-weights", other.session(&x, h, prefill_len).await?, 0),
        ];
        let mut noisy = cpu_session.clone();
        for row in noisy.chunks_exact_mut(h) {
            let rms = (row.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / h as f64).sqrt();
            let normal = Normal::new(0.0, 1e-3 * rms).context("noise")?;
            row.iter_mut().for_each(|v| *v += normal.sample(&mut rng) as f32);
        }
        faked.push(("noise", noisy, 0));
        faked.push(("input-returned", x.clone(), 0));
        let mut stale = cpu_session.clone();
        stale.copy_within((prefill_len - 1) * h..(n - 1) * h, prefill_len * h);
        // Only the decode steps are faked: their prefill tokens are honest.
        faked.push(("stale", stale, prefill_len));
        for (fault, out, first_faked) in &faked {
            for (auditor, reference) in &audits {
                let samples = per_token(&x, reference, out, h, prefill_len, *first_faked)?;
                add(&mut faults, format!("{fault} vs {auditor} audit"), Some(fault), samples);
            }
        }
    }
    Ok(RangeCalibration {
        model: s.name.clone(),
        range,
        sessions: s.inputs.len(),
        tokens,
        decode_steps,
        honest: pairs,
        faults,
    })
}

/// Adds `samples` as one more session of the comparison `name` in `to`, adding it if new.
fn add(to: &mut Vec<Comparison>, name: String, fault: Option<&'static str>, samples: Samples) {
    match to.iter_mut().find(|c| c.name == name) {
        Some(c) => c.sessions.push(samples),
        None => to.push(Comparison { name, fault, sessions: vec![samples] }),
    }
}

/// Per-token deviations of `claimed` from `reference` for input `x`, from token
/// `first_faked` on, split at `prefill_len` into prefill and decode tokens.
fn per_token(
    x: &[f32],
    reference: &[f32],
    claimed: &[f32],
    h: usize,
    prefill_len: usize,
    first_faked: usize,
) -> anyhow::Result<Samples> {
    let mut s = Samples::default();
    for t in first_faked..x.len() / h {
        let rows = t * h..(t + 1) * h;
        let d = deviation(&x[rows.clone()], &reference[rows.clone()], &claimed[rows], h)?.worst;
        if t < prefill_len {
            s.prefill.push(d);
        } else {
            s.decode.push(d);
        }
    }
    Ok(s)
}

/// Backends run one after the other, as a chain of hops would (one, or two around a
/// skipped layer).
struct Stack(Vec<AnyBackend>);

impl Stack {
    fn cpu(config: &LlamaConfig, range: Range<usize>, layers: &[LayerWeights]) -> anyhow::Result<Stack> {
        let b = AnyBackend::cpu(config.clone(), range.clone(), layers[range].to_vec())?;
        Ok(Stack(vec![b]))
    }

    fn gpu(
        ctx: &Arc<GpuContext>,
        config: &LlamaConfig,
        range: Range<usize>,
        layers: &[LayerWeights],
    ) -> anyhow::Result<Stack> {
        let b = AnyBackend::gpu(ctx.clone(), config.clone(), range.clone(), &layers[range])?;
        Ok(Stack(vec![b]))
    }

    fn join(parts: Vec<Stack>) -> Stack {
        Stack(parts.into_iter().flat_map(|s| s.0).collect())
    }

    /// `x` (`[n, h]`) as one prefill, as an auditor replays it.
    async fn prefill(&self, x: &[f32], h: usize) -> anyhow::Result<Vec<f32>> {
        let n = x.len() / h;
        let mut out = x.to_vec();
        for b in &self.0 {
            let mut cache = b.new_cache(n)?;
            out = b.forward(&mut cache, &out, n, 0).await?;
        }
        Ok(out)
    }

    /// `x` as a session runs it: its first `prefill_len` tokens as one prefill, then one
    /// decode step per token.
    async fn session(&self, x: &[f32], h: usize, prefill_len: usize) -> anyhow::Result<Vec<f32>> {
        let n = x.len() / h;
        let mut caches = Vec::new();
        for b in &self.0 {
            caches.push(b.new_cache(n)?);
        }
        let mut out = Vec::with_capacity(x.len());
        let mut pos = 0;
        while pos < n {
            let len = if pos == 0 { prefill_len } else { 1 };
            let mut step = x[pos * h..(pos + len) * h].to_vec();
            for (b, cache) in self.0.iter().zip(&mut caches) {
                step = b.forward(cache, &step, len, pos).await?;
            }
            out.extend(step);
            pos += len;
        }
        Ok(out)
    }
}

/// The model at `path`, its ranges (`ranges` or three equal parts), the prompts' embeddings
/// through its own chat template, the layers requantized to Q4_0 (Q4_1 when they are Q4_0)
/// and, as other weights of the same shape, each layer's weights taken from the layer half
/// the model away.
fn model_subject(path: &std::path::Path, ranges: &[String]) -> anyhow::Result<Subject> {
    let file = ModelFile::open(path).context("opening the model")?;
    let config = file.config().clone();
    let client = web_node::client::ClientModel::from_file(&file, None)?;
    let layers = file.load_layers(0..config.n_layers)?;
    let dtype = layers[0].attn_q.dtype;
    let target = if dtype == WeightType::Q4_0 { WeightType::Q4_1 } else { WeightType::Q4_0 };
    let requantized = layers.iter().map(|l| requantize(l, target)).collect();
    let n = config.n_layers;
    let other = (0..n).map(|i| layers[(i + n / 2) % n].clone()).collect();
    let mut inputs = Vec::new();
    for p in PROMPTS {
        let tokens = client.chat_prompt(&[ChatMessage::user(p)])?;
        inputs.push(client.head.embed(&tokens)?);
    }
    let ranges = if ranges.is_empty() {
        let third = n.div_ceil(3);
        (0..n).step_by(third).map(|a| a..(a + third).min(n)).collect()
    } else {
        ranges.iter().map(|r| parse_range(r, n)).collect::<anyhow::Result<_>>()?
    };
    let name = path.file_name().map_or("model".into(), |f| f.to_string_lossy().into_owned());
    Ok(Subject {
        name: format!("{name} ({})", dtype.name()),
        config,
        layers,
        requantized: (target.name().into(), requantized),
        other: ("the layers half the model away".into(), other),
        inputs,
        ranges,
    })
}

/// `START..END` within `0..n`, not empty.
fn parse_range(s: &str, n: usize) -> anyhow::Result<Range<usize>> {
    let (a, b) = s.split_once("..").with_context(|| format!("range {s:?} is not START..END"))?;
    let (a, b): (usize, usize) = (a.trim().parse()?, b.trim().parse()?);
    anyhow::ensure!(a < b && b <= n, "range {s:?} is not within 0..{n}");
    Ok(a..b)
}

/// `l` with every weight matrix requantized to `target`.
fn requantize(l: &LayerWeights, target: WeightType) -> LayerWeights {
    let q = |m: &QMatrix| {
        let bytes = quantize(target, &m.dequantize());
        QMatrix::new(target, m.rows, m.cols, bytes.into()).expect("same shape")
    };
    LayerWeights {
        attn_q: q(&l.attn_q),
        attn_k: q(&l.attn_k),
        attn_v: q(&l.attn_v),
        attn_output: q(&l.attn_output),
        ffn_gate: q(&l.ffn_gate),
        ffn_up: q(&l.ffn_up),
        ffn_down: q(&l.ffn_down),
        ..l.clone()
    }
}

/// A generated Llama model of another shape than the default (hidden 256, intermediate 640,
/// 8 heads of 32, 2 KV heads, 6 layers) published as Q8_0: the faults run the same values in
/// Q4_1, and another seed's model. Its inputs are `sessions` Gaussian embeddings of 24
/// tokens.
fn generated_subject(seed: u64, sessions: usize) -> Subject {
    let config = LlamaConfig {
        arch: Arch::Llama,
        hidden: 256,
        intermediate: 640,
        n_layers: 6,
        n_heads: 8,
        n_kv_heads: 2,
        head_dim: 32,
        rope_theta: 10_000.0,
        rms_eps: 1e-5,
        vocab: 256,
        max_seq_len: 256,
        tie_embeddings: true,
        rope_freq_factors: None,
        rope_attn_factor: 1.0,
        sliding_window: None,
        gemma: None,
    };
    let values = |seed| generated_values(&config, seed);
    let published = values(seed);
    let layers = published.iter().map(|l| l.quantized(&config, WeightType::Q8_0)).collect();
    let requantized = published.iter().map(|l| l.quantized(&config, WeightType::Q4_1)).collect();
    let other = values(seed + 1).iter().map(|l| l.quantized(&config, WeightType::Q8_0)).collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed + 2);
    let normal = Normal::new(0.0f32, 1.0).expect("unit normal");
    let inputs = (0..sessions).map(|_| (0..24 * config.hidden).map(|_| normal.sample(&mut rng)).collect()).collect();
    Subject {
        name: "generated model (Q8_0)".into(),
        config,
        layers,
        requantized: ("Q4_1".into(), requantized),
        other: ("another seed".into(), other),
        inputs,
        ranges: vec![0..3, 3..6],
    }
}

/// One generated layer's values before quantization.
struct LayerValues {
    norms: [Vec<f32>; 2],
    /// q, k, v, o, gate, up, down, row-major `[out, in]`.
    matrices: Vec<Vec<f32>>,
}

impl LayerValues {
    fn quantized(&self, c: &LlamaConfig, dtype: WeightType) -> LayerWeights {
        let shapes = matrix_shapes(c);
        let m: Vec<QMatrix> = self
            .matrices
            .iter()
            .zip(shapes)
            .map(|(v, (rows, cols))| QMatrix::new(dtype, rows, cols, quantize(dtype, v).into()).expect("shape"))
            .collect();
        LayerWeights {
            attn_norm: self.norms[0].clone(),
            attn_q: m[0].clone(),
            attn_k: m[1].clone(),
            attn_v: m[2].clone(),
            attn_output: m[3].clone(),
            qkv_bias: None,
            qk_norm: None,
            post_norms: None,
            ffn_norm: self.norms[1].clone(),
            ffn_gate: m[4].clone(),
            ffn_up: m[5].clone(),
            ffn_down: m[6].clone(),
        }
    }
}

/// `[rows, cols]` of q, k, v, o, gate, up, down.
fn matrix_shapes(c: &LlamaConfig) -> [(usize, usize); 7] {
    let (h, q, kv, f) = (c.hidden, c.q_dim(), c.kv_dim(), c.intermediate);
    [(q, h), (kv, h), (kv, h), (h, q), (f, h), (f, h), (h, f)]
}

/// Gaussian weights of variance 1 / fan-in and norms near 1, from `seed`.
fn generated_values(c: &LlamaConfig, seed: u64) -> Vec<LayerValues> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let unit = Normal::new(0.0f32, 1.0).expect("unit normal");
    (0..c.n_layers)
        .map(|_| {
            let mut norm = || (0..c.hidden).map(|_| 1.0 + 0.1 * unit.sample(&mut rng)).collect::<Vec<f32>>();
            let norms = [norm(), norm()];
            let matrices = matrix_shapes(c)
                .iter()
                .map(|&(rows, cols)| {
                    let s = 1.0 / (cols as f32).sqrt();
                    (0..rows * cols).map(|_| s * unit.sample(&mut rng)).collect()
                })
                .collect();
            LayerValues { norms, matrices }
        })
        .collect()
}
