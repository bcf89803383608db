//! Independent reference models built with candle, for comparing our engine against.
//!
//! Nothing here uses web-node's GGUF reader, dequantizer or RoPE layout: candle reads the
//! file and dequantizes every tensor, and the q/k rows are un-permuted with candle tensor ops.
//! [`ArchReference`] runs candle-transformers' own models of the other architectures.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::llama::{Cache, Config, Llama};
use candle_transformers::models::quantized_llama::ModelWeights;

/// candle's plain f32 Llama, fed f32 tensors dequantized from a GGUF file.
pub struct F32Reference {
    model: Llama,
    config: Config,
    cache: Cache,
}

/// An unsigned metadata value, stored as u32 (llama.cpp) or u64 (web-node's GGUF writer).
fn md_u32(ct: &gguf_file::Content, key: &str) -> candle_core::Result<usize> {
    let v = ct.metadata.get(key).ok_or_else(|| candle_core::Error::Msg(format!("no {key}")))?;
    v.to_u32().map(|x| x as usize).or_else(|_| v.to_u64().map(|x| x as usize))
}

fn md_f32(ct: &gguf_file::Content, key: &str) -> candle_core::Result<f32> {
    ct.metadata.get(key).ok_or_else(|| candle_core::Error::Msg(format!("no {key}")))?.to_f32()
}

/// Hugging Face name of a GGUF tensor of a llama-architecture model.
fn hf_name(gguf: &str) -> Option<String> {
    let fixed = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, name) = rest.split_once('.')?;
    let hf = match name {
        "attn_norm.weight" => "input_layernorm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}"))
}

/// llama.cpp stores q/k rows of each head as interleaved pairs; Hugging Face as two halves.
fn unpermute(t: &Tensor, n_head: usize) -> candle_core::Result<Tensor> {
    let (rows, cols) = t.dims2()?;
    let hd = rows / n_head;
    t.reshape((n_head, hd / 2, 2, cols))?.transpose(1, 2)?.contiguous()?.reshape((rows, cols))
}

impl F32Reference {
    /// Loads every tensor of the GGUF at `path`, dequantized to f32 by candle.
    pub fn load(path: &Path) -> candle_core::Result<Self> {
        let dev = Device::Cpu;
        let mut f = std::fs::File::open(path)?;
        let ct = gguf_file::Content::read(&mut f)?;
        let heads = md_u32(&ct, "llama.attention.head_count")?;
        let kv_heads = md_u32(&ct, "llama.attention.head_count_kv")?;
        let mut tensors = HashMap::new();
        let names: Vec<String> = ct.tensor_infos.keys().cloned().collect();
        for name in names {
            let t = ct.tensor(&mut f, &name, &dev)?.dequantize(&dev)?.to_dtype(DType::F32)?;
            let t = if name.ends_with("attn_q.weight") {
                unpermute(&t, heads)?
            } else if name.ends_with("attn_k.weight") {
                unpermute(&t, kv_heads)?
            } else {
                t
            };
            let hf = hf_name(&name).ok_or_else(|| candle_core::Error::Msg(format!("unexpected tensor {name}")))?;
            tensors.insert(hf, t);
        }
        let tied = !tensors.contains_key("lm_head.weight");
        let config = Config {
            hidden_size: md_u32(&ct, "llama.embedding_length")?,
            intermediate_size: md_u32(&ct, "llama.feed_forward_length")?,
            vocab_size: tensors["model.embed_tokens.weight"].dims2()?.0,
            num_hidden_layers: md_u32(&ct, "llama.block_count")?,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            use_flash_attn: false,
            rms_norm_eps: md_f32(&ct, "llama.attention.layer_norm_rms_epsilon")? as f64,
            rope_theta: md_f32(&ct, "llama.rope.freq_base")?,
            bos_token_id: None,
            eos_token_id: None,
            rope_scaling: None,
            max_position_embeddings: md_u32(&ct, "llama.context_length")?,
            tie_word_embeddings: tied,
        };
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &dev);
        let model = Llama::load(vb, &config)?;
        let cache = Cache::new(true, DType::F32, &config, &dev)?;
        Ok(Self { model, config, cache })
    }

    /// Starts a new sequence.
    pub fn reset(&mut self) -> candle_core::Result<()> {
        self.cache = Cache::new(true, DType::F32, &self.config, &Device::Cpu)?;
        Ok(())
    }

    /// Logits of the last of `tokens`, which sit at positions `pos..`.
    pub fn logits(&mut self, tokens: &[u32], pos: usize) -> candle_core::Result<Vec<f32>> {
        let x = Tensor::new(tokens, &Device::Cpu)?.unsqueeze(0)?;
        self.model.forward(&x, pos, &mut self.cache)?.squeeze(0)?.to_vec1()
    }
}

/// candle's `quantized_llama` (8-bit activations in its matrix products), for comparison only.
pub struct QuantizedReference {
    model: ModelWeights,
}

impl QuantizedReference {
    /// Loads the GGUF at `path`.
    pub fn load(path: &Path) -> candle_core::Result<Self> {
        let mut f = std::fs::File::open(path)?;
        let ct = gguf_file::Content::read(&mut f)?;
        Ok(Self { model: ModelWeights::from_gguf(ct, &mut f, &Device::Cpu)? })
    }

    /// Starts a new sequence.
    pub fn reset(&mut self) {
        self.model.clear_kv_cache();
    }

    /// Logits of the last of `tokens`, which sit at positions `pos..`.
    pub fn logits(&mut self, tokens: &[u32], pos: usize) -> candle_core::Result<Vec<f32>> {
        let x = Tensor::new(tokens, &Device::Cpu)?.unsqueeze(0)?;
        self.model.forward(&x, pos)?.squeeze(0)?.to_vec1()
    }
}

/// candle-transformers' model of an architecture (Qwen3, Mistral, Phi-3 with LongRoPE's short
/// factors and attention factor from `config`, Llama with Llama 3.1's RoPE scaling, Gemma 2
/// and 3), f32, built from Hugging Face-named f32 tensors: an independent implementation of
/// its extra parts.
///
/// Every call runs the whole prefix again as one prefill from position 0: candle's Mistral
/// applies its sliding window only to a prefill without a cache offset.
pub struct ArchReference {
    model: ArchModel,
    history: Vec<u32>,
}

enum ArchModel {
    Qwen3(candle_transformers::models::qwen3::ModelForCausalLM),
    Mistral(candle_transformers::models::mistral::Model),
    Phi3(candle_transformers::models::phi3::Model),
    Llama(Llama, Config),
    Gemma2(candle_transformers::models::gemma2::Model),
    Gemma3(candle_transformers::models::gemma3::Model),
}

impl ArchReference {
    /// The reference for `config`'s architecture, from `tensors` (Hugging Face names, f32
    /// values with their shapes). A Llama model takes its RoPE scaling from `llama3_scaling`
    /// (Llama 3.1's `rope_scaling`: factor, low and high frequency factors, original context),
    /// which candle turns into frequencies itself.
    pub fn new(
        config: &web_node::model::LlamaConfig,
        tensors: &[(String, Vec<usize>, Vec<f32>)],
        llama3_scaling: Option<(f32, f32, f32, usize)>,
    ) -> candle_core::Result<Self> {
        use candle_transformers::models::{mistral, phi3, qwen3};
        let dev = Device::Cpu;
        // LongRoPE (Phi-3): candle's model has no attention factor; scaling the cosines and
        // sines by it is scaling queries and keys by it (RoPE is linear), so the q and k rows
        // of the fused projection are scaled here.
        let qk_rows = (config.q_dim() + config.kv_dim()) * config.hidden;
        let scale_qk = |n: &str, v: &[f32]| -> Vec<f32> {
            match config.arch == web_node::model::Arch::Phi3 && n.ends_with("self_attn.qkv_proj.weight") {
                true => v
                    .iter()
                    .enumerate()
                    .map(|(i, x)| if i < qk_rows { x * config.rope_attn_factor } else { *x })
                    .collect(),
                false => v.to_vec(),
            }
        };
        let map: HashMap<String, Tensor> = tensors
            .iter()
            .map(|(n, shape, v)| Ok((n.clone(), Tensor::from_vec(scale_qk(n, v), shape.as_slice(), &dev)?)))
            .collect::<candle_core::Result<_>>()?;
        let vb = VarBuilder::from_tensors(map, DType::F32, &dev);
        let model = match config.arch {
            web_node::model::Arch::Qwen3 => {
                let cfg = qwen3::Config {
                    vocab_size: config.vocab,
                    hidden_size: config.hidden,
                    intermediate_size: config.intermediate,
                    num_hidden_layers: config.n_layers,
                    num_attention_heads: config.n_heads,
                    head_dim: config.head_dim,
                    attention_bias: false,
                    num_key_value_heads: config.n_kv_heads,
                    max_position_embeddings: config.max_seq_len,
                    sliding_window: None,
                    max_window_layers: config.n_layers,
                    tie_word_embeddings: config.tie_embeddings,
                    rope_theta: config.rope_theta as f64,
                    rms_norm_eps: config.rms_eps as f64,
                    use_sliding_window: false,
                    hidden_act: candle_nn::Activation::Silu,
                };
                ArchModel::Qwen3(qwen3::ModelForCausalLM::new(&cfg, vb)?)
            }
            web_node::model::Arch::Mistral => {
                let cfg = mistral::Config {
                    vocab_size: config.vocab,
                    hidden_size: config.hidden,
                    intermediate_size: config.intermediate,
                    num_hidden_layers: config.n_layers,
                    num_attention_heads: config.n_heads,
                    head_dim: Some(config.head_dim),
                    num_key_value_heads: config.n_kv_heads,
                    hidden_act: candle_nn::Activation::Silu,
                    max_position_embeddings: config.max_seq_len,
                    rms_norm_eps: config.rms_eps as f64,
                    rope_theta: config.rope_theta as f64,
                    // candle lets a query see `window + 1` positions; llama.cpp and Hugging
                    // Face `window`, itself included.
                    sliding_window: config.sliding_window.map(|w| w - 1),
                    use_flash_attn: false,
                };
                ArchModel::Mistral(mistral::Model::new(&cfg, vb)?)
            }
            web_node::model::Arch::Phi3 => {
                let cfg = phi3::Config {
                    vocab_size: config.vocab,
                    hidden_act: candle_nn::Activation::Silu,
                    hidden_size: config.hidden,
                    intermediate_size: config.intermediate,
                    num_hidden_layers: config.n_layers,
                    num_attention_heads: config.n_heads,
                    num_key_value_heads: config.n_kv_heads,
                    rms_norm_eps: config.rms_eps as f64,
                    rope_theta: config.rope_theta as f64,
                    bos_token_id: None,
                    eos_token_id: None,
                    // candle multiplies the frequencies by LongRoPE's factors where Hugging
                    // Face (and llama.cpp) divide: it gets the reciprocals. Every position
                    // here is within the original context, so only the short ones apply.
                    rope_scaling: config.rope_freq_factors.as_ref().map(|f| {
                        let inverse: Vec<f32> = f.iter().map(|x| 1.0 / x).collect();
                        phi3::RopeScaling {
                            short_factor: inverse.clone(),
                            long_factor: inverse,
                            type_: phi3::RopeScalingType::LongRope,
                        }
                    }),
                    max_position_embeddings: config.max_seq_len,
                    original_max_position_embeddings: config.rope_freq_factors.as_ref().map(|_| config.max_seq_len),
                    partial_rotary_factor: None,
                    tie_word_embeddings: config.tie_embeddings,
                };
                ArchModel::Phi3(phi3::Model::new(&cfg, vb)?)
            }
            web_node::model::Arch::Llama => {
                use candle_transformers::models::llama::{Llama3RopeConfig, Llama3RopeType};
                let cfg = Config {
                    hidden_size: config.hidden,
                    intermediate_size: config.intermediate,
                    vocab_size: config.vocab,
                    num_hidden_layers: config.n_layers,
                    num_attention_heads: config.n_heads,
                    num_key_value_heads: config.n_kv_heads,
                    use_flash_attn: false,
                    rms_norm_eps: config.rms_eps as f64,
                    rope_theta: config.rope_theta,
                    bos_token_id: None,
                    eos_token_id: None,
                    rope_scaling: llama3_scaling.map(|(factor, low, high, orig)| Llama3RopeConfig {
                        factor,
                        low_freq_factor: low,
                        high_freq_factor: high,
                        original_max_position_embeddings: orig,
                        rope_type: Llama3RopeType::Llama3,
                    }),
                    max_position_embeddings: config.max_seq_len,
                    tie_word_embeddings: config.tie_embeddings,
                };
                ArchModel::Llama(Llama::load(vb, &cfg)?, cfg)
            }
            web_node::model::Arch::Gemma2 => {
                use candle_transformers::models::gemma2;
                let g = config.gemma.as_ref().ok_or_else(|| candle_core::Error::Msg("gemma2 without params".into()))?;
                let cfg = gemma2::Config {
                    attention_bias: false,
                    head_dim: config.head_dim,
                    hidden_activation: candle_nn::Activation::GeluPytorchTanh,
                    hidden_size: config.hidden,
                    intermediate_size: config.intermediate,
                    num_attention_heads: config.n_heads,
                    num_hidden_layers: config.n_layers,
                    num_key_value_heads: config.n_kv_heads,
                    rms_norm_eps: config.rms_eps as f64,
                    rope_theta: config.rope_theta as f64,
                    vocab_size: config.vocab,
                    final_logit_softcapping: g.final_softcap.map(f64::from),
                    attn_logit_softcapping: g.attn_softcap.map(f64::from),
                    query_pre_attn_scalar: g.query_scalar as usize,
                    sliding_window: None,
                    max_position_embeddings: config.max_seq_len,
                };
                ArchModel::Gemma2(gemma2::Model::new(false, &cfg, vb)?)
            }
            web_node::model::Arch::Gemma3 => {
                use candle_transformers::models::gemma3;
                let g = config.gemma.as_ref().ok_or_else(|| candle_core::Error::Msg("gemma3 without params".into()))?;
                let cfg = gemma3::Config {
                    attention_bias: false,
                    head_dim: config.head_dim,
                    hidden_activation: candle_nn::Activation::GeluPytorchTanh,
                    hidden_size: config.hidden,
                    intermediate_size: config.intermediate,
                    num_attention_heads: config.n_heads,
                    num_hidden_layers: config.n_layers,
                    num_key_value_heads: config.n_kv_heads,
                    rms_norm_eps: config.rms_eps as f64,
                    rope_theta: config.rope_theta as f64,
                    rope_local_base_freq: g.local_rope_base.unwrap_or(config.rope_theta) as f64,
                    vocab_size: config.vocab,
                    final_logit_softcapping: g.final_softcap.map(f64::from),
                    attn_logit_softcapping: g.attn_softcap.map(f64::from),
                    query_pre_attn_scalar: g.query_scalar as usize,
                    // Run token by token (see `logits`), its windowed layers keep a rotating cache
                    // of the last `window` positions: llama.cpp's count.
                    sliding_window: config.sliding_window.unwrap_or(config.max_seq_len),
                    sliding_window_pattern: g.window_pattern,
                    max_position_embeddings: config.max_seq_len,
                };
                ArchModel::Gemma3(gemma3::Model::new(false, &cfg, vb)?)
            }
            other => return Err(candle_core::Error::Msg(format!("no candle reference wired for {other:?}"))),
        };
        Ok(Self { model, history: Vec::new() })
    }

    /// Starts a new sequence.
    pub fn reset(&mut self) {
        self.history.clear();
    }

    /// Logits of the last of `tokens`, which sit at positions `pos..` after the sequence's
    /// earlier tokens.
    pub fn logits(&mut self, tokens: &[u32], pos: usize) -> candle_core::Result<Vec<f32>> {
        if let ArchModel::Gemma3(m) = &mut self.model {
            // candle's Gemma 3 cannot prefill several tokens (its KV cache wants contiguous
            // values), so it runs one token at a time, keeping its cache.
            if pos == 0 {
                m.clear_kv_cache();
            }
            let mut out = None;
            for (i, &t) in tokens.iter().enumerate() {
                out = Some(m.forward(&Tensor::new(&[t], &Device::Cpu)?.unsqueeze(0)?, pos + i)?);
            }
            let out = out.ok_or_else(|| candle_core::Error::Msg("no tokens".into()))?;
            return out.flatten_all()?.to_vec1();
        }
        self.history.truncate(pos);
        self.history.extend_from_slice(tokens);
        let x = Tensor::new(self.history.as_slice(), &Device::Cpu)?.unsqueeze(0)?;
        let out = match &mut self.model {
            ArchModel::Qwen3(m) => {
                m.clear_kv_cache();
                m.forward(&x, 0)?
            }
            ArchModel::Mistral(m) => {
                m.clear_kv_cache();
                m.forward(&x, 0)?
            }
            ArchModel::Phi3(m) => {
                m.clear_kv_cache();
                m.forward(&x, 0)?
            }
            ArchModel::Gemma2(m) => {
                m.clear_kv_cache();
                m.forward(&x, 0)?
            }
            ArchModel::Gemma3(_) => unreachable!("run token by token above"),
            ArchModel::Llama(m, cfg) => m.forward(&x, 0, &mut Cache::new(true, DType::F32, cfg, &Device::Cpu)?)?,
        };
        out.flatten_all()?.to_vec1()
    }
}
