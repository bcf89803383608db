//! Model parts for download: the head and each block as a small GGUF of their own, checked
//! against the model's [`Manifest`] when they arrive.
//!
//! A node that holds a GGUF model cuts it with [`extract`]: the head part keeps all metadata
//! (configuration, tokenizer, chat template) and every tensor outside the decoder blocks; the
//! part of block `i` keeps the configuration metadata (no tokenizer), the `blk.{i}.*` tensors and
//! the model-wide tensors every block's maths reads ([`SHARED_TENSORS`]: RoPE factors). A node
//! that downloads a part parses it with the ordinary GGUF loader, so the weights it gets are
//! exactly what the engine would load from the whole file, and
//! [`verify_block`] / [`verify_head`] check the part's BLAKE3 root against the manifest's
//! [`PartIndex`] before parsing it, then its content hashes (weights, RoPE factors, and for
//! the head the tokenizer and chat template), before anything runs on it.
//!
//! Parts carry no labels: `general.*` metadata other than the architecture and the alignment
//! (name, author, license, description...) is left out, so relabelling a file changes no
//! part and no model id.

use bytes::Bytes;

use super::gguf::writer::{write, TensorOut, ALIGNMENT};
use super::gguf::{GgufFile, GgufModel, TensorInfo};
use super::manifest::{head_hash, layer_hash, template_hash, tokenizer_hash, PartIndex, PartRef};
use super::verified::{PartRoot, PartTree};
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
    cut(file, n_layers, part, |t| file.tensor_bytes(&t.name))
}

/// The tensors of `file` that `part` holds, in file order (see [`extract`]).
pub fn part_tensors(file: &GgufFile, n_layers: usize, part: Part) -> Result<Vec<&TensorInfo>, ModelError> {
    let prefix = match part {
        Part::Block(i) if i >= n_layers => return Err(ModelError::LayerOutOfRange { layer: i, n_layers }),
        Part::Block(i) => Some(format!("blk.{i}.")),
        Part::Head => None,
    };
    let keep = |name: &str| match &prefix {
        Some(p) => name.starts_with(p.as_str()) || SHARED_TENSORS.contains(&name),
        None => !name.starts_with("blk."),
    };
    Ok(file.tensors.iter().filter(|t| keep(&t.name)).collect())
}

/// [`extract`] with each tensor's bytes from `data`: for a file whose header was parsed from
/// a prefix ([`GgufFile::parse_prefix`]) and whose tensors are read where they lie.
pub fn cut(
    file: &GgufFile,
    n_layers: usize,
    part: Part,
    mut data: impl FnMut(&TensorInfo) -> Result<Bytes, ModelError>,
) -> Result<Vec<u8>, ModelError> {
    use super::gguf::Value;
    let label = |k: &str| k.starts_with("general.") && !matches!(k, "general.architecture" | "general.alignment");
    // A part is written with GGUF's default alignment, so it may not claim another.
    let other_alignment = |k: &str, v: &Value| k == "general.alignment" && *v != Value::U64(ALIGNMENT as u64);
    let mut metadata: Vec<(String, Value)> = file
        .metadata
        .0
        .iter()
        .filter(|(k, v)| !label(k) && !other_alignment(k, v) && (part == Part::Head || !k.starts_with("tokenizer.")))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    // A block part holds no embeddings, which the vocabulary's size comes from when the file
    // does not state it: state it.
    if let (Part::Block(_), Some(arch)) = (part, file.metadata.str("general.architecture").ok().flatten()) {
        let key = format!("{arch}.vocab_size");
        let rows = file.tensor("token_embd.weight").and_then(|t| t.dims.get(1).copied());
        if let (None, Some(rows)) = (file.metadata.get(&key), rows) {
            metadata.push((key, Value::U64(rows)));
        }
    }
    metadata.sort_by(|a, b| a.0.cmp(&b.0));
    let metadata: Vec<(&str, Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let mut bytes = Vec::new();
    for t in part_tensors(file, n_layers, part)? {
        let b = data(t)?;
        if Some(b.len() as u64) != t.size {
            return Err(ModelError::Truncated {
                what: format!("tensor {} data", t.name),
                offset: t.offset,
                needed: t.size.unwrap_or(0),
                len: b.len() as u64,
            });
        }
        bytes.push((t, b));
    }
    let tensors: Vec<TensorOut<'_>> = bytes
        .iter()
        .map(|(t, b)| TensorOut { name: &t.name, dims: t.dims.clone(), ggml_type: t.dtype.0, data: b })
        .collect();
    Ok(write(&metadata, &tensors))
}

/// A GGUF model's manifest built from its parts as they are cut, one at a time: the head
/// first, then each block in order ([`Manifest::of_file`] for a whole file, the tab as it
/// reads a file a part at a time). Each part is parsed as a node that downloads it parses it,
/// so the hashes are the ones [`verify_head`] and [`verify_block`] check. The caller gives
/// each part's root, computed once where it holds the part.
pub struct ManifestFromParts {
    config: LlamaConfig,
    head: PartRef,
    head_hash: String,
    tokenizer: Option<String>,
    template: Option<String>,
    blocks: Vec<String>,
    refs: Vec<PartRef>,
}

impl ManifestFromParts {
    /// Starts from the head part (`bytes`, whose root is `root`).
    pub fn head(bytes: Bytes, root: PartRoot) -> Result<ManifestFromParts, ModelError> {
        let model = GgufModel::from_bytes(bytes).map_err(|e| e.in_file(Part::Head.to_string()))?;
        let config = model.config().clone();
        let (head_hash, tokenizer, template) = head_hashes(&model)?;
        let head = PartRef { size: root.size, root: root.to_hex(), flops: config.head_flops() };
        // Capacity for the blocks a file claims, within reason: the claim is unchecked here.
        let n = config.n_layers.min(1 << 12);
        Ok(ManifestFromParts {
            config,
            head,
            head_hash,
            tokenizer,
            template,
            blocks: Vec::with_capacity(n),
            refs: Vec::with_capacity(n),
        })
    }

    /// Adds the next block's part.
    pub fn block(&mut self, bytes: Bytes, root: PartRoot) -> Result<(), ModelError> {
        let i = self.blocks.len();
        let ctx = |e: ModelError| e.in_file(Part::Block(i).to_string());
        let model = GgufModel::from_bytes(bytes).map_err(ctx)?;
        if !Manifest::same_config(model.config(), &self.config) {
            return Err(ctx(ModelError::BadConfig("its configuration differs from the head part's".into())));
        }
        self.blocks.push(block_weights(&model, i)?.1);
        self.refs.push(PartRef { size: root.size, root: root.to_hex(), flops: self.config.layer_flops() });
        Ok(())
    }

    /// The manifest, once every block was added.
    pub fn finish(self) -> Result<Manifest, ModelError> {
        if self.blocks.len() != self.config.n_layers {
            let what = format!("{} of {} blocks given", self.blocks.len(), self.config.n_layers);
            return Err(ModelError::BadConfig(what));
        }
        let manifest =
            Manifest::new(&self.config, self.blocks, self.head_hash).with_text(self.tokenizer, self.template);
        Ok(Manifest { parts: Some(PartIndex { head: self.head, blocks: self.refs }), ..manifest })
    }
}

/// The manifest of a whole GGUF file: every part cut and hashed in turn (one in memory at a
/// time).
pub fn manifest_of(file: &GgufFile, n_layers: usize) -> Result<Manifest, ModelError> {
    let part = |p: Part| -> Result<(Bytes, PartRoot), ModelError> {
        let bytes = Bytes::from(extract(file, n_layers, p)?);
        let root = PartTree::new(&bytes).root();
        Ok((bytes, root))
    };
    let (bytes, root) = part(Part::Head)?;
    let mut m = ManifestFromParts::head(bytes, root)?;
    for i in 0..n_layers {
        let (bytes, root) = part(Part::Block(i))?;
        m.block(bytes, root)?;
    }
    m.finish()
}

impl PartIndex {
    /// The entry of `part`; `None` for a block past the last.
    pub fn get(&self, part: Part) -> Option<&PartRef> {
        match part {
            Part::Head => Some(&self.head),
            Part::Block(i) => self.blocks.get(i),
        }
    }

    /// Every part's entry: the head, then the blocks in order.
    pub fn all(&self) -> impl Iterator<Item = &PartRef> {
        std::iter::once(&self.head).chain(&self.blocks)
    }
}

/// Checks a downloaded part's bytes against its root in the manifest's [`PartIndex`], if the
/// manifest has one, before anything parses them.
fn check_root(manifest: &Manifest, part: Part, bytes: &[u8]) -> Result<(), ModelError> {
    let Some(index) = &manifest.parts else {
        return Ok(());
    };
    let expected = match part {
        Part::Head => &index.head,
        Part::Block(i) => {
            index.blocks.get(i).ok_or(ModelError::LayerOutOfRange { layer: i, n_layers: manifest.n_layers })?
        }
    };
    let actual = PartRef::of(bytes, expected.flops);
    if actual != *expected {
        let show = |r: &PartRef| format!("root {} of {} bytes", r.root, r.size);
        return Err(ModelError::HashMismatch {
            part: part.to_string(),
            expected: show(expected),
            actual: show(&actual),
        });
    }
    Ok(())
}

/// What a manifest says of a head part: the hashes of its head weights, tokenizer (if any)
/// and chat template (if any). Errors name the head part.
fn head_hashes(model: &GgufModel) -> Result<(String, Option<String>, Option<String>), ModelError> {
    let ctx = |e: ModelError| e.in_file(Part::Head.to_string());
    let head = hex::encode(head_hash(&model.load_head().map_err(ctx)?));
    let tokenizer = match model.has_tokenizer() {
        true => Some(tokenizer_hash(&model.tokenizer().map_err(ctx)?)?),
        false => None,
    };
    Ok((head, tokenizer, model.chat_template().as_deref().map(template_hash)))
}

/// The weights of block `i` from its part and their hash. Errors name the part.
fn block_weights(model: &GgufModel, i: usize) -> Result<(LayerWeights, String), ModelError> {
    let weights = model.load_layer(i).map_err(|e| e.in_file(Part::Block(i).to_string()))?;
    let hash = hex::encode(layer_hash(&weights));
    Ok((weights, hash))
}

/// Parses a downloaded part and checks that its configuration is the manifest's.
fn open_part(manifest: &Manifest, part: Part, bytes: Bytes) -> Result<GgufModel, ModelError> {
    let ctx = |e: ModelError| e.in_file(part.to_string());
    check_root(manifest, part, &bytes)?;
    let model = GgufModel::from_bytes(bytes).map_err(ctx)?;
    if !manifest.describes(model.config()) {
        return Err(ctx(ModelError::BadConfig("its configuration differs from the model's manifest".into())));
    }
    Ok(model)
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
    let (weights, hash) = block_weights(&model, i)?;
    check_hex(part.to_string(), expected, hash)?;
    Ok((model.config().clone(), weights))
}

/// The head part as a model (for its head weights, tokenizer and template), if the hashes of
/// its head weights, tokenizer and chat template are the manifest's.
pub fn verify_head(manifest: &Manifest, bytes: Bytes) -> Result<GgufModel, ModelError> {
    let model = open_part(manifest, Part::Head, bytes)?;
    let (head, tokenizer, template) = head_hashes(&model)?;
    check_hex(Part::Head.to_string(), &manifest.head, head)?;
    manifest.check_text("head ", tokenizer, template)?;
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

        // Every check is made twice: by the part's BLAKE3 root before parsing, and, for a
        // manifest without parts (a safetensors model's), by parsing and hashing the weights.
        let roots = manifest.parts.as_ref().expect("a GGUF model lists its parts");
        assert_eq!(roots.blocks[7].size, block.len() as u64);
        let no_parts = Manifest { parts: None, ..manifest.clone() };
        // The part of block 7 is not block 8.
        let e = verify_block(&manifest, 8, Bytes::from(block.clone())).unwrap_err().to_string();
        assert!(e.contains("block 8: content hash root") && e.contains(&roots.blocks[8].root), "{e}");
        let e = verify_block(&no_parts, 8, Bytes::from(block.clone())).unwrap_err().to_string();
        assert!(e.contains("block 8") && e.contains("missing tensor blk.8"), "{e}");
        // One flipped weight byte near the end (ffn_down data).
        let mut bad = block.clone();
        let at = bad.len() - 100;
        bad[at] ^= 0x40;
        let e = verify_block(&manifest, 7, Bytes::from(bad.clone())).unwrap_err().to_string();
        assert!(e.contains("block 7: content hash root") && e.contains(&roots.blocks[7].root), "{e}");
        let e = verify_block(&no_parts, 7, Bytes::from(bad)).unwrap_err().to_string();
        assert!(e.contains("block 7: content hash") && e.contains(&manifest.blocks[7]), "{e}");
        // Truncation: a wrong root, or without parts a parse error naming the part.
        for m in [&manifest, &no_parts] {
            let e = verify_block(m, 7, Bytes::from(block[..block.len() / 2].to_vec())).unwrap_err().to_string();
            assert!(e.starts_with("block 7:"), "{e}");
        }
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
        let e = verify_head(&manifest, template.clone()).unwrap_err().to_string();
        assert!(e.starts_with("head: content hash root"), "{e}");
        // Without part roots, the template's own hash catches it.
        let no_parts = Manifest { parts: None, ..manifest.clone() };
        let e = verify_head(&no_parts, template).unwrap_err().to_string();
        assert!(e.starts_with("head chat template: content hash"), "{e}");
        let tokenizer = tampered(&|md| {
            // Token 100 becomes a control (special) token.
            if let Some(Value::Array(types)) = md.0.get_mut("tokenizer.ggml.token_type") {
                types[100] = Value::I64(3);
            }
        });
        let e = verify_head(&no_parts, tokenizer).unwrap_err().to_string();
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

    /// The manifest built part by part (as `Manifest::of_file` and the tab build it) has the
    /// hashes of the whole file's weights, for tied and untied embeddings; parts cut from a
    /// header parsed from the file's first bytes and tensors read where they lie are the
    /// parts cut from the whole file.
    #[test]
    fn parts_cut_from_a_header_and_ranges_are_the_whole_files() {
        let tied = Bytes::from(tiny_gguf(true));
        let file = GgufFile::parse(tied.clone()).unwrap();
        let mut md: Vec<(&str, Value)> = file.metadata.0.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        md.sort_by(|a, b| a.0.cmp(b.0));
        let data: Vec<(String, Vec<u64>, u32, Bytes)> = file
            .tensors
            .iter()
            .map(|t| (t.name.clone(), t.dims.clone(), t.dtype.0, file.tensor_bytes(&t.name).unwrap()))
            .collect();
        let embd = data.iter().find(|t| t.0 == "token_embd.weight").unwrap().clone();
        let mut outs: Vec<TensorOut<'_>> =
            data.iter().map(|(n, d, ty, b)| TensorOut { name: n, dims: d.clone(), ggml_type: *ty, data: b }).collect();
        outs.push(TensorOut { name: "output.weight", dims: embd.1.clone(), ggml_type: embd.2, data: &embd.3 });
        let untied = Bytes::from(write(&md, &outs));
        // Without `llama.vocab_size` (the embeddings' rows say it), and aligned to 64.
        let mut md_other = md.clone();
        md_other.retain(|(k, _)| *k != "llama.vocab_size");
        md_other.push(("general.alignment", Value::U64(64)));
        let other = Bytes::from(write_aligned(&md_other, &outs[..outs.len() - 1], 64));
        for bytes in [tied, untied, other] {
            let model = GgufModel::from_bytes(bytes.clone()).unwrap();
            let n = model.config().n_layers;
            let manifest = Manifest::of_file(&crate::model::ModelFile::Gguf(model.clone())).unwrap();
            for i in 0..n {
                assert_eq!(manifest.blocks[i], hex::encode(layer_hash(&model.load_layer(i).unwrap())));
            }
            assert_eq!(manifest.head, hex::encode(head_hash(&model.load_head().unwrap())));
            let first = model.file().tensors.iter().map(|t| t.offset).min().unwrap();
            let header = GgufFile::parse_prefix(bytes.slice(..first as usize), bytes.len() as u64).unwrap();
            let e = header.tensor_bytes("blk.0.ffn_up.weight").unwrap_err().to_string();
            assert!(e.contains("not read"), "{e}");
            let read = |t: &TensorInfo| Ok(bytes.slice(t.offset as usize..(t.offset + t.size.unwrap()) as usize));
            for part in [Part::Head, Part::Block(0), Part::Block(1)] {
                let bytes = cut(&header, n, part, read).unwrap();
                assert_eq!(bytes, extract(model.file(), n, part).unwrap(), "{part}");
                // Every part parses on its own, as a downloader parses it.
                GgufModel::from_bytes(Bytes::from(bytes)).unwrap_or_else(|e| panic!("{part}: {e}"));
            }
            // Bytes of another length for a tensor are refused.
            let short = |t: &TensorInfo| Ok(bytes.slice(t.offset as usize..t.offset as usize + 4));
            assert!(cut(&header, n, Part::Block(1), short).is_err());
            assert!(GgufFile::parse_prefix(bytes.slice(..24), bytes.len() as u64).is_err());
        }
    }

    /// GGUF written with another alignment than the default (the writer pads to 32).
    fn write_aligned(md: &[(&str, Value)], tensors: &[TensorOut<'_>], align: usize) -> Vec<u8> {
        use crate::model::gguf::writer::{header, TensorHeader};
        let pad = |n: usize| n.div_ceil(align) * align - n;
        let headers: Vec<TensorHeader<'_>> = tensors
            .iter()
            .map(|t| TensorHeader {
                name: t.name,
                dims: &t.dims,
                ggml_type: t.ggml_type,
                len: (t.data.len() + pad(t.data.len())) as u64,
            })
            .collect();
        let mut out = header(md, &headers);
        out.resize(out.len() + pad(out.len()), 0);
        for t in tensors {
            out.extend_from_slice(t.data);
            out.resize(out.len() + pad(t.data.len()), 0);
        }
        out
    }

    /// The manifest built from the parts is the one hashed from the whole file's weights, its
    /// tokenizer and template, with the parts' roots: the id did not change with the way it is
    /// computed.
    #[test]
    fn the_part_built_manifest_is_the_one_hashed_from_the_whole_file() {
        let ModelFile::Gguf(g) = ModelFile::open(&crate::model::test_model::path()).unwrap() else { panic!("gguf") };
        let file = ModelFile::Gguf(g.clone());
        let c = file.config();
        let n = c.n_layers;
        let blocks = (0..n).map(|i| hex::encode(layer_hash(&file.load_layer(i).unwrap()))).collect();
        let tokenizer = tokenizer_hash(&file.tokenizer().unwrap()).unwrap();
        let whole = Manifest::new(c, blocks, hex::encode(head_hash(&file.load_head().unwrap())))
            .with_text(Some(tokenizer), file.chat_template().as_deref().map(template_hash));
        let head = PartRef::of(&extract(g.file(), n, Part::Head).unwrap(), c.head_flops());
        let blocks = (0..n).map(|i| PartRef::of(&extract(g.file(), n, Part::Block(i)).unwrap(), c.layer_flops()));
        let whole = Manifest { parts: Some(PartIndex { head, blocks: blocks.collect() }), ..whole };
        let built = Manifest::of_file(&file).unwrap();
        assert_eq!(built, whole);
        assert_eq!(built.id(), whole.id());
    }

    /// A file relabelled (`general.*` name, license...) cuts into the same parts and is the
    /// same model; a part's FLOPs per token are its weight products'.
    #[test]
    fn labels_are_not_part_of_the_model() {
        let model = GgufModel::from_bytes(Bytes::from(tiny_gguf(false))).expect("tiny model");
        let manifest = Manifest::of_file(&ModelFile::Gguf(model.clone())).expect("manifest");
        let mut metadata: Vec<(&str, Value)> =
            model.file().metadata.0.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        metadata.push(("general.name", Value::Str("Renamed".into())));
        metadata.push(("general.license", Value::Str("MIT".into())));
        let data: Vec<Bytes> =
            model.file().tensors.iter().map(|t| model.file().tensor_bytes(&t.name).unwrap()).collect();
        let tensors: Vec<TensorOut<'_>> = model
            .file()
            .tensors
            .iter()
            .zip(&data)
            .map(|(t, d)| TensorOut { name: &t.name, dims: t.dims.clone(), ggml_type: t.dtype.0, data: d })
            .collect();
        let relabelled = GgufModel::from_bytes(Bytes::from(write(&metadata, &tensors))).expect("relabelled");
        assert_eq!(relabelled.file().metadata.str("general.name").unwrap(), Some("Renamed"));
        let again = Manifest::of_file(&ModelFile::Gguf(relabelled)).expect("manifest");
        assert_eq!(again.id(), manifest.id(), "relabelling minted another model");
        let parts = manifest.parts.expect("parts");
        // hidden 8, ffn 16, 2 heads of 4 (q and kv 8 wide), vocab 10.
        assert_eq!(parts.blocks[1].flops, 2 * (2 * 8 * 8 + 2 * 8 * 8 + 3 * 8 * 16));
        assert_eq!(parts.head.flops, 2 * 10 * 8);
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
        let e = verify_block(&manifest, 1, Bytes::from(plain_block.clone())).unwrap_err().to_string();
        assert!(e.contains("block 1: content hash root"), "{e}");
        let no_parts = Manifest { parts: None, ..manifest.clone() };
        let e = verify_block(&no_parts, 1, Bytes::from(plain_block)).unwrap_err().to_string();
        assert!(e.contains("differs from the model's manifest"), "{e}");
        assert_ne!(Manifest::of_file(&ModelFile::Gguf(plain)).expect("manifest").id(), manifest.id());
    }
}
