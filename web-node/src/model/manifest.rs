//! Content addressing: the manifest of a model and the model id derived from it.
//!
//! A [`Manifest`] lists the model's shape and one SHA-256 per decoder block (layer) and for the
//! head, each computed over the weights as the engine holds them (type, shape and bytes of every
//! tensor, in a fixed order), plus a SHA-256 of everything else that changes the maths or the
//! text: the RoPE frequency factors, the tokenizer (vocabulary, merges, special tokens, BOS/EOS
//! rules) and the chat template. The [`ModelId`] is the SHA-256 of the manifest's canonical
//! JSON, so a node holding different weights, tokenizer or template under the same file name
//! gets a different id.
//!
//! A model read from a GGUF file also lists its downloadable parts ([`PartIndex`]: the head
//! and each block as a GGUF of their own, [`super::parts`]) by size, BLAKE3 root
//! ([`super::verified`]) and FLOPs per token, so the id promises every byte a downloader
//! fetches and a part is verified without trusting its sender. Parts carry no labels (name,
//! author, description: `general.*` metadata), so relabelling a file keeps its id. A
//! safetensors checkpoint has no parts, so it does not share an id with a GGUF of the same
//! weights: the id addresses the transfer format's bytes, not only the maths.
//!
//! The format is versioned ([`MANIFEST_VERSION`]): a manifest of another version is refused
//! when it is read, so a later format (more fields) is never mistaken for this one.

use std::ops::Range;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{HeadWeights, LayerWeights, LlamaConfig, ModelError, ModelFile, QMatrix, Tokenizer};

/// Whether `s` is a 32-byte hash in its one spelling: 64 lowercase hex digits (model ids and
/// part roots in DHT keys and file names).
pub fn is_hex_digest(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A 32-byte content hash naming a model.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ModelId(pub [u8; 32]);

impl ModelId {
    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex digits.
    pub fn from_hex(s: &str) -> Option<ModelId> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(ModelId(out))
    }

    /// The first 12 hex digits, for logs.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..6])
    }
}

impl std::fmt::Display for ModelId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl std::fmt::Debug for ModelId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ModelId({})", self.short())
    }
}

/// One downloadable part: what a downloader fetches by, checks and pays for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartRef {
    /// Bytes of the part.
    pub size: u64,
    /// BLAKE3 root of the part's verified-streaming tree ([`super::verified`]), hex.
    pub root: String,
    /// Floating-point operations per token of its weight products (two per multiply-add;
    /// attention, which grows with the context, is not counted).
    pub flops: u64,
}

impl PartRef {
    /// The reference of a part's bytes.
    pub fn of(bytes: &[u8], flops: u64) -> PartRef {
        let root = super::verified::PartTree::new(bytes).root();
        PartRef { size: root.size, root: root.to_hex(), flops }
    }

    /// The content address, if the root is 64 hex digits.
    pub fn address(&self) -> Option<super::verified::PartRoot> {
        let mut root = [0u8; 32];
        hex::decode_to_slice(&self.root, &mut root).ok()?;
        Some(super::verified::PartRoot { size: self.size, root })
    }
}

/// The parts of a model cut from a GGUF file ([`super::parts::ManifestFromParts`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartIndex {
    /// The head part (embeddings, final norm, LM head, tokenizer, template).
    pub head: PartRef,
    /// One part per block, in order.
    pub blocks: Vec<PartRef>,
}

/// The manifest format this build writes and reads. Version 1 had no RoPE factors, tokenizer
/// or chat template.
pub const MANIFEST_VERSION: u32 = 2;

/// What a model is made of: its shape, the hash of every block, and of what shapes its text.
///
/// Deserializing checks the version and that the hashes are well formed (one per block).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Wire")]
pub struct Manifest {
    /// Manifest format version ([`MANIFEST_VERSION`]).
    pub version: u32,
    /// Architecture family (`llama`, `mistral`, `qwen2`, `qwen3`).
    pub arch: String,
    /// Hidden size.
    pub hidden: usize,
    /// FFN size.
    pub intermediate: usize,
    /// Decoder layers.
    pub n_layers: usize,
    /// Attention heads.
    pub n_heads: usize,
    /// Key/value heads.
    pub n_kv_heads: usize,
    /// Head size.
    pub head_dim: usize,
    /// RoPE base, as f32 bits (exact).
    pub rope_theta_bits: u32,
    /// RMSNorm epsilon, as f32 bits.
    pub rms_eps_bits: u32,
    /// Vocabulary size.
    pub vocab: usize,
    /// Context length.
    pub max_seq_len: usize,
    /// SHA-256 of the RoPE frequency factors (f32, little-endian), hex; `None` without.
    pub rope_freqs: Option<String>,
    /// RoPE's attention factor ([`LlamaConfig::rope_attn_factor`]) as f32 bits; absent when it
    /// is 1 (so that the models without one keep their ids).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_attn_factor_bits: Option<u32>,
    /// Sliding-window attention span; absent for global attention (so that models without
    /// one keep the ids they had before the field existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sliding_window: Option<usize>,
    /// Gemma's constants; absent for the other architectures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gemma: Option<super::GemmaParams>,
    /// SHA-256 of the tokenizer ([`Tokenizer::fingerprint`]), hex; `None` for a model that
    /// ships none.
    pub tokenizer: Option<String>,
    /// SHA-256 of the chat template's source, hex; `None` for a model that ships none.
    pub chat_template: Option<String>,
    /// SHA-256 of each decoder layer's weights, hex.
    pub blocks: Vec<String>,
    /// SHA-256 of the head (embeddings, final norm, LM head), hex.
    pub head: String,
    /// The downloadable parts, for a model read from a GGUF file; absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parts: Option<PartIndex>,
}

/// The serialized form of [`Manifest`], checked before it becomes one.
#[derive(Deserialize)]
struct Wire {
    version: u32,
    arch: String,
    hidden: usize,
    intermediate: usize,
    n_layers: usize,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    rope_theta_bits: u32,
    rms_eps_bits: u32,
    vocab: usize,
    max_seq_len: usize,
    rope_freqs: Option<String>,
    #[serde(default)]
    rope_attn_factor_bits: Option<u32>,
    #[serde(default)]
    sliding_window: Option<usize>,
    #[serde(default)]
    gemma: Option<super::GemmaParams>,
    tokenizer: Option<String>,
    chat_template: Option<String>,
    blocks: Vec<String>,
    head: String,
    #[serde(default)]
    parts: Option<PartIndex>,
}

impl TryFrom<Wire> for Manifest {
    type Error = ModelError;

    fn try_from(w: Wire) -> Result<Self, ModelError> {
        let m = Manifest {
            version: w.version,
            arch: w.arch,
            hidden: w.hidden,
            intermediate: w.intermediate,
            n_layers: w.n_layers,
            n_heads: w.n_heads,
            n_kv_heads: w.n_kv_heads,
            head_dim: w.head_dim,
            rope_theta_bits: w.rope_theta_bits,
            rms_eps_bits: w.rms_eps_bits,
            vocab: w.vocab,
            max_seq_len: w.max_seq_len,
            rope_freqs: w.rope_freqs,
            rope_attn_factor_bits: w.rope_attn_factor_bits,
            sliding_window: w.sliding_window,
            gemma: w.gemma,
            tokenizer: w.tokenizer,
            chat_template: w.chat_template,
            blocks: w.blocks,
            head: w.head,
            parts: w.parts,
        };
        m.validate()?;
        Ok(m)
    }
}

fn bad(what: String) -> ModelError {
    ModelError::BadFormat { format: "manifest", what }
}

/// SHA-256 of `bytes`, lowercase hex.
pub fn sha_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl Manifest {
    /// Hashes every layer and the head of `file` (reads all weights once), its tokenizer
    /// (built once) and its chat template.
    pub fn of_file(file: &ModelFile) -> Result<Manifest, ModelError> {
        if let ModelFile::Gguf(g) = file {
            return super::parts::manifest_of(g.file(), g.config().n_layers);
        }
        let config = file.config();
        let blocks = (0..config.n_layers)
            .map(|i| file.load_layer(i).map(|w| hex::encode(layer_hash(&w))))
            .collect::<Result<Vec<_>, _>>()?;
        let tokenizer = match file.has_tokenizer() {
            true => Some(tokenizer_hash(&file.tokenizer()?)?),
            false => None,
        };
        let template = file.chat_template();
        Ok(Manifest::new(config, blocks, hex::encode(head_hash(&file.load_head()?)))
            .with_text(tokenizer, template.as_deref().map(template_hash)))
    }

    /// Checks `file` against this manifest for what a node uses of it: its configuration,
    /// layers `blocks` and, when `head`, its head, tokenizer and chat template. Reads and hashes
    /// nothing else ([`Manifest::of_file`] reads every layer); a difference is
    /// [`ModelError::HashMismatch`] naming the part, or [`ModelError::BadConfig`].
    pub fn check_file(&self, file: &ModelFile, blocks: Range<usize>, head: bool) -> Result<(), ModelError> {
        if !self.describes(file.config()) {
            return Err(ModelError::BadConfig("the file's configuration differs from its manifest's".into()));
        }
        let mismatch = |part: String, expected: &str, actual: String| {
            Err(ModelError::HashMismatch { part, expected: expected.to_string(), actual })
        };
        for i in blocks {
            let expected =
                self.blocks.get(i).ok_or(ModelError::LayerOutOfRange { layer: i, n_layers: self.n_layers })?;
            let actual = hex::encode(layer_hash(&file.load_layer(i)?));
            if actual != *expected {
                return mismatch(format!("block {i}"), expected, actual);
            }
        }
        if head {
            let actual = hex::encode(head_hash(&file.load_head()?));
            if actual != self.head {
                return mismatch("head".into(), &self.head, actual);
            }
            let tokenizer = match file.has_tokenizer() {
                true => Some(tokenizer_hash(&file.tokenizer()?)?),
                false => None,
            };
            self.check_text("", tokenizer, file.chat_template().as_deref().map(template_hash))?;
        }
        Ok(())
    }

    /// Checks the hashes of a tokenizer and a chat template (`None`: absent) against the
    /// manifest's; errors name them after `prefix` (`"head "` for a downloaded head part).
    pub(crate) fn check_text(
        &self,
        prefix: &str,
        tokenizer: Option<String>,
        template: Option<String>,
    ) -> Result<(), ModelError> {
        for (what, expected, actual) in
            [("tokenizer", &self.tokenizer, tokenizer), ("chat template", &self.chat_template, template)]
        {
            if *expected != actual {
                let none = || "none".to_string();
                return Err(ModelError::HashMismatch {
                    part: format!("{prefix}{what}"),
                    expected: expected.clone().unwrap_or_else(none),
                    actual: actual.unwrap_or_else(none),
                });
            }
        }
        Ok(())
    }

    /// Reads a manifest from JSON, checking its version and form.
    pub fn from_json(json: &[u8]) -> Result<Manifest, ModelError> {
        serde_json::from_slice(json).map_err(|e| bad(e.to_string()))
    }

    /// Checks the version and that every hash is 64 hex digits, one per block.
    pub fn validate(&self) -> Result<(), ModelError> {
        if self.version != MANIFEST_VERSION {
            return Err(bad(format!(
                "version {}, this build reads version {MANIFEST_VERSION} (update ait, or the node that sent it)",
                self.version
            )));
        }
        if self.blocks.len() != self.n_layers {
            return Err(bad(format!("{} block hashes for {} layers", self.blocks.len(), self.n_layers)));
        }
        if let Some(p) = &self.parts {
            if p.blocks.len() != self.n_layers {
                return Err(bad(format!("{} block parts for {} layers", p.blocks.len(), self.n_layers)));
            }
            if let Some(r) = std::iter::once(&p.head).chain(&p.blocks).find(|r| r.address().is_none()) {
                return Err(bad(format!("part root {:?} is not 64 hex digits", r.root)));
            }
        }
        let named = [("head", Some(&self.head)), ("rope_freqs", self.rope_freqs.as_ref())]
            .into_iter()
            .chain([("tokenizer", self.tokenizer.as_ref()), ("chat_template", self.chat_template.as_ref())])
            .chain(self.blocks.iter().map(|b| ("block", Some(b))));
        for (what, hash) in named {
            if let Some(h) = hash.filter(|h| h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit())) {
                return Err(bad(format!("{what} hash {h:?} is not 64 hex digits")));
            }
        }
        Ok(())
    }

    /// This manifest with the hashes of a tokenizer and a chat template (see [`tokenizer_hash`],
    /// [`template_hash`]).
    pub fn with_text(mut self, tokenizer: Option<String>, chat_template: Option<String>) -> Manifest {
        self.tokenizer = tokenizer;
        self.chat_template = chat_template;
        self
    }

    /// A manifest from a configuration and precomputed hashes, with no tokenizer or template
    /// (see [`Self::with_text`]).
    pub fn new(config: &LlamaConfig, blocks: Vec<String>, head: String) -> Manifest {
        let arch = config.arch.name();
        let rope_freqs = config.rope_freq_factors.as_ref().map(|f| {
            let bytes: Vec<u8> = f.iter().flat_map(|x| x.to_le_bytes()).collect();
            sha_hex(&bytes)
        });
        Manifest {
            version: MANIFEST_VERSION,
            arch: arch.into(),
            hidden: config.hidden,
            intermediate: config.intermediate,
            n_layers: config.n_layers,
            n_heads: config.n_heads,
            n_kv_heads: config.n_kv_heads,
            head_dim: config.head_dim,
            rope_theta_bits: config.rope_theta.to_bits(),
            rms_eps_bits: config.rms_eps.to_bits(),
            vocab: config.vocab,
            max_seq_len: config.max_seq_len,
            rope_freqs,
            rope_attn_factor_bits: (config.rope_attn_factor != 1.0).then(|| config.rope_attn_factor.to_bits()),
            sliding_window: config.sliding_window,
            gemma: config.gemma.clone(),
            tokenizer: None,
            chat_template: None,
            blocks,
            head,
            parts: None,
        }
    }

    /// Whether this manifest describes a model of configuration `config` (every field but
    /// the hashes and parts, which say what the weights are).
    pub(crate) fn describes(&self, config: &LlamaConfig) -> bool {
        let d = Manifest::new(config, self.blocks.clone(), self.head.clone())
            .with_text(self.tokenizer.clone(), self.chat_template.clone());
        Manifest { parts: self.parts.clone(), ..d } == *self
    }

    /// Whether configurations `a` and `b` give a manifest the same fields (a block part's own
    /// configuration may differ from the head's in what it does not hold, such as whether the
    /// embeddings are tied).
    pub(crate) fn same_config(a: &LlamaConfig, b: &LlamaConfig) -> bool {
        Manifest::new(a, Vec::new(), String::new()) == Manifest::new(b, Vec::new(), String::new())
    }

    /// The model id: SHA-256 of this manifest's JSON.
    pub fn id(&self) -> ModelId {
        // Serializing a struct of strings and integers cannot fail.
        let json = serde_json::to_vec(self).unwrap_or_default();
        ModelId(Sha256::digest(&json).into())
    }
}

/// A tokenizer's [`Tokenizer::fingerprint`], hex.
pub fn tokenizer_hash(t: &Tokenizer) -> Result<String, ModelError> {
    t.fingerprint().map(hex::encode)
}

/// SHA-256 of a chat template's source, hex.
pub fn template_hash(source: &str) -> String {
    sha_hex(source.as_bytes())
}

fn hash_matrix(h: &mut Sha256, m: &QMatrix) {
    h.update(m.dtype.name().as_bytes());
    h.update((m.rows as u64).to_le_bytes());
    h.update((m.cols as u64).to_le_bytes());
    h.update(&m.data);
}

fn hash_vec(h: &mut Sha256, v: &[f32]) {
    h.update((v.len() as u64).to_le_bytes());
    for x in v {
        h.update(x.to_le_bytes());
    }
}

/// SHA-256 over one layer's tensors, in a fixed order.
pub fn layer_hash(w: &LayerWeights) -> [u8; 32] {
    let mut h = Sha256::new();
    hash_vec(&mut h, &w.attn_norm);
    for m in [&w.attn_q, &w.attn_k, &w.attn_v, &w.attn_output] {
        hash_matrix(&mut h, m);
    }
    if let Some(biases) = &w.qkv_bias {
        for b in biases {
            hash_vec(&mut h, b);
        }
    }
    for norms in [&w.qk_norm, &w.post_norms].into_iter().flatten() {
        for n in norms {
            hash_vec(&mut h, n);
        }
    }
    hash_vec(&mut h, &w.ffn_norm);
    for m in [&w.ffn_gate, &w.ffn_up, &w.ffn_down] {
        hash_matrix(&mut h, m);
    }
    h.finalize().into()
}

/// SHA-256 over the head's tensors.
pub fn head_hash(w: &HeadWeights) -> [u8; 32] {
    let mut h = Sha256::new();
    hash_matrix(&mut h, &w.token_embd);
    hash_vec(&mut h, &w.output_norm);
    if let Some(o) = &w.output {
        hash_matrix(&mut h, o);
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        let config = LlamaConfig {
            arch: super::super::Arch::Llama,
            hidden: 8,
            intermediate: 16,
            n_layers: 2,
            n_heads: 2,
            n_kv_heads: 2,
            head_dim: 4,
            rope_theta: 10_000.0,
            rms_eps: 1e-5,
            vocab: 10,
            max_seq_len: 32,
            tie_embeddings: true,
            rope_freq_factors: Some(vec![1.0, 8.0]),
            rope_attn_factor: 1.0,
            sliding_window: None,
            gemma: None,
        };
        Manifest::new(&config, vec!["a".repeat(64), "b".repeat(64)], "c".repeat(64))
            .with_text(Some("d".repeat(64)), Some(template_hash("{{ x }}")))
    }

    #[test]
    fn versioned_json_round_trips_and_unknown_versions_are_refused() {
        let m = sample();
        assert_eq!(m.version, MANIFEST_VERSION);
        let json = serde_json::to_vec(&m).unwrap();
        assert_eq!(Manifest::from_json(&json).unwrap(), m);
        let mut v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        v["version"] = 7.into();
        let e = Manifest::from_json(v.to_string().as_bytes()).unwrap_err().to_string();
        assert!(e.contains("version 7, this build reads version 2"), "{e}");
        // The same check on every serde path (the app reads manifests with serde_json).
        assert!(serde_json::from_value::<Manifest>(v).is_err());
        // A version-1 manifest (no tokenizer, template or RoPE fields) is refused too.
        let mut v1: serde_json::Value = serde_json::from_slice(&json).unwrap();
        v1["version"] = 1.into();
        assert!(Manifest::from_json(v1.to_string().as_bytes()).unwrap_err().to_string().contains("version 1"));
    }

    #[test]
    fn malformed_manifests_are_refused() {
        let mut m = sample();
        m.blocks.pop();
        let e = m.validate().unwrap_err().to_string();
        assert!(e.contains("1 block hashes for 2 layers"), "{e}");
        let mut m = sample();
        m.tokenizer = Some("zz".into());
        let json = serde_json::to_vec(&m).unwrap();
        let e = Manifest::from_json(&json).unwrap_err().to_string();
        assert!(e.contains("tokenizer hash \"zz\" is not 64 hex digits"), "{e}");
    }

    #[test]
    fn id_covers_rope_tokenizer_and_template() {
        let m = sample();
        let mut other = m.clone();
        other.rope_freqs = None;
        assert_ne!(m.id(), other.id());
        // The attention factor is absent at 1 (older ids stay), and counted otherwise.
        assert!(!String::from_utf8(serde_json::to_vec(&m).unwrap()).unwrap().contains("rope_attn_factor"));
        let mut other = m.clone();
        other.rope_attn_factor_bits = Some(1.19f32.to_bits());
        assert_ne!(m.id(), other.id());
        assert_eq!(Manifest::from_json(&serde_json::to_vec(&other).unwrap()).unwrap(), other);
        // Part roots: absent without parts; with them, each root and size is in the id.
        assert!(!String::from_utf8(serde_json::to_vec(&m).unwrap()).unwrap().contains("\"parts\""));
        let part = |b: u8| PartRef::of(&[b; 100], 10);
        let with = Manifest { parts: Some(PartIndex { head: part(0), blocks: vec![part(1), part(2)] }), ..m.clone() };
        assert_ne!(with.id(), m.id());
        assert_eq!(Manifest::from_json(&serde_json::to_vec(&with).unwrap()).unwrap(), with);
        let mut other = with.clone();
        other.parts.as_mut().unwrap().blocks[1] = part(3);
        assert_ne!(other.id(), with.id());
        other.parts.as_mut().unwrap().blocks[1].root = "zz".into();
        let e = Manifest::from_json(&serde_json::to_vec(&other).unwrap()).unwrap_err().to_string();
        assert!(e.contains("part root \"zz\" is not 64 hex digits"), "{e}");
        other.parts.as_mut().unwrap().blocks.pop();
        let e = Manifest::from_json(&serde_json::to_vec(&other).unwrap()).unwrap_err().to_string();
        assert!(e.contains("1 block parts for 2 layers"), "{e}");
        let other = m.clone().with_text(None, m.chat_template.clone());
        assert_ne!(m.id(), other.id());
        let other = m.clone().with_text(m.tokenizer.clone(), Some(template_hash("{{ y }}")));
        assert_ne!(m.id(), other.id());
    }

    #[test]
    fn hex_round_trip() {
        let id = ModelId([7; 32]);
        assert_eq!(ModelId::from_hex(&id.to_hex()), Some(id));
        assert_eq!(ModelId::from_hex("zz"), None);
    }
}
