//! Hugging Face `config.json` of a Llama-family model.
//!
//! Main type: [`HfConfig`], the keys of `config.json` this crate reads, mirrored as they are
//! stored, then resolved into the runtime [`LlamaConfig`] by [`HfConfig::into_config`] (defaults
//! filled in, architecture recognized, numbers checked).
//!
//! Keys are read one by one from the JSON object rather than through a serde derive so that a
//! missing required key, or a value of the wrong type, is an error naming the key. This module
//! reads no tensors (see [`super::safetensors`]).

use serde_json::{Map, Value};

use super::config::{Arch, GemmaParams, LlamaConfig, LongRope};
use super::ModelError;

/// Largest dimension or count accepted from `config.json` (2^24, as for GGUF metadata).
const MAX_DIM: u64 = 1 << 24;

/// The keys of a Hugging Face `config.json` that describe a Llama-family decoder.
///
/// `Option` fields are optional in the file (absent or `null`); the others are required.
#[derive(Clone, Debug, PartialEq)]
pub struct HfConfig {
    /// `model_type` (`llama`, `mistral`, `qwen2`).
    pub model_type: Option<String>,
    /// `architectures` (`LlamaForCausalLM`, ...); used when `model_type` is absent or unknown.
    pub architectures: Vec<String>,
    /// `hidden_size`.
    pub hidden_size: u64,
    /// `intermediate_size`.
    pub intermediate_size: u64,
    /// `num_hidden_layers`.
    pub num_hidden_layers: u64,
    /// `num_attention_heads`.
    pub num_attention_heads: u64,
    /// `num_key_value_heads`; default `num_attention_heads`.
    pub num_key_value_heads: Option<u64>,
    /// `head_dim`; default `hidden_size / num_attention_heads`.
    pub head_dim: Option<u64>,
    /// `rope_theta` (or `rope_parameters.rope_theta`); default 10000.
    pub rope_theta: Option<f64>,
    /// `rms_norm_eps`.
    pub rms_norm_eps: f64,
    /// `vocab_size`.
    pub vocab_size: u64,
    /// `max_position_embeddings`.
    pub max_position_embeddings: u64,
    /// `tie_word_embeddings`; default `false`.
    pub tie_word_embeddings: Option<bool>,
    /// `hidden_act`; only `silu` is supported.
    pub hidden_act: Option<String>,
    /// `attention_bias` (Llama/Mistral variants with biases on every attention projection:
    /// not supported).
    pub attention_bias: Option<bool>,
    /// `mlp_bias` (not supported).
    pub mlp_bias: Option<bool>,
    /// `rope_scaling`: `linear` and `llama3` are applied as RoPE frequency divisors,
    /// `longrope` (or `su`) as [`LongRope`].
    pub rope_scaling: Option<Value>,
    /// `original_max_position_embeddings` (Phi-3: the context before LongRoPE extended it).
    pub original_max_position_embeddings: Option<u64>,
    /// `sliding_window` (Mistral; `null` or absent: none).
    pub sliding_window: Option<u64>,
    /// `use_sliding_window` (Qwen2/Qwen3: whether their `sliding_window` applies at all).
    pub use_sliding_window: Option<bool>,
    /// `partial_rotary_factor` (RoPE on part of each head: not supported below 1).
    pub partial_rotary_factor: Option<f64>,
    /// Gemma: `query_pre_attn_scalar`.
    pub query_pre_attn_scalar: Option<f64>,
    /// Gemma 2: `attn_logit_softcapping`.
    pub attn_logit_softcapping: Option<f64>,
    /// Gemma 2: `final_logit_softcapping`.
    pub final_logit_softcapping: Option<f64>,
    /// Gemma 3: `rope_local_base_freq` (the windowed layers' RoPE base; default 10000).
    pub rope_local_base_freq: Option<f64>,
    /// Gemma 3: `sliding_window_pattern` (one global layer in this many; default 6).
    pub sliding_window_pattern: Option<u64>,
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn wrong_type(key: &str, want: &str, v: &Value) -> ModelError {
    let mut shown = v.to_string();
    if shown.len() > 40 {
        let cut = (0..=40).rev().find(|&i| shown.is_char_boundary(i)).unwrap_or(0);
        shown.truncate(cut);
        shown.push_str("...");
    }
    ModelError::Metadata { key: key.to_string(), what: format!("expected {want}, found {} {shown}", json_type(v)) }
}

fn missing(key: &str) -> ModelError {
    ModelError::Metadata { key: key.to_string(), what: "missing".to_string() }
}

/// Typed access to the keys of one JSON object; `null` counts as absent.
struct Keys<'a>(&'a Map<String, Value>);

impl Keys<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key).filter(|v| !v.is_null())
    }

    fn u64(&self, key: &str) -> Result<Option<u64>, ModelError> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        // Some exporters write integral values as floats (`4096.0`).
        let n = v.as_u64().or_else(|| v.as_f64().filter(|f| f.fract() == 0.0 && *f >= 0.0).map(|f| f as u64));
        n.map(Some).ok_or_else(|| wrong_type(key, "unsigned integer", v))
    }

    fn req_u64(&self, key: &str) -> Result<u64, ModelError> {
        self.u64(key)?.ok_or_else(|| missing(key))
    }

    fn f64(&self, key: &str) -> Result<Option<f64>, ModelError> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        v.as_f64().map(Some).ok_or_else(|| wrong_type(key, "number", v))
    }

    fn bool(&self, key: &str) -> Result<Option<bool>, ModelError> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        v.as_bool().map(Some).ok_or_else(|| wrong_type(key, "bool", v))
    }

    fn str(&self, key: &str) -> Result<Option<String>, ModelError> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        v.as_str().map(|s| Some(s.to_string())).ok_or_else(|| wrong_type(key, "string", v))
    }

    fn str_array(&self, key: &str) -> Result<Vec<String>, ModelError> {
        let Some(v) = self.get(key) else {
            return Ok(Vec::new());
        };
        let arr = v.as_array().ok_or_else(|| wrong_type(key, "array of strings", v))?;
        arr.iter()
            .map(|e| e.as_str().map(str::to_string).ok_or_else(|| wrong_type(key, "array of strings", e)))
            .collect()
    }
}

impl HfConfig {
    /// Reads the keys from the bytes of a `config.json`.
    pub fn from_json(json: &[u8]) -> Result<HfConfig, ModelError> {
        let value: Value = serde_json::from_slice(json)
            .map_err(|e| ModelError::BadFormat { format: "config.json", what: e.to_string() })?;
        let Some(obj) = value.as_object() else {
            return Err(ModelError::BadFormat {
                format: "config.json",
                what: format!("expected a JSON object, found {}", json_type(&value)),
            });
        };
        let k = Keys(obj);
        // Newer transformers versions nest RoPE settings under `rope_parameters`.
        let rope_theta = match k.f64("rope_theta")? {
            Some(t) => Some(t),
            None => match k.get("rope_parameters") {
                Some(Value::Object(p)) => Keys(p).f64("rope_theta")?,
                _ => None,
            },
        };
        Ok(HfConfig {
            model_type: k.str("model_type")?,
            architectures: k.str_array("architectures")?,
            hidden_size: k.req_u64("hidden_size")?,
            intermediate_size: k.req_u64("intermediate_size")?,
            num_hidden_layers: k.req_u64("num_hidden_layers")?,
            num_attention_heads: k.req_u64("num_attention_heads")?,
            num_key_value_heads: k.u64("num_key_value_heads")?,
            head_dim: k.u64("head_dim")?,
            rope_theta,
            rms_norm_eps: k.f64("rms_norm_eps")?.ok_or_else(|| missing("rms_norm_eps"))?,
            vocab_size: k.req_u64("vocab_size")?,
            max_position_embeddings: k.req_u64("max_position_embeddings")?,
            tie_word_embeddings: k.bool("tie_word_embeddings")?,
            hidden_act: k.str("hidden_act")?,
            attention_bias: k.bool("attention_bias")?,
            mlp_bias: k.bool("mlp_bias")?,
            rope_scaling: k.get("rope_scaling").cloned(),
            original_max_position_embeddings: k.u64("original_max_position_embeddings")?,
            sliding_window: match k.get("sliding_window") {
                None | Some(Value::Null) => None,
                Some(_) => k.u64("sliding_window")?,
            },
            use_sliding_window: k.bool("use_sliding_window")?,
            partial_rotary_factor: k.f64("partial_rotary_factor")?,
            query_pre_attn_scalar: k.f64("query_pre_attn_scalar")?,
            attn_logit_softcapping: k.f64("attn_logit_softcapping")?,
            final_logit_softcapping: k.f64("final_logit_softcapping")?,
            rope_local_base_freq: k.f64("rope_local_base_freq")?,
            sliding_window_pattern: k.u64("sliding_window_pattern")?,
        })
    }

    /// The architecture family, from `model_type`, else from `architectures`.
    pub fn arch(&self) -> Result<Arch, ModelError> {
        if let Some(arch) = self.model_type.as_deref().and_then(Arch::parse) {
            return Ok(arch);
        }
        if let Some(arch) = self.architectures.iter().find_map(|a| Arch::parse(a)) {
            return Ok(arch);
        }
        let found = match (&self.model_type, self.architectures.is_empty()) {
            (None, true) => return Err(missing("model_type")),
            (Some(t), _) => t.clone(),
            (None, false) => self.architectures.join(", "),
        };
        Err(ModelError::Metadata {
            key: "model_type".to_string(),
            what: format!("{found} is not a supported architecture ({})", Arch::NAMES),
        })
    }

    /// Resolves defaults and checks the numbers.
    ///
    /// `tie_embeddings` is `tie_word_embeddings` here; the safetensors loader also ties the
    /// embeddings when the checkpoint has no `lm_head.weight`.
    pub fn into_config(self) -> Result<LlamaConfig, ModelError> {
        let arch = self.arch()?;
        // Gemma's gate is GELU with the tanh approximation; the others' SiLU.
        let act_ok = |a: &str| match arch.gelu_gate() {
            true => matches!(a, "gelu_pytorch_tanh" | "gelu"),
            false => a == "silu",
        };
        if let Some(act) = self.hidden_act.as_deref().filter(|a| !act_ok(a)) {
            let supported = if arch.gelu_gate() { "gelu_pytorch_tanh" } else { "silu" };
            return Err(ModelError::Metadata {
                key: "hidden_act".to_string(),
                what: format!("{act} is not supported (only {supported})"),
            });
        }
        if let Some(f) = self.partial_rotary_factor.filter(|f| *f != 1.0) {
            return Err(ModelError::Metadata {
                key: "partial_rotary_factor".to_string(),
                what: format!("{f}: RoPE on part of each head is not supported"),
            });
        }
        for (key, set) in [("attention_bias", self.attention_bias), ("mlp_bias", self.mlp_bias)] {
            if set == Some(true) {
                return Err(ModelError::Metadata { key: key.to_string(), what: "true is not supported".to_string() });
            }
        }
        let dim = |v: u64, key: &str| {
            usize::try_from(v).ok().filter(|_| v <= MAX_DIM).ok_or_else(|| ModelError::Metadata {
                key: key.to_string(),
                what: format!("value {v} is out of range (at most {MAX_DIM})"),
            })
        };
        let hidden = dim(self.hidden_size, "hidden_size")?;
        let n_heads = dim(self.num_attention_heads, "num_attention_heads")?;
        let n_kv_heads = match self.num_key_value_heads {
            Some(v) => dim(v, "num_key_value_heads")?,
            None => n_heads,
        };
        let head_dim = match self.head_dim {
            Some(v) => dim(v, "head_dim")?,
            None => hidden.checked_div(n_heads).unwrap_or(0),
        };
        let scaling = self.rope_scaling.as_ref().filter(|s| !s.is_null());
        let longrope = match scaling {
            Some(s) => longrope(s, head_dim, self.max_position_embeddings, self.original_max_position_embeddings)?,
            None => None,
        };
        let config = LlamaConfig {
            arch,
            hidden,
            intermediate: dim(self.intermediate_size, "intermediate_size")?,
            n_layers: dim(self.num_hidden_layers, "num_hidden_layers")?,
            n_heads,
            n_kv_heads,
            head_dim,
            rope_theta: self.rope_theta.unwrap_or(10_000.0) as f32,
            rms_eps: self.rms_norm_eps as f32,
            vocab: dim(self.vocab_size, "vocab_size")?,
            max_seq_len: dim(self.max_position_embeddings, "max_position_embeddings")?,
            tie_embeddings: self.tie_word_embeddings.unwrap_or(false),
            rope_freq_factors: match scaling {
                Some(s) if longrope.is_none() => rope_freq_factors(s, head_dim, self.rope_theta.unwrap_or(10_000.0))?,
                _ => None,
            },
            rope_attn_factor: 1.0,
            sliding_window: None,
            gemma: None,
        };
        let config = match longrope {
            Some(l) => l.apply(config)?,
            None => config,
        };
        let window = match (arch, self.use_sliding_window) {
            // Qwen2/Qwen3 configs name a window but only use it when use_sliding_window is set
            // (then only above max_window_layers, which this build does not do).
            (Arch::Qwen2 | Arch::Qwen3, Some(true)) => {
                return Err(ModelError::Metadata {
                    key: "use_sliding_window".to_string(),
                    what: "true is not supported for qwen2/qwen3 (per-layer windows)".to_string(),
                })
            }
            (Arch::Qwen2 | Arch::Qwen3, _) => None,
            _ => match self.sliding_window {
                Some(w) => Some(dim(w, "sliding_window")?),
                None => None,
            },
        };
        let gemma3 = arch == Arch::Gemma3;
        let gemma = arch.is_gemma().then(|| GemmaParams {
            attn_softcap: self.attn_logit_softcapping.map(|c| c as f32),
            final_softcap: self.final_logit_softcapping.map(|c| c as f32),
            query_scalar: self.query_pre_attn_scalar.map_or(config.head_dim as f32, |q| q as f32),
            window_pattern: match self.sliding_window_pattern {
                Some(p) => p.min(1 << 16) as usize,
                None if gemma3 => 6,
                None => 2,
            },
            local_rope_base: gemma3.then(|| self.rope_local_base_freq.unwrap_or(10_000.0) as f32),
        });
        let config =
            LlamaConfig { sliding_window: LlamaConfig::window_within(window, config.max_seq_len), gemma, ..config };
        config.validate()?;
        Ok(config)
    }
}

/// LongRoPE from a `rope_scaling` of type `longrope` (or `su`, its earlier name): the short
/// and long factors (`head_dim / 2` each), the original context (in `rope_scaling` or beside
/// it) and an optional `attention_factor`; `None` for other types.
fn longrope(
    scaling: &Value,
    head_dim: usize,
    trained: u64,
    original: Option<u64>,
) -> Result<Option<LongRope>, ModelError> {
    let err = |what: String| ModelError::Metadata { key: "rope_scaling".to_string(), what };
    let Value::Object(m) = scaling else {
        return Err(err(format!("expected an object, found {scaling}")));
    };
    let k = Keys(m);
    let kind = match k.str("rope_type")? {
        Some(t) => t,
        None => k.str("type")?.unwrap_or_default(),
    };
    if !matches!(kind.as_str(), "longrope" | "su") {
        return Ok(None);
    }
    let factors = |key: &str| -> Result<Vec<f32>, ModelError> {
        let v = k.get(key).ok_or_else(|| err(format!("longrope: missing {key}")))?;
        let f: Option<Vec<f32>> = v.as_array().and_then(|a| a.iter().map(|x| x.as_f64().map(|x| x as f32)).collect());
        match f {
            Some(f) if f.len() == head_dim / 2 => Ok(f),
            _ => Err(err(format!("longrope: {key} must be {} numbers (head_dim / 2)", head_dim / 2))),
        }
    };
    let short = factors("short_factor")?;
    factors("long_factor")?;
    let Some(original) = k.u64("original_max_position_embeddings")?.or(original) else {
        return Err(err("longrope: missing original_max_position_embeddings".into()));
    };
    let size = |v: u64| usize::try_from(v.min(MAX_DIM)).unwrap_or(0);
    Ok(Some(LongRope {
        trained: size(trained),
        original: size(original),
        short,
        attn_factor: k.f64("attention_factor")?.map(|f| f as f32),
    }))
}

/// Divisors of the RoPE frequencies for a `rope_scaling` object: `linear` divides all of them
/// by `factor`; `llama3` (Llama 3.1+) leaves high frequencies, divides low ones by `factor` and
/// blends in between. `default` means none. Other types (dynamic, yarn, ...) are refused.
fn rope_freq_factors(scaling: &Value, head_dim: usize, theta: f64) -> Result<Option<Vec<f32>>, ModelError> {
    let err = |what: String| ModelError::Metadata { key: "rope_scaling".to_string(), what };
    let Value::Object(m) = scaling else {
        return Err(err(format!("expected an object, found {scaling}")));
    };
    let kind = m.get("rope_type").or_else(|| m.get("type")).and_then(Value::as_str).unwrap_or("default");
    let num = |k: &str| m.get(k).and_then(Value::as_f64).ok_or_else(|| err(format!("{kind}: missing number {k}")));
    let half = head_dim / 2;
    let inv_freq = |i: usize| theta.powf(-2.0 * i as f64 / head_dim as f64);
    match kind {
        "default" => Ok(None),
        "linear" => Ok(Some(vec![num("factor")? as f32; half])),
        "llama3" => {
            let factor = num("factor")?;
            let (low, high) = (num("low_freq_factor")?, num("high_freq_factor")?);
            let old_ctx = num("original_max_position_embeddings")?;
            if !(factor > 0.0 && high > low && low > 0.0 && old_ctx > 0.0) {
                return Err(err(format!("llama3: inconsistent values in {scaling}")));
            }
            let (low_wavelen, high_wavelen) = (old_ctx / low, old_ctx / high);
            let divisors = (0..half)
                .map(|i| {
                    let freq = inv_freq(i);
                    let wavelen = 2.0 * std::f64::consts::PI / freq;
                    let scaled = if wavelen < high_wavelen {
                        freq
                    } else if wavelen > low_wavelen {
                        freq / factor
                    } else {
                        let smooth = (old_ctx / wavelen - low) / (high - low);
                        (1.0 - smooth) * freq / factor + smooth * freq
                    };
                    (freq / scaled) as f32
                })
                .collect();
            Ok(Some(divisors))
        }
        other => Err(err(format!("type {other} is not supported (linear, llama3)"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMOLLM: &str = r#"{
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
        "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
        "num_attention_heads": 9, "num_key_value_heads": 3, "rms_norm_eps": 1e-05,
        "rope_theta": 100000, "rope_scaling": null, "vocab_size": 49152,
        "max_position_embeddings": 8192, "tie_word_embeddings": true, "torch_dtype": "bfloat16"
    }"#;

    fn parse(json: &str) -> Result<LlamaConfig, ModelError> {
        HfConfig::from_json(json.as_bytes())?.into_config()
    }

    #[test]
    fn smollm_config_resolves() {
        let c = parse(SMOLLM).unwrap();
        assert_eq!(c.arch, Arch::Llama);
        assert_eq!((c.hidden, c.intermediate, c.n_layers), (576, 1536, 30));
        assert_eq!((c.n_heads, c.n_kv_heads, c.head_dim), (9, 3, 64));
        assert_eq!((c.rope_theta, c.rms_eps), (100_000.0, 1e-5));
        assert_eq!((c.vocab, c.max_seq_len, c.tie_embeddings), (49152, 8192, true));
    }

    /// A window shorter than the context is kept; one at least as long is global attention
    /// (real Qwen2.5 configs name a 131072 window with use_sliding_window false); Qwen's
    /// per-layer windows (use_sliding_window true) are refused by name.
    #[test]
    fn sliding_windows() {
        let base = |extra: &str| {
            format!(
                r#"{{"model_type": "MT", "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
                "num_attention_heads": 4, "rms_norm_eps": 1e-6, "vocab_size": 128,
                "max_position_embeddings": 4096 {extra}}}"#
            )
        };
        let with = |mt: &str, extra: &str| parse(&base(extra).replace("MT", mt));
        assert_eq!(with("mistral", r#", "sliding_window": 1024"#).unwrap().sliding_window, Some(1024));
        assert_eq!(with("mistral", r#", "sliding_window": 4096"#).unwrap().sliding_window, None);
        assert_eq!(with("mistral", r#", "sliding_window": null"#).unwrap().sliding_window, None);
        let qwen = r#", "sliding_window": 1024, "use_sliding_window": false"#;
        assert_eq!(with("qwen2", qwen).unwrap().sliding_window, None);
        let e = with("qwen2", r#", "sliding_window": 1024, "use_sliding_window": true"#).unwrap_err();
        assert!(e.to_string().contains("use_sliding_window"), "{e}");
    }

    #[test]
    fn defaults_apply() {
        let json = r#"{"architectures": ["Qwen2ForCausalLM"], "hidden_size": 64, "intermediate_size": 96,
            "num_hidden_layers": 2, "num_attention_heads": 4, "rms_norm_eps": 1e-6, "vocab_size": 128,
            "max_position_embeddings": 256, "head_dim": null}"#;
        let c = parse(json).unwrap();
        assert_eq!(c.arch, Arch::Qwen2);
        assert_eq!((c.n_kv_heads, c.head_dim, c.rope_theta, c.tie_embeddings), (4, 16, 10_000.0, false));
    }

    #[test]
    fn missing_and_mistyped_keys_are_named() {
        let no_heads = SMOLLM.replace("\"num_attention_heads\": 9,", "");
        let e = parse(&no_heads).unwrap_err();
        assert_eq!(e.to_string(), "metadata key num_attention_heads: missing");
        let bad = SMOLLM.replace("\"hidden_size\": 576", "\"hidden_size\": \"576\"");
        let e = parse(&bad).unwrap_err();
        assert_eq!(e.to_string(), "metadata key hidden_size: expected unsigned integer, found string \"576\"");
        let gpt = SMOLLM.replace("\"llama\"", "\"gpt2\"").replace("LlamaForCausalLM", "GPT2LMHeadModel");
        let e = parse(&gpt).unwrap_err();
        assert!(e.to_string().contains("gpt2 is not a supported architecture"), "{e}");
        let gelu = SMOLLM.replace("\"silu\"", "\"gelu\"");
        assert!(parse(&gelu).unwrap_err().to_string().contains("hidden_act: gelu is not supported"));
        assert!(matches!(HfConfig::from_json(b"[1]"), Err(ModelError::BadFormat { .. })));
        assert!(matches!(HfConfig::from_json(b"{"), Err(ModelError::BadFormat { .. })));
    }

    #[test]
    fn inconsistent_numbers_are_rejected() {
        let bad = SMOLLM.replace("\"num_key_value_heads\": 3", "\"num_key_value_heads\": 2");
        assert!(matches!(parse(&bad), Err(ModelError::BadConfig(_))));
        let huge = SMOLLM.replace("\"vocab_size\": 49152", "\"vocab_size\": 99999999999");
        assert!(parse(&huge).unwrap_err().to_string().contains("vocab_size: value 99999999999 is out of range"));
    }

    #[test]
    fn llama3_rope_scaling_divides_low_frequencies_only() {
        let scaling = serde_json::json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
        let d = rope_freq_factors(&scaling, 128, 500_000.0).expect("llama3").expect("factors");
        assert_eq!(d.len(), 64);
        assert_eq!(d[0], 1.0, "highest frequency untouched");
        assert!((d[63] - 8.0).abs() < 1e-6, "lowest frequency divided by factor: {}", d[63]);
        assert!(d.windows(2).all(|w| w[0] <= w[1]), "divisors grow with wavelength");
        let bad = serde_json::json!({"rope_type": "yarn", "factor": 4.0});
        let e = rope_freq_factors(&bad, 128, 1e4).unwrap_err().to_string();
        assert!(e.contains("rope_scaling") && e.contains("yarn"), "{e}");
        assert_eq!(rope_freq_factors(&serde_json::json!({"rope_type": "default"}), 64, 1e4).unwrap(), None);
    }

    /// Phi-3-mini-128k's shape of `rope_scaling`: served at its original 4096 positions with the
    /// short factors and the attention factor llama.cpp's converter writes for it
    /// (`phi3.rope.scaling.attn_factor` = 1.1902380714238083); a stated factor wins; a missing
    /// original context or a factor list of the wrong length is refused by name.
    #[test]
    fn longrope_serves_the_original_context_with_the_short_factors() {
        let phi3 = |scaling: &str, extra: &str| {
            parse(&format!(
                r#"{{"model_type": "phi3", "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
                "num_attention_heads": 4, "rms_norm_eps": 1e-5, "vocab_size": 128,
                "max_position_embeddings": 131072, "rope_scaling": {scaling} {extra}}}"#
            ))
        };
        let (short, long) = ("[1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]", "[2, 3, 4, 5, 6, 7, 8, 9]");
        let scaling = format!(r#"{{"type": "longrope", "short_factor": {short}, "long_factor": {long}}}"#);
        let c = phi3(&scaling, r#", "original_max_position_embeddings": 4096"#).unwrap();
        assert_eq!(c.max_seq_len, 4096);
        assert_eq!(c.rope_freq_factors, Some(vec![1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]));
        assert!((c.rope_attn_factor - 1.190_238_1).abs() < 1e-6, "{}", c.rope_attn_factor);
        let stated = scaling.replace(
            "\"type\"",
            "\"attention_factor\": 1.25, \"original_max_position_embeddings\": 8192, \"rope_type\"",
        );
        let c = phi3(&stated, "").unwrap();
        assert_eq!((c.max_seq_len, c.rope_attn_factor), (8192, 1.25));
        let e = phi3(&scaling, "").unwrap_err().to_string();
        assert!(e.contains("rope_scaling: longrope: missing original_max_position_embeddings"), "{e}");
        let short7 = scaling.replace(", 7.0]", "]");
        let e = phi3(&short7, r#", "original_max_position_embeddings": 4096"#).unwrap_err().to_string();
        assert!(e.contains("short_factor must be 8 numbers"), "{e}");
    }
}
