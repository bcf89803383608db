//! Model parts for download: the head and each block as a small GGUF of their own, checked
//! against the model's [`Manifest`] when they arrive.
//!
//! A node that holds a GGUF model cuts it with [`extract`]: the head part keeps all metadata
//! (configuration, tokenizer, chat template) and every tensor outside the decoder blocks; the
//! part of block `i` keeps the configuration metadata (no tokenizer), the `blk.{i}.*` tensors and
//! the model-wide tensors every block's maths reads ([`SHARED_TENSORS`]: RoPE factors). A node
//! that downloads a part parses it with the ordinary GGUF loader, so the weights it gets are
//! exactly what the engine would load from the whole file, and
//! [`verify_block`] / [`verify_head`] compare their content hashes (weights, RoPE factors, and
//! for the head the tokenizer and chat template) with the manifest's before anything runs on
//! them.

use bytes::Bytes;

use super::gguf::writer::{write, TensorOut};
use super::gguf::{GgufFile, GgufModel};
use super::manifest::{head_hash, layer_hash, template_hash, tokenizer_hash};
use super::{LayerWeights, LlamaConfig, Manifest, ModelError};

/// Tensors outside `blk.*` that every block's computation depends on, so every block part
/// carries them: `rope_freqs.weight` (Llama 3.1+ RoPE frequency factors) and LongRoPE's two
/// factor sets (Phi-3 128k, Phi-3.5: the loader picks one, as it does from the whole file).
pub const SHARED_TENSORS: &[&str] = &["rope_freqs.weight", "rope_factors_short.weight", "rope_factors_long.weight"];

/// One downloadable part of a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// Embeddings, final norm, LM head, tokenizer and template.
    Head,
    /// Decoder layer `i`.
    Block(usize),
}

impl std::fmt::Display for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Part::Head => f.write_str("head"),
            Part::Block(i) => write!(f, "block {i}"),
        }
    }
}

/// Cuts `part` out of a GGUF file of `n_layers` layers, as a GGUF file of its own.
pub fn extract(file: &GgufFile, n_layers: usize, part: Part) -> Result<Vec<u8>, ModelError> {
    if let Part::Block(i) = part {
        if i >= n_layers {
            return Err(ModelError::LayerOutOfRange { layer: i, n_layers });
        }
    }
    let prefix = match part {
        Part::Block(i) => Some(format!("blk.{i}.")),
        Part::Head => None,
    };
    let keep_tensor = |name: &str| match &prefix {
        Some(p) => name.starts_with(p.as_str()) || SHARED_TENSORS.contains(&name),
        None => !name.starts_with("blk."),
    };
    let mut metadata: Vec<(&str, super::gguf::Value)> = file
        .metadata
        .0
        .iter()
        .filter(|(k, _)| part == Part::Head || !k.starts_with("tokenizer."))
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    metadata.sort_by(|a, b| a.0.cmp(b.0));
    let mut data = Vec::new();
    for t in file.tensors.iter().filter(|t| keep_tensor(&t.name)) {
        data.push((t, file.tensor_bytes(&t.name)?));
    }
    let tensors: Vec<TensorOut<'_>> = data
        .iter()
        .map(|(t, b)| TensorOut { name: &t.name, dims: t.dims.clone(), ggml_type: t.dtype.0, data: b })
        .collect();
    Ok(write(&metadata, &tensors))
}

/// Parses a downloaded part and checks that its configuration is the manifest's.
fn open_part(manifest: &Manifest, part: Part, bytes: Bytes) -> Result<GgufModel, ModelError> {
    let ctx = |e: ModelError| e.in_file(part.to_string());
    let model = GgufModel::from_bytes(bytes).map_err(ctx)?;
    let described = Manifest::new(model.config(), manifest.blocks.clone(), manifest.head.clone())
        .with_text(manifest.tokenizer.clone(), manifest.chat_template.clone());
    if described != *manifest {
        return Err(ctx(ModelError::BadConfig("its configuration differs from the model's manifest".into())));
    }
    Ok(model)
}

fn check(part: Part, expected: &str, actual: [u8; 32]) -> Result<(), ModelError> {
    check_hex(part.to_string(), expected, hex::encode(actual))
}

fn check_hex(part: String, expected: &str, actual: String) -> Result<(), ModelError> {
    if actual != expected {
        return Err(ModelError::HashMismatch { part, expected: expected.to_string(), actual });
    }
    Ok(())
}

/// The model's configuration and the weights of block `i` from a downloaded part, if their
/// hash is the manifest's.
pub fn verify_block(manifest: &Manifest, i: usize, bytes: Bytes) -> Result<(LlamaConfig, LayerWeights), ModelError> {
    let part = Part::Block(i);
    let expected =
        manifest.blocks.get(i).ok_or(ModelError::LayerOutOfRange { layer: i, n_layers: manifest.n_layers })?;
    let model = open_part(manifest, part, bytes)?;
    let weights = model.load_layer(i).map_err(|e| e.in_file(part.to_string()))?;
    check(part, expected, layer_hash(&weights))?;
    Ok((model.config().clone(), weights))
}

/// The head part as a model (for its head weights, tokenizer and template), if the hashes of
/// its head weights, tokenizer and chat template are the manifest's.
pub fn verify_head(manifest: &Manifest, bytes: Bytes) -> Result<GgufModel, ModelError> {
    let model = open_part(manifest, Part::Head, bytes)?;
    let head = model.load_head().map_err(|e| e.in_file("head"))?;
    check(Part::Head, &manifest.head, head_hash(&head))?;
    let tokenizer = match model.has_tokenizer() {
        true => Some(tokenizer_hash(&model.tokenizer().map_err(|e| e.in_file("head"))?)?),
        false => None,
    };
    manifest.check_text("head ", tokenizer, model.chat_template().as_deref().map(template_hash))?;
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::super::gguf::Value;
    use super::*;
    use crate::model::ModelFile;

    #[test]
    fn parts_of_the_default_model_verify_and_tampering_is_caught() {
        let path = crate::model::test_model::path();
        let ModelFile::Gguf(model) = ModelFile::open(&path).expect("open") else { panic!("not gguf") };
        let file = ModelFile::Gguf(model.clone());
        let manifest = Manifest::of_file(&file).expect("manifest");
        let n = manifest.n_layers;

        let head = extract(model.file(), n, Part::Head).expect("head");
        let h = verify_head(&manifest, Bytes::from(head.clone())).expect("head verifies");
        assert_eq!(h.tokenizer().expect("tokenizer").vocab_size(), manifest.vocab);
        assert!(h.chat_template().is_some());

        let block = extract(model.file(), n, Part::Block(7)).expect("block");
        assert!(block.len() < head.len() / 4, "a block carries no tokenizer: {} bytes", block.len());
        let (c, w) = verify_block(&manifest, 7, Bytes::from(block.clone())).expect("block verifies");
        assert_eq!(&c, file.config());
        assert_eq!(hex::encode(layer_hash(&w)), manifest.blocks[7]);

        // The part of block 7 is not block 8.
        let e = verify_block(&manifest, 8, Bytes::from(block.clone())).unwrap_err().to_string();
        assert!(e.contains("block 8") && e.contains("missing tensor blk.8"), "{e}");
        // One flipped weight byte near the end (ffn_down data).
        let mut bad = block.clone();
        let at = bad.len() - 100;
        bad[at] ^= 0x40;
        let e = verify_block(&manifest, 7, Bytes::from(bad)).unwrap_err().to_string();
        assert!(e.contains("block 7: content hash") && e.contains(&manifest.blocks[7]), "{e}");
        // Truncation is a parse error naming the part.
        let e = verify_block(&manifest, 7, Bytes::from(block[..block.len() / 2].to_vec())).unwrap_err().to_string();
        assert!(e.starts_with("block 7:"), "{e}");
        // Another model's manifest.
        let mut other = manifest.clone();
        other.hidden += 1;
        let e = verify_block(&other, 7, Bytes::from(block)).unwrap_err().to_string();
        assert!(e.contains("differs from the model's manifest"), "{e}");
        assert!(extract(model.file(), n, Part::Block(n)).is_err());
    }

    #[test]
    fn head_part_with_another_tokenizer_or_template_is_refused() {
        let path = crate::model::test_model::path();
        let ModelFile::Gguf(model) = ModelFile::open(&path).expect("open") else { panic!("not gguf") };
        let manifest = Manifest::of_file(&ModelFile::Gguf(model.clone())).expect("manifest");
        assert!(manifest.tokenizer.is_some() && manifest.chat_template.is_some(), "{manifest:?}");
        let n = manifest.n_layers;
        let tampered = |edit: &dyn Fn(&mut super::super::gguf::Metadata)| {
            let mut file = model.file().clone();
            edit(&mut file.metadata);
            Bytes::from(extract(&file, n, Part::Head).expect("head"))
        };
        let template = tampered(&|md| {
            md.0.insert("tokenizer.chat_template".into(), Value::Str("{{ messages }}".into()));
        });
        let e = verify_head(&manifest, template).unwrap_err().to_string();
        assert!(e.starts_with("head chat template: content hash"), "{e}");
        let tokenizer = tampered(&|md| {
            // Token 100 becomes a control (special) token.
            if let Some(Value::Array(types)) = md.0.get_mut("tokenizer.ggml.token_type") {
                types[100] = Value::I64(3);
            }
        });
        let e = verify_head(&manifest, tokenizer).unwrap_err().to_string();
        assert!(e.starts_with("head tokenizer: content hash"), "{e}");
        let untouched = tampered(&|_| {});
        verify_head(&manifest, untouched).expect("the untouched head verifies");
    }

    /// A 2-layer llama GGUF (f32) with distinct values; `rope_freqs.weight` when `rope`.
    fn tiny_gguf(rope: bool) -> Vec<u8> {
        let (h, f, v) = (8u64, 16u64, 10u64);
        let md = vec![
            ("general.architecture", Value::Str("llama".into())),
            ("llama.embedding_length", Value::U64(h)),
            ("llama.feed_forward_length", Value::U64(f)),
            ("llama.block_count", Value::U64(2)),
            ("llama.attention.head_count", Value::U64(2)),
            ("llama.attention.layer_norm_rms_epsilon", Value::F64(1e-5)),
            ("llama.context_length", Value::U64(32)),
            ("llama.vocab_size", Value::U64(v)),
        ];
        // dims fastest first: a [rows, cols] matrix is [cols, rows].
        let mut specs: Vec<(String, Vec<u64>)> =
            vec![("token_embd.weight".into(), vec![h, v]), ("output_norm.weight".into(), vec![h])];
        if rope {
            specs.push(("rope_freqs.weight".into(), vec![2]));
        }
        for i in 0..2 {
            for (t, dims) in [
                ("attn_norm", vec![h]),
                ("attn_q", vec![h, h]),
                ("attn_k", vec![h, h]),
                ("attn_v", vec![h, h]),
                ("attn_output", vec![h, h]),
                ("ffn_norm", vec![h]),
                ("ffn_gate", vec![h, f]),
                ("ffn_up", vec![h, f]),
                ("ffn_down", vec![f, h]),
            ] {
                specs.push((format!("blk.{i}.{t}.weight"), dims));
            }
        }
        let data: Vec<Vec<u8>> = specs
            .iter()
            .enumerate()
            .map(|(k, (_, dims))| {
                let n = dims.iter().product::<u64>() as usize;
                (0..n).flat_map(|i| (1.0 + ((k * 7 + i) % 16) as f32 / 4.0).to_le_bytes()).collect()
            })
            .collect();
        let tensors: Vec<TensorOut<'_>> = specs
            .iter()
            .zip(&data)
            .map(|((name, dims), d)| TensorOut { name, dims: dims.clone(), ggml_type: 0, data: d })
            .collect();
        write(&md, &tensors)
    }

    #[test]
    fn block_parts_keep_the_rope_factors() {
        let model = GgufModel::from_bytes(Bytes::from(tiny_gguf(true))).expect("tiny model");
        let factors = model.config().rope_freq_factors.clone();
        assert!(factors.is_some());
        let file = ModelFile::Gguf(model.clone());
        let manifest = Manifest::of_file(&file).expect("manifest");
        assert!(manifest.rope_freqs.is_some() && manifest.tokenizer.is_none());
        let block = extract(model.file(), 2, Part::Block(1)).expect("block");
        let (config, _) = verify_block(&manifest, 1, Bytes::from(block)).expect("block verifies");
        assert_eq!(config.rope_freq_factors, factors, "the block part computes other RoPE");
        assert_eq!(&config, file.config());
        // The same weights without RoPE factors are another model.
        let plain = GgufModel::from_bytes(Bytes::from(tiny_gguf(false))).expect("plain");
        let plain_block = extract(plain.file(), 2, Part::Block(1)).expect("block");
        let e = verify_block(&manifest, 1, Bytes::from(plain_block)).unwrap_err().to_string();
        assert!(e.contains("differs from the model's manifest"), "{e}");
        assert_ne!(Manifest::of_file(&ModelFile::Gguf(plain)).expect("manifest").id(), manifest.id());
    }
}
