//! Text to token ids and back, for the model's own vocabulary.
//!
//! Main type: [`Tokenizer`], a [`tokenizers`] tokenizer built either from a GGUF file's
//! `tokenizer.ggml.*` metadata ([`Tokenizer::from_gguf`]) or from Hugging Face's
//! `tokenizer.json` + `tokenizer_config.json` ([`Tokenizer::from_json`]), plus which ids are
//! BOS/EOS and whether BOS is prepended. [`TokenStream`] turns generated ids into text pieces
//! as soon as they are complete UTF-8.
//!
//! A GGUF file may instead carry the whole `tokenizer.json` (GGUF's
//! `tokenizer.huggingface.json`, which is how `ait publish` stores a converted checkpoint's
//! tokenizer: [`Tokenizer::gguf_metadata`]).
//!
//! Two vocabulary kinds come out of `tokenizer.ggml.*`:
//! - `gpt2`: byte-level BPE from `tokens` + `merges`; the `pre` type picks the pre-tokenizer
//!   (`smollm`, `llama-bpe`/`llama3`, `qwen2`, else GPT-2's).
//! - `llama`: SentencePiece BPE (`▁` for spaces, `<0xAB>` byte tokens, `scores`). It is rebuilt
//!   as a byte-fallback BPE whose merges are derived from the vocabulary ordered by score, the
//!   way Hugging Face converts SentencePiece BPE models.
//!
//! Control tokens (`<|im_start|>`, `<s>` ...) are special: written in text they are one token,
//! and [`Tokenizer::decode`] leaves them out. This module does not apply chat templates (see
//! [`super::chat`]).

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, DecoderWrapper, NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior};

use super::gguf::{Metadata, Value};
use super::ModelError;

/// GGUF `token_type` of a normal token.
const TYPE_NORMAL: i64 = 1;
/// GGUF `token_type` of the unknown token.
const TYPE_UNKNOWN: i64 = 2;
/// GGUF `token_type` of a control token (`<s>`, `<|im_start|>`).
const TYPE_CONTROL: i64 = 3;
/// GGUF `token_type` of a user-defined token (added to the vocabulary, shown when decoded).
const TYPE_USER_DEFINED: i64 = 4;
/// GGUF `token_type` of a byte token (`<0x41>`).
const TYPE_BYTE: i64 = 6;

/// SentencePiece's word-boundary marker, standing for a space.
const SPIECE_SPACE: &str = "\u{2581}";

/// Longest SentencePiece piece, in characters, that merges are derived for: SentencePiece's
/// trainer refuses `max_sentencepiece_length` above 512 (default 16), so a longer `normal`
/// piece cannot come from it. Longer ones stay in the vocabulary but get no merges.
pub const MAX_PIECE_CHARS: usize = 512;
/// Most merges derived from a SentencePiece vocabulary (each holds two strings). Llama 2's
/// 32k vocabulary gives about 61k, Gemma's 256k about 500k: this is 8 times that, and bounds
/// the memory a vocabulary built to have many splits per piece can take.
pub const MAX_DERIVED_MERGES: usize = 1 << 22;

/// Llama 3's pre-tokenizer split (also DBRX, Smaug): numbers in groups of up to 3 digits.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's pre-tokenizer split: like Llama 3's, but one digit at a time.
const QWEN2_SPLIT: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// GGUF's key for a whole Hugging Face `tokenizer.json`.
pub const HF_JSON: &str = "tokenizer.huggingface.json";

/// Special tokens that chat models end a turn or a document with. Those present in a
/// vocabulary as special tokens count as end-of-sequence besides the declared EOS.
const END_TOKENS: &[&str] =
    &["<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end_of_text|>", "<|endoftext|>", "<|end|>", "<end_of_turn>", "</s>"];

/// A `tokenizer.json`, padding and truncation turned off.
fn parse_json(json: &[u8]) -> Result<tokenizers::Tokenizer, ModelError> {
    let mut inner = tokenizers::Tokenizer::from_bytes(json)
        .map_err(|e| ModelError::Tokenizer(format!("bad tokenizer.json: {e}")))?;
    inner.with_padding(None);
    inner.with_truncation(None).map_err(tok_err)?;
    Ok(inner)
}

/// The token id under GGUF `key`, if present; an id outside an `n`-token vocabulary is an
/// error naming the key.
fn token_id(md: &Metadata, key: &str, n: usize) -> Result<Option<u32>, ModelError> {
    match md.u64(key)? {
        None => Ok(None),
        Some(id) if usize::try_from(id).is_ok_and(|i| i < n) => Ok(Some(id as u32)),
        Some(id) => Err(md_err(key, format!("token id {id} outside the {n}-token vocabulary"))),
    }
}

fn tok_err(e: impl fmt::Display) -> ModelError {
    ModelError::Tokenizer(e.to_string())
}

fn md_err(key: &str, what: impl Into<String>) -> ModelError {
    ModelError::Metadata { key: key.to_string(), what: what.into() }
}

/// A model's tokenizer: text to ids and back, with its BOS/EOS conventions.
///
/// Cheap to clone (the vocabulary is shared).
#[derive(Clone)]
pub struct Tokenizer {
    inner: Arc<tokenizers::Tokenizer>,
    bos: Option<u32>,
    eos: Vec<u32>,
    add_bos: bool,
    add_eos: bool,
}

impl fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("add_bos", &self.add_bos)
            .field("add_eos", &self.add_eos)
            .finish()
    }
}

impl Tokenizer {
    /// Builds the tokenizer described by GGUF `tokenizer.ggml.*` metadata.
    ///
    /// Reads `model` (`gpt2` or `llama`), `pre`, `tokens`, `token_type`, `merges` (gpt2),
    /// `scores` (llama), `bos/eos/eot/eom/unknown_token_id`, `add_bos_token`, `add_eos_token`
    /// and `add_space_prefix`.
    ///
    /// A file with no `tokenizer.ggml.model` but GGUF's `tokenizer.huggingface.json` (the whole
    /// `tokenizer.json`, as `ait publish` writes when it converts a Hugging Face checkpoint)
    /// gets that tokenizer, with BOS/EOS ids and `add_bos/eos_token` from the same keys.
    pub fn from_gguf(md: &Metadata) -> Result<Tokenizer, ModelError> {
        const MODEL: &str = "tokenizer.ggml.model";
        const TOKENS: &str = "tokenizer.ggml.tokens";
        if md.get(MODEL).is_none() {
            if let Some(json) = md.str(HF_JSON)? {
                return Self::from_gguf_json(md, json);
            }
        }
        let model = md.str(MODEL)?.ok_or_else(|| md_err(MODEL, "missing"))?;
        let tokens = md.str_array(TOKENS)?.ok_or_else(|| md_err(TOKENS, "missing"))?;
        if tokens.is_empty() {
            return Err(md_err(TOKENS, "empty vocabulary"));
        }
        let n = tokens.len();
        let types = match int_array(md, "tokenizer.ggml.token_type")? {
            Some(t) if t.len() != n => {
                return Err(md_err("tokenizer.ggml.token_type", format!("{} entries for {n} tokens", t.len())))
            }
            Some(t) => t,
            None => vec![TYPE_NORMAL; n],
        };
        let token_id = |key: &str| token_id(md, key, n);
        let bos = token_id("tokenizer.ggml.bos_token_id")?;
        let eos = token_id("tokenizer.ggml.eos_token_id")?;
        let eot = token_id("tokenizer.ggml.eot_token_id")?;
        let eom = token_id("tokenizer.ggml.eom_token_id")?;
        let unk = token_id("tokenizer.ggml.unknown_token_id")?;
        let pre = md.str("tokenizer.ggml.pre")?.unwrap_or("default");

        let (mut inner, default_add_bos) = match model {
            "gpt2" => (byte_level_bpe(md, &tokens, pre)?, matches!(pre, "llama-bpe" | "llama3")),
            "llama" => {
                let add_space_prefix = bool_key(md, "tokenizer.ggml.add_space_prefix")?.unwrap_or(true);
                (sentencepiece_bpe(md, &tokens, &types, unk, add_space_prefix)?, true)
            }
            other => {
                return Err(ModelError::Tokenizer(format!(
                    "unsupported tokenizer model `{other}` in {MODEL} (supported: gpt2, llama)"
                )))
            }
        };

        let mut special = Vec::new();
        let mut user = Vec::new();
        for (tok, &ty) in tokens.iter().zip(&types) {
            match ty {
                TYPE_CONTROL | TYPE_UNKNOWN => special.push(AddedToken::from(*tok, true).normalized(false)),
                TYPE_USER_DEFINED => user.push(AddedToken::from(*tok, false).normalized(false)),
                _ => {}
            }
        }
        // Special tokens the metadata names are special whatever their type says.
        for id in [bos, eos, eot, eom].into_iter().flatten() {
            let tok = tokens[id as usize];
            if types[id as usize] != TYPE_CONTROL && types[id as usize] != TYPE_UNKNOWN {
                special.push(AddedToken::from(tok, true).normalized(false));
            }
        }
        inner.add_special_tokens(&special);
        inner.add_tokens(&user);

        let mut eos_ids: Vec<u32> = Vec::new();
        for id in [eos, eot, eom].into_iter().flatten() {
            push_unique(&mut eos_ids, id);
        }
        for end in END_TOKENS {
            if let Some(id) = inner.token_to_id(end) {
                if types.get(id as usize) == Some(&TYPE_CONTROL) {
                    push_unique(&mut eos_ids, id);
                }
            }
        }
        Ok(Tokenizer {
            inner: Arc::new(inner),
            bos,
            eos: eos_ids,
            add_bos: bool_key_or(md, "tokenizer.ggml.add_bos_token", default_add_bos)? && bos.is_some(),
            add_eos: bool_key_or(md, "tokenizer.ggml.add_eos_token", false)? && eos.is_some(),
        })
    }

    /// Loads Hugging Face `tokenizer.json`, with `tokenizer_config.json` when given.
    ///
    /// From the config: `bos_token` and `eos_token` (strings or `{"content": ..}` objects),
    /// `add_bos_token`, `add_eos_token`. Without a config (or without `add_bos_token`), BOS is
    /// prepended iff `tokenizer.json`'s post-processor would put BOS first. Padding and
    /// truncation settings in the file are ignored.
    pub fn from_json(tokenizer_json: &[u8], tokenizer_config_json: Option<&[u8]>) -> Result<Tokenizer, ModelError> {
        let inner = parse_json(tokenizer_json)?;
        let config: serde_json::Value = match tokenizer_config_json {
            Some(bytes) => serde_json::from_slice(bytes)
                .map_err(|e| ModelError::Tokenizer(format!("bad tokenizer_config.json: {e}")))?,
            None => serde_json::Value::Null,
        };
        let lookup = |key: &str| -> Result<Option<u32>, ModelError> {
            let Some(content) = token_content(&config, key) else {
                return Ok(None);
            };
            inner.token_to_id(content).map(Some).ok_or_else(|| {
                ModelError::Tokenizer(format!("tokenizer_config.json {key} `{content}` is not in the vocabulary"))
            })
        };
        let bos = lookup("bos_token")?;
        let eos = lookup("eos_token")?;

        // What the post-processor (e.g. TemplateProcessing "<s> $A") adds to an empty text.
        let template = inner.encode("", true).map_err(tok_err)?;
        let first = template.get_ids().first().copied();
        let add_bos = match config.get("add_bos_token").and_then(serde_json::Value::as_bool) {
            Some(b) => b,
            None => bos.is_some() && first == bos,
        };
        let add_eos = config.get("add_eos_token").and_then(serde_json::Value::as_bool).unwrap_or(false);
        Ok(Self::with_json_specials(inner, bos, eos, add_bos, add_eos))
    }

    /// The tokenizer a GGUF file stores as `tokenizer.huggingface.json` (see
    /// [`Tokenizer::from_gguf`]).
    fn from_gguf_json(md: &Metadata, json: &str) -> Result<Tokenizer, ModelError> {
        let inner = parse_json(json.as_bytes()).map_err(|e| e.in_file(HF_JSON))?;
        let n = inner.get_vocab_size(true);
        let token_id = |key: &str| token_id(md, key, n);
        let bos = token_id("tokenizer.ggml.bos_token_id")?;
        let eos = token_id("tokenizer.ggml.eos_token_id")?;
        let add_bos = bool_key_or(md, "tokenizer.ggml.add_bos_token", false)?;
        let add_eos = bool_key_or(md, "tokenizer.ggml.add_eos_token", false)?;
        Ok(Self::with_json_specials(inner, bos, eos, add_bos, add_eos))
    }

    /// A `tokenizer.json` tokenizer with its BOS and EOS; the end-of-turn tokens it has as
    /// special tokens end generation too.
    fn with_json_specials(
        inner: tokenizers::Tokenizer,
        bos: Option<u32>,
        eos: Option<u32>,
        add_bos: bool,
        add_eos: bool,
    ) -> Tokenizer {
        let mut eos_ids = Vec::new();
        if let Some(id) = eos {
            push_unique(&mut eos_ids, id);
        }
        let added = inner.get_added_tokens_decoder();
        for end in END_TOKENS {
            if let Some(id) = inner.token_to_id(end) {
                if added.get(&id).is_some_and(|t| t.special) {
                    push_unique(&mut eos_ids, id);
                }
            }
        }
        Tokenizer {
            inner: Arc::new(inner),
            bos,
            eos: eos_ids,
            add_bos: add_bos && bos.is_some(),
            add_eos: add_eos && eos.is_some(),
        }
    }

    /// GGUF metadata that [`Tokenizer::from_gguf`] reads back as this tokenizer (same
    /// [`fingerprint`](Self::fingerprint)): the whole tokenizer as `tokenizer.huggingface.json`,
    /// GGUF's key for executors that run Hugging Face tokenizers directly, plus the BOS and EOS
    /// ids and whether they are added. llama.cpp reads only `tokenizer.ggml.tokens`, so it
    /// cannot tokenize such a file; every node of ours can.
    pub fn gguf_metadata(&self) -> Result<Vec<(String, Value)>, ModelError> {
        let mut md = vec![
            (HF_JSON.to_string(), Value::Str(self.inner.to_string(false).map_err(tok_err)?)),
            ("tokenizer.ggml.add_bos_token".to_string(), Value::Bool(self.add_bos)),
            ("tokenizer.ggml.add_eos_token".to_string(), Value::Bool(self.add_eos)),
        ];
        if let Some(bos) = self.bos {
            md.push(("tokenizer.ggml.bos_token_id".to_string(), Value::U64(bos.into())));
        }
        if let Some(&eos) = self.eos.first() {
            md.push(("tokenizer.ggml.eos_token_id".to_string(), Value::U64(eos.into())));
        }
        Ok(md)
    }

    /// Token ids of `text`. Special tokens written in the text (`<|im_start|>`) are recognized
    /// as one token each. BOS is prepended iff the model asks for it (and the text does not
    /// already start with it); EOS is appended iff the model asks for it.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, ModelError> {
        let enc = self.inner.encode(text, false).map_err(tok_err)?;
        let ids = enc.get_ids();
        let mut out = Vec::with_capacity(ids.len() + 2);
        if let Some(bos) = self.bos.filter(|_| self.add_bos) {
            if ids.first() != Some(&bos) {
                out.push(bos);
            }
        }
        out.extend_from_slice(ids);
        if let Some(&eos) = self.eos.first().filter(|_| self.add_eos) {
            out.push(eos);
        }
        Ok(out)
    }

    /// Text of `ids`, special tokens left out.
    pub fn decode(&self, ids: &[u32]) -> Result<String, ModelError> {
        self.inner.decode(ids, true).map_err(tok_err)
    }

    /// A streaming decoder for generated ids.
    pub fn stream(&self) -> TokenStream {
        TokenStream::new(self.clone())
    }

    /// The BOS token, if the model has one.
    pub fn bos_token(&self) -> Option<u32> {
        self.bos
    }

    /// Whether [`encode`](Self::encode) prepends BOS.
    pub fn adds_bos(&self) -> bool {
        self.add_bos
    }

    /// Tokens that end generation: the declared EOS first, then end-of-turn tokens
    /// (`eot_token_id`, and special `<|im_end|>`, `<|eot_id|>`, `<|endoftext|>` ... present in
    /// the vocabulary).
    pub fn eos_tokens(&self) -> &[u32] {
        &self.eos
    }

    /// The raw vocabulary piece of `id` (`Ġthe` for byte-level BPE, `▁the` for SentencePiece).
    pub fn token_str(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The text of `id` as written in a prompt: a special token's content (`<|im_start|>`,
    /// `<s>`), else the token decoded on its own.
    pub fn special_str(&self, id: u32) -> Option<String> {
        if let Some(t) = self.inner.get_added_vocabulary().get_added_tokens_decoder().get(&id) {
            return Some(t.content.clone());
        }
        self.inner.id_to_token(id)?;
        self.inner.decode(&[id], false).ok()
    }

    /// The BOS token's text (for chat templates' `bos_token`), if any.
    pub fn bos_str(&self) -> Option<String> {
        self.bos.and_then(|id| self.special_str(id))
    }

    /// The declared EOS token's text (for chat templates' `eos_token`), if any.
    pub fn eos_str(&self) -> Option<String> {
        self.eos.first().and_then(|&id| self.special_str(id))
    }

    /// The id of a token given by its raw piece or special-token content.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Number of token ids, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// SHA-256 over everything that decides how text becomes ids and back: the `tokenizers`
    /// serialization (vocabulary by id, merges by rank, added and special tokens by id,
    /// normalizer, pre-tokenizer, decoder) and this model's BOS/EOS ids and rules. Two
    /// tokenizers built from the same file have the same fingerprint.
    pub fn fingerprint(&self) -> Result<[u8; 32], ModelError> {
        use sha2::{Digest, Sha256};
        let json = self.inner.to_string(false).map_err(tok_err)?;
        let mut h = Sha256::new();
        h.update((json.len() as u64).to_le_bytes());
        h.update(json.as_bytes());
        h.update(self.bos.map_or(u64::MAX, u64::from).to_le_bytes());
        h.update((self.eos.len() as u64).to_le_bytes());
        for id in &self.eos {
            h.update(id.to_le_bytes());
        }
        h.update([u8::from(self.add_bos), u8::from(self.add_eos)]);
        Ok(h.finalize().into())
    }
}

/// Streaming decoder: feed generated ids one at a time, get text as soon as it is complete.
///
/// Byte-level BPE (and byte fallback) can split one character over several tokens, and some
/// decoders change a token's text depending on what precedes it. So each step decodes a short
/// window of recent ids and emits only what the last id added, holding text back while it
/// ends in an incomplete character (U+FFFD). The pieces from [`push`](Self::push) followed by
/// [`finish`](Self::finish) concatenate to [`Tokenizer::decode`] of all ids.
#[derive(Clone, Debug)]
pub struct TokenStream {
    tokenizer: Tokenizer,
    /// Ids from the start of the window.
    ids: Vec<u32>,
    /// `ids[..read]` is already emitted (its text is `prefix`).
    read: usize,
    /// Decoded text of `ids[..read]`.
    prefix: String,
}

impl TokenStream {
    /// A stream decoding with `tokenizer`.
    pub fn new(tokenizer: Tokenizer) -> Self {
        TokenStream { tokenizer, ids: Vec::new(), read: 0, prefix: String::new() }
    }

    /// Adds one id; returns the new text it completes, if any.
    pub fn push(&mut self, id: u32) -> Result<Option<String>, ModelError> {
        self.ids.push(id);
        let text = self.tokenizer.decode(&self.ids)?;
        if text.len() <= self.prefix.len() || text.ends_with('\u{FFFD}') {
            return Ok(None);
        }
        let Some(new) = text.strip_prefix(self.prefix.as_str()) else {
            return Err(ModelError::Tokenizer(format!(
                "streaming decode: `{text}` does not extend `{}` (token {id})",
                self.prefix
            )));
        };
        let new = new.to_string();
        // Next window: starts at the last emitted id, so context-dependent decoding
        // (leading-space stripping, byte merging) sees what precedes the next id.
        self.ids.drain(..self.read);
        self.read = self.ids.len();
        self.prefix = self.tokenizer.decode(&self.ids)?;
        Ok(Some(new))
    }

    /// Text still held back (an incomplete character at the end), if any, and resets the
    /// stream.
    pub fn finish(&mut self) -> Result<Option<String>, ModelError> {
        let text = self.tokenizer.decode(&self.ids)?;
        let rest = text.get(self.prefix.len()..).filter(|r| !r.is_empty()).map(str::to_string);
        self.ids.clear();
        self.read = 0;
        self.prefix.clear();
        Ok(rest)
    }
}

/// `chat_template` from `tokenizer_config.json`: a string, or a list of `{name, template}`
/// (the one named `default`, else the first).
pub fn chat_template_from_config(tokenizer_config_json: &[u8]) -> Option<String> {
    let config: serde_json::Value = serde_json::from_slice(tokenizer_config_json).ok()?;
    match config.get("chat_template")? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Array(list) => {
            let template = |v: &serde_json::Value| v.get("template").and_then(|t| t.as_str()).map(str::to_string);
            list.iter()
                .find(|v| v.get("name").and_then(|n| n.as_str()) == Some("default"))
                .and_then(template)
                .or_else(|| list.first().and_then(template))
        }
        _ => None,
    }
}

/// `tokenizer_config.json`'s `key` as token text: a string or `{"content": ..}`.
fn token_content<'a>(config: &'a serde_json::Value, key: &str) -> Option<&'a str> {
    match config.get(key)? {
        serde_json::Value::String(s) => Some(s),
        serde_json::Value::Object(o) => o.get("content")?.as_str(),
        _ => None,
    }
}

fn push_unique(v: &mut Vec<u32>, id: u32) {
    if !v.contains(&id) {
        v.push(id);
    }
}

/// An optional bool metadata key.
fn bool_key(md: &Metadata, key: &str) -> Result<Option<bool>, ModelError> {
    match md.get(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(Value::U64(v)) => Ok(Some(*v != 0)),
        Some(other) => Err(md_err(key, format!("expected bool, found {other:?}"))),
    }
}

fn bool_key_or(md: &Metadata, key: &str, default: bool) -> Result<bool, ModelError> {
    Ok(bool_key(md, key)?.unwrap_or(default))
}

/// An optional array of integers.
fn int_array(md: &Metadata, key: &str) -> Result<Option<Vec<i64>>, ModelError> {
    let Some(a) = md.array(key)? else {
        return Ok(None);
    };
    a.iter()
        .map(|v| match *v {
            Value::I64(x) => Ok(x),
            Value::U64(x) => i64::try_from(x).map_err(|_| md_err(key, format!("integer {x} out of range"))),
            ref other => Err(md_err(key, format!("expected integers, found {other:?}"))),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// An optional array of numbers.
fn float_array(md: &Metadata, key: &str) -> Result<Option<Vec<f64>>, ModelError> {
    let Some(a) = md.array(key)? else {
        return Ok(None);
    };
    a.iter()
        .map(|v| v.as_f64().ok_or_else(|| md_err(key, format!("expected numbers, found {v:?}"))))
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// Token -> id; the first occurrence wins when a vocabulary repeats a piece.
fn vocab_map(tokens: &[&str]) -> Vocab {
    let mut vocab = Vocab::with_capacity(tokens.len());
    for (id, tok) in tokens.iter().enumerate() {
        vocab.entry(tok.to_string()).or_insert(id as u32);
    }
    vocab
}

/// `gpt2` GGUF vocabulary: byte-level BPE, pre-tokenizer chosen by `pre`.
fn byte_level_bpe(md: &Metadata, tokens: &[&str], pre: &str) -> Result<tokenizers::Tokenizer, ModelError> {
    const MERGES: &str = "tokenizer.ggml.merges";
    let merges = md.str_array(MERGES)?.ok_or_else(|| md_err(MERGES, "missing (needed by a gpt2 tokenizer)"))?;
    let merges = merges
        .iter()
        .enumerate()
        .map(|(i, m)| match m.split_once(' ') {
            Some((a, b)) if !a.is_empty() && !b.is_empty() => Ok((a.to_string(), b.to_string())),
            _ => Err(md_err(MERGES, format!("entry {i} `{m}` is not two tokens separated by a space"))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let is_llama3 = matches!(pre, "llama-bpe" | "llama3" | "dbrx" | "smaug-bpe");
    let bpe = BPE::builder()
        .vocab_and_merges(vocab_map(tokens), merges)
        .ignore_merges(is_llama3)
        .build()
        .map_err(|e| ModelError::Tokenizer(format!("cannot build BPE from {MERGES}: {e}")))?;

    let split = |pattern: &str| -> Result<PreTokenizerWrapper, ModelError> {
        Split::new(SplitPattern::Regex(pattern.to_string()), SplitDelimiterBehavior::Isolated, false)
            .map(PreTokenizerWrapper::from)
            .map_err(|e| ModelError::Tokenizer(format!("pre-tokenizer regex: {e}")))
    };
    let pre_tokenizer: PreTokenizerWrapper = match pre {
        "smollm" => PreSequence::new(vec![Digits::new(true).into(), ByteLevel::new(false, true, true).into()]).into(),
        _ if is_llama3 => {
            PreSequence::new(vec![split(LLAMA3_SPLIT)?, ByteLevel::new(false, true, false).into()]).into()
        }
        "qwen2" | "deepseek-r1-qwen" => {
            PreSequence::new(vec![split(QWEN2_SPLIT)?, ByteLevel::new(false, true, false).into()]).into()
        }
        "default" | "gpt-2" | "gpt2" => ByteLevel::new(false, true, true).into(),
        other => {
            tracing::warn!(pre = other, "unknown tokenizer.ggml.pre, using GPT-2 byte-level pre-tokenization");
            ByteLevel::new(false, true, true).into()
        }
    };
    let mut tk = tokenizers::Tokenizer::new(bpe);
    tk.with_pre_tokenizer(Some(pre_tokenizer));
    tk.with_decoder(Some(ByteLevel::default()));
    Ok(tk)
}

/// Keyed hashes of every prefix (`rev == false`) or suffix (`rev == true`) of `s`, one per
/// character, in one pass: the hash of `s[..i]` (or of `s[i..]`, characters fed last to first)
/// with the index `i`. A piece's own key is its last entry.
fn piece_hashes(state: &RandomState, s: &str, rev: bool) -> Vec<(usize, u64)> {
    let mut h = state.build_hasher();
    let mut out = Vec::with_capacity(s.len());
    let mut feed = |h: &mut std::collections::hash_map::DefaultHasher, i: usize, c: char| {
        let mut buf = [0u8; 4];
        h.write(c.encode_utf8(&mut buf).as_bytes());
        out.push((i, h.finish()));
    };
    if rev {
        s.char_indices().rev().for_each(|(i, c)| feed(&mut h, i, c));
    } else {
        s.char_indices().for_each(|(i, c)| feed(&mut h, i + c.len_utf8(), c));
    }
    out
}

/// Every split of a normal SentencePiece piece into two mergeable vocabulary pieces, as
/// `(score of the piece, piece id, left id, right id)`, each piece's splits ordered by ids.
///
/// Linear in the vocabulary's size: prefixes and suffixes are found by keyed hashes computed
/// incrementally (a 64-bit SipHash with random keys; a candidate is confirmed by comparing the
/// strings), not by hashing every half anew, which is quadratic in a piece's length. Pieces over
/// [`MAX_PIECE_CHARS`] get no merges; more than [`MAX_DERIVED_MERGES`] is an error.
fn piece_splits(
    tokens: &[&str],
    types: &[i64],
    vocab: &Vocab,
    scores: &[f64],
) -> Result<Vec<(f64, u32, u32, u32)>, ModelError> {
    let mergeable = |id: u32| !matches!(types[id as usize], TYPE_CONTROL | TYPE_UNKNOWN | TYPE_BYTE);
    let state = RandomState::new();
    let mut prefixes: HashMap<u64, u32> = HashMap::with_capacity(tokens.len());
    let mut suffixes: HashMap<u64, u32> = HashMap::with_capacity(tokens.len());
    for (id, tok) in tokens.iter().enumerate() {
        let id = id as u32;
        if tok.is_empty() || !mergeable(id) || vocab.get(*tok) != Some(&id) {
            continue;
        }
        // Keys of whole pieces only: hashing a piece is linear in its length.
        if let Some(&(_, k)) = piece_hashes(&state, tok, false).last() {
            prefixes.entry(k).or_insert(id);
        }
        if let Some(&(_, k)) = piece_hashes(&state, tok, true).last() {
            suffixes.entry(k).or_insert(id);
        }
    }
    let mut merges = Vec::new();
    let mut long = 0usize;
    for (id, tok) in tokens.iter().enumerate() {
        if types[id] != TYPE_NORMAL || vocab.get(*tok) != Some(&(id as u32)) {
            continue;
        }
        if tok.chars().nth(MAX_PIECE_CHARS).is_some() {
            long += 1;
            continue;
        }
        // Left pieces ending at byte i, right pieces starting at byte i.
        let left: HashMap<usize, u32> = piece_hashes(&state, tok, false)
            .into_iter()
            .filter_map(|(i, k)| Some((i, *prefixes.get(&k)?)))
            .filter(|&(i, li)| i < tok.len() && tokens[li as usize] == &tok[..i])
            .collect();
        let start = merges.len();
        for (i, k) in piece_hashes(&state, tok, true) {
            let (Some(&li), Some(&ri)) = (left.get(&i), suffixes.get(&k)) else { continue };
            if i > 0 && tokens[ri as usize] == &tok[i..] {
                merges.push((scores[id], id as u32, li, ri));
            }
        }
        if merges.len() > MAX_DERIVED_MERGES {
            return Err(ModelError::Count {
                what: "merges derived from tokenizer.ggml.tokens".into(),
                count: merges.len() as u64,
                max: MAX_DERIVED_MERGES as u64,
                why: "the SentencePiece merge limit".into(),
            });
        }
        merges[start..].sort_by_key(|&(_, _, l, r)| (l, r));
    }
    if long > 0 {
        tracing::warn!(
            pieces = long,
            max_chars = MAX_PIECE_CHARS,
            "SentencePiece pieces too long to merge into: skipped"
        );
    }
    Ok(merges)
}

/// `llama` GGUF vocabulary (SentencePiece BPE) as a byte-fallback BPE.
///
/// Merges: every split of a normal token into two vocabulary pieces, ordered by the merged
/// token's score (highest first), ties by the pieces' ids, as Hugging Face's
/// `SentencePieceExtractor` does. Spaces become `▁` (one prepended iff `add_space_prefix`);
/// decoding reverses that, joins `<0xAB>` byte tokens and strips the prepended space.
fn sentencepiece_bpe(
    md: &Metadata,
    tokens: &[&str],
    types: &[i64],
    unk: Option<u32>,
    add_space_prefix: bool,
) -> Result<tokenizers::Tokenizer, ModelError> {
    const SCORES: &str = "tokenizer.ggml.scores";
    let scores = match float_array(md, SCORES)? {
        Some(s) if s.len() != tokens.len() => {
            return Err(md_err(SCORES, format!("{} entries for {} tokens", s.len(), tokens.len())))
        }
        Some(s) => s,
        // Without scores, earlier ids are more frequent pieces.
        None => (0..tokens.len()).map(|i| -(i as f64)).collect(),
    };
    let vocab = vocab_map(tokens);
    let mut merges = piece_splits(tokens, types, &vocab, &scores)?;
    // Stable: equal scores keep vocabulary order.
    merges.sort_by(|a, b| b.0.total_cmp(&a.0));
    let merges = merges
        .into_iter()
        .map(|(_, _, l, r)| (tokens[l as usize].to_string(), tokens[r as usize].to_string()))
        .collect::<Vec<_>>();

    let mut builder = BPE::builder().vocab_and_merges(vocab, merges).byte_fallback(true).fuse_unk(true);
    if let Some(unk) = unk {
        builder = builder.unk_token(tokens[unk as usize].to_string());
    }
    let bpe = builder.build().map_err(|e| ModelError::Tokenizer(format!("cannot build SentencePiece BPE: {e}")))?;

    let mut normalizers: Vec<NormalizerWrapper> = Vec::new();
    if add_space_prefix {
        normalizers.push(Prepend::new(SPIECE_SPACE.to_string()).into());
    }
    normalizers.push(Replace::new(" ", SPIECE_SPACE).map_err(tok_err)?.into());
    let mut decoders: Vec<DecoderWrapper> =
        vec![Replace::new(SPIECE_SPACE, " ").map_err(tok_err)?.into(), ByteFallback::new().into(), Fuse::new().into()];
    if add_space_prefix {
        decoders.push(Strip::new(' ', 1, 0).into());
    }
    let mut tk = tokenizers::Tokenizer::new(bpe);
    tk.with_normalizer(Some(NormalizerSequence::new(normalizers)));
    tk.with_decoder(Some(DecoderSequence::new(decoders)));
    Ok(tk)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smollm_metadata() -> Metadata {
        crate::model::test_model::metadata()
    }

    fn smollm() -> Tokenizer {
        static TK: std::sync::OnceLock<Tokenizer> = std::sync::OnceLock::new();
        TK.get_or_init(|| Tokenizer::from_gguf(&smollm_metadata()).expect("tokenizer")).clone()
    }

    /// The metadata `ait publish` writes for a converted checkpoint reads back as the same
    /// tokenizer; a BOS id outside the vocabulary is an error naming the key.
    #[test]
    fn huggingface_json_in_gguf_round_trips() {
        let tk = smollm();
        let md = Metadata(tk.gguf_metadata().unwrap().into_iter().collect());
        assert!(md.get("tokenizer.ggml.model").is_none());
        let back = Tokenizer::from_gguf(&md).unwrap();
        assert_eq!(back.fingerprint().unwrap(), tk.fingerprint().unwrap());
        let text = "<|im_start|>user\nHello 2+2=4, ça va?<|im_end|>";
        assert_eq!(back.encode(text).unwrap(), tk.encode(text).unwrap());
        assert_eq!(back.eos_tokens(), tk.eos_tokens());
        let mut bad = md;
        bad.0.insert("tokenizer.ggml.bos_token_id".into(), Value::U64(1 << 20));
        let e = Tokenizer::from_gguf(&bad).unwrap_err().to_string();
        assert!(e.contains("tokenizer.ggml.bos_token_id"), "{e}");
    }

    #[test]
    fn smollm_specials() {
        let tk = smollm();
        assert_eq!(tk.vocab_size(), 49152);
        assert_eq!(tk.bos_token(), Some(1));
        assert!(!tk.adds_bos());
        assert_eq!(tk.eos_tokens()[0], 2);
        assert!(tk.eos_tokens().contains(&0), "{:?}", tk.eos_tokens());
        assert_eq!(tk.encode("<|im_end|>").unwrap(), vec![2]);
        assert_eq!(tk.encode("<|im_start|>user").unwrap()[0], 1);
        assert_eq!(tk.bos_str().as_deref(), Some("<|im_start|>"));
        assert_eq!(tk.eos_str().as_deref(), Some("<|im_end|>"));
        assert_eq!(tk.token_str(2).as_deref(), Some("<|im_end|>"));
        assert_eq!(tk.special_str(2).as_deref(), Some("<|im_end|>"));
        assert_eq!(tk.token_id("<|im_start|>"), Some(1));
        // Special tokens are left out of decoded text.
        assert_eq!(tk.decode(&tk.encode("<|im_start|>hi<|im_end|>").unwrap()).unwrap(), "hi");
    }

    #[test]
    fn fingerprint_is_stable_and_sees_vocabulary_and_specials() {
        let a = Tokenizer::from_gguf(&tiny_spm()).unwrap().fingerprint().unwrap();
        // A second build (fresh hash maps, other iteration orders) gives the same bytes.
        assert_eq!(Tokenizer::from_gguf(&tiny_spm()).unwrap().fingerprint().unwrap(), a);
        let g = Tokenizer::from_gguf(&tiny_gpt2("smollm")).unwrap().fingerprint().unwrap();
        assert_eq!(Tokenizer::from_gguf(&tiny_gpt2("smollm")).unwrap().fingerprint().unwrap(), g);
        let mut m = tiny_spm();
        if let Some(Value::Array(t)) = m.0.get_mut("tokenizer.ggml.tokens") {
            t[7] = Value::Str("ba".into());
        }
        assert_ne!(Tokenizer::from_gguf(&m).unwrap().fingerprint().unwrap(), a, "a renamed token");
        let mut m = tiny_spm();
        m.0.insert("tokenizer.ggml.eos_token_id".into(), Value::U64(0));
        assert_ne!(Tokenizer::from_gguf(&m).unwrap().fingerprint().unwrap(), a, "another EOS");
        let mut m = tiny_spm();
        m.0.insert("tokenizer.ggml.add_bos_token".into(), Value::Bool(false));
        assert_ne!(Tokenizer::from_gguf(&m).unwrap().fingerprint().unwrap(), a, "no BOS");
    }

    #[test]
    fn smollm_digits_split() {
        let tk = smollm();
        for (text, n) in [("2+2=4", 5), ("12345", 5)] {
            let ids = tk.encode(text).unwrap();
            let pieces: Vec<String> = ids.iter().map(|&i| tk.token_str(i).unwrap()).collect();
            assert_eq!(ids.len(), n, "{text}: {pieces:?}");
            if text == "12345" {
                assert_eq!(pieces, ["1", "2", "3", "4", "5"]);
            }
        }
    }

    #[test]
    fn smollm_round_trip() {
        let tk = smollm();
        for s in [
            "The capital of France is Paris.",
            "L'Étoile, la place de l'Étoile à Paris",
            "北京是中国的首都。東京",
            "emoji 🦀🎉 👩‍👩‍👧 done",
            "line one\nline two\n\n\ttabbed",
            "many    spaces   here ",
            "",
        ] {
            let ids = tk.encode(s).unwrap();
            assert_eq!(tk.decode(&ids).unwrap(), s, "{ids:?}");
        }
        assert_eq!(tk.token_str(tk.encode(" the").unwrap()[0]).as_deref(), Some("Ġthe"));
    }

    #[test]
    fn smollm_stream_matches_decode() {
        let tk = smollm();
        for s in ["emoji 🦀🎉 👩‍👩‍👧 done", "北京是中国的首都。東京 — ok", "<|im_start|>a 🦀<|im_end|>"]
        {
            let ids = tk.encode(s).unwrap();
            let mut stream = tk.stream();
            let mut out = String::new();
            for &id in &ids {
                if let Some(piece) = stream.push(id).unwrap() {
                    assert!(!piece.contains('\u{FFFD}'), "{piece:?}");
                    out.push_str(&piece);
                }
            }
            if let Some(rest) = stream.finish().unwrap() {
                out.push_str(&rest);
            }
            assert_eq!(out, tk.decode(&ids).unwrap());
        }
        // A lone first byte of a 4-byte character is held back, then flushed by finish.
        let crab = tk.encode("🦀").unwrap();
        assert!(crab.len() > 1, "{crab:?}");
        let mut stream = tk.stream();
        assert_eq!(stream.push(crab[0]).unwrap(), None);
        assert_eq!(stream.finish().unwrap().as_deref(), Some("\u{FFFD}"));
    }

    /// A GGUF-like metadata map.
    fn md(entries: Vec<(&str, Value)>) -> Metadata {
        Metadata(entries.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
    }

    fn strs(v: &[&str]) -> Value {
        Value::Array(v.iter().map(|s| Value::Str(s.to_string())).collect())
    }

    /// Tiny SentencePiece-style vocabulary: `<unk> <s> </s> ▁ a b ▁a ab <0x00>..<0xFF>`.
    fn tiny_spm() -> Metadata {
        let mut tokens: Vec<String> = ["<unk>", "<s>", "</s>", "▁", "a", "b", "▁a", "ab"].map(String::from).to_vec();
        let mut types = vec![2i64, 3, 3, 1, 1, 1, 1, 1];
        let mut scores = vec![0.0, 0.0, 0.0, -1.0, -2.0, -3.0, -4.0, -5.0];
        for b in 0..=255u8 {
            tokens.push(format!("<0x{b:02X}>"));
            types.push(TYPE_BYTE);
            scores.push(0.0);
        }
        md(vec![
            ("tokenizer.ggml.model", Value::Str("llama".into())),
            ("tokenizer.ggml.tokens", Value::Array(tokens.into_iter().map(Value::Str).collect())),
            ("tokenizer.ggml.token_type", Value::Array(types.into_iter().map(Value::I64).collect())),
            ("tokenizer.ggml.scores", Value::Array(scores.into_iter().map(Value::F64).collect())),
            ("tokenizer.ggml.bos_token_id", Value::U64(1)),
            ("tokenizer.ggml.eos_token_id", Value::U64(2)),
            ("tokenizer.ggml.unknown_token_id", Value::U64(0)),
        ])
    }

    #[test]
    fn sentencepiece_tiny() {
        let tk = Tokenizer::from_gguf(&tiny_spm()).unwrap();
        assert!(tk.adds_bos());
        // "ab a" -> "▁ab▁a": merges by score: ▁a (-4) before ab (-5), so ▁a | b | ▁a.
        let ids = tk.encode("ab a").unwrap();
        assert_eq!(ids, vec![1, 6, 5, 6]);
        assert_eq!(tk.decode(&ids).unwrap(), "ab a");
        // "bab": no leading-space merge; a+b merges to ab.
        assert_eq!(tk.encode("bab").unwrap(), vec![1, 3, 5, 7]);
        // Characters outside the vocabulary fall back to bytes and decode back.
        let ids = tk.encode("aé").unwrap();
        assert_eq!(ids, vec![1, 6, 8 + 0xC3, 8 + 0xA9]);
        assert_eq!(tk.decode(&ids).unwrap(), "aé");
        // `<s>` in text is BOS, not doubled; like llama.cpp, text after a special token gets `▁`.
        assert_eq!(tk.encode("<s>a").unwrap(), vec![1, 6]);
        assert_eq!(tk.eos_tokens(), &[2]);
        assert_eq!(tk.bos_str().as_deref(), Some("<s>"));
        // Streaming with the leading-space strip.
        let ids = tk.encode("a ab é").unwrap();
        let mut stream = tk.stream();
        let mut out = String::new();
        for &id in &ids {
            out.push_str(&stream.push(id).unwrap().unwrap_or_default());
        }
        out.push_str(&stream.finish().unwrap().unwrap_or_default());
        assert_eq!(out, "a ab é");
    }

    /// `tiny_spm` plus `extra` normal tokens.
    fn spm_with(extra: &[String]) -> Metadata {
        let mut m = tiny_spm();
        let push = |m: &mut Metadata, key: &str, v: Value| {
            if let Some(Value::Array(a)) = m.0.get_mut(key) {
                a.push(v);
            }
        };
        for t in extra {
            push(&mut m, "tokenizer.ggml.tokens", Value::Str(t.clone()));
            push(&mut m, "tokenizer.ggml.token_type", Value::I64(TYPE_NORMAL));
            push(&mut m, "tokenizer.ggml.scores", Value::F64(-6.0));
        }
        m
    }

    #[test]
    fn sentencepiece_huge_piece_loads_in_bounded_time() {
        // One 16 MiB piece: deriving its merges by hashing both halves of every split is
        // quadratic (hours); it must load in about the time it takes to read it.
        let huge = "ab".repeat(8 << 20);
        let started = std::time::Instant::now();
        let tk = Tokenizer::from_gguf(&spm_with(std::slice::from_ref(&huge))).expect("loads");
        let took = started.elapsed();
        assert!(took < std::time::Duration::from_secs(10), "loading took {took:?}");
        assert_eq!(tk.token_id(&huge), Some(264));
        // Pieces up to the limit still get their merges: "aba" = "ab" + "a".
        let mut m = spm_with(&["aba".into()]);
        m.0.insert("tokenizer.ggml.add_space_prefix".into(), Value::Bool(false));
        let tk = Tokenizer::from_gguf(&m).expect("loads");
        assert_eq!(tk.encode("aba").unwrap(), vec![1, 264]);
    }

    #[test]
    fn linear_merge_derivation_matches_the_naive_one() {
        // Pseudo-random vocabularies over a small alphabet (many splits hit), with control
        // and byte tokens and repeated pieces mixed in.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for _ in 0..20 {
            let alphabet = ['a', 'b', 'é', '▁'];
            let tokens: Vec<String> =
                (0..400).map(|_| (0..1 + next(6)).map(|_| alphabet[next(4) as usize]).collect()).collect();
            let types: Vec<i64> =
                (0..400).map(|_| [TYPE_NORMAL, TYPE_NORMAL, TYPE_CONTROL, TYPE_BYTE][next(4) as usize]).collect();
            let scores: Vec<f64> = (0..400).map(|i| -(i as f64)).collect();
            let refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
            let vocab = vocab_map(&refs);
            let mergeable = |id: u32| !matches!(types[id as usize], TYPE_CONTROL | TYPE_UNKNOWN | TYPE_BYTE);
            let mut naive = Vec::new();
            for (id, tok) in refs.iter().enumerate() {
                if types[id] != TYPE_NORMAL || vocab.get(*tok) != Some(&(id as u32)) {
                    continue;
                }
                let start = naive.len();
                for (split, _) in tok.char_indices().skip(1) {
                    let (l, r) = tok.split_at(split);
                    if let (Some(&li), Some(&ri)) = (vocab.get(l), vocab.get(r)) {
                        if mergeable(li) && mergeable(ri) {
                            naive.push((scores[id], id as u32, li, ri));
                        }
                    }
                }
                naive[start..].sort_by_key(|&(_, _, l, r)| (l, r));
            }
            assert!(!naive.is_empty());
            assert_eq!(piece_splits(&refs, &types, &vocab, &scores).unwrap(), naive);
        }
    }

    #[test]
    fn encoding_a_long_word_is_not_quadratic() {
        // 2 MiB without a space is one pre-token fed to BPE merging (a priority queue in
        // `tokenizers`, n log n): it must not take minutes.
        let tk = Tokenizer::from_gguf(&tiny_spm()).unwrap();
        let text = "ab".repeat(1 << 20);
        let started = std::time::Instant::now();
        let ids = tk.encode(&text).unwrap();
        let took = started.elapsed();
        assert_eq!(ids.len(), 1 + (1 << 20) + 1, "BOS, ▁a, b, then one `ab` per pair");
        assert!(took < std::time::Duration::from_secs(20), "encoding took {took:?}");
    }

    #[test]
    fn sentencepiece_without_space_prefix() {
        let mut m = tiny_spm();
        m.0.insert("tokenizer.ggml.add_space_prefix".into(), Value::Bool(false));
        m.0.insert("tokenizer.ggml.add_bos_token".into(), Value::Bool(false));
        let tk = Tokenizer::from_gguf(&m).unwrap();
        let ids = tk.encode("ab a").unwrap();
        assert_eq!(ids, vec![7, 6]);
        assert_eq!(tk.decode(&ids).unwrap(), "ab a");
    }

    /// A tiny byte-level GGUF vocabulary with the given pre-tokenizer type.
    fn tiny_gpt2(pre: &str) -> Metadata {
        md(vec![
            ("tokenizer.ggml.model", Value::Str("gpt2".into())),
            ("tokenizer.ggml.pre", Value::Str(pre.into())),
            ("tokenizer.ggml.tokens", strs(&["<|end|>", "1", "2", "3", "12", "123", "a", "Ġ", "Ġa"])),
            ("tokenizer.ggml.token_type", Value::Array([3i64, 1, 1, 1, 1, 1, 1, 1, 1].map(Value::I64).to_vec())),
            ("tokenizer.ggml.merges", strs(&["1 2", "12 3", "Ġ a"])),
            ("tokenizer.ggml.eos_token_id", Value::U64(0)),
        ])
    }

    #[test]
    fn gpt2_pre_types() {
        // Llama 3 groups up to three digits; Qwen2 and SmolLM split them.
        let llama3 = Tokenizer::from_gguf(&tiny_gpt2("llama-bpe")).unwrap();
        assert_eq!(llama3.encode("123 a").unwrap(), vec![5, 8]);
        for pre in ["qwen2", "smollm"] {
            let tk = Tokenizer::from_gguf(&tiny_gpt2(pre)).unwrap();
            assert_eq!(tk.encode("123 a").unwrap(), vec![1, 2, 3, 8], "{pre}");
        }
        let gpt2 = Tokenizer::from_gguf(&tiny_gpt2("gpt-2")).unwrap();
        assert_eq!(gpt2.encode("123 a<|end|>").unwrap(), vec![5, 8, 0]);
        assert_eq!(gpt2.decode(&[5, 8, 0]).unwrap(), "123 a");
        assert_eq!(gpt2.eos_tokens(), &[0]);
    }

    #[test]
    fn bad_metadata() {
        let err = |m: Metadata| Tokenizer::from_gguf(&m).unwrap_err().to_string();

        let mut m = tiny_gpt2("smollm");
        m.0.remove("tokenizer.ggml.tokens");
        let e = err(m);
        assert!(e.contains("tokenizer.ggml.tokens") && e.contains("missing"), "{e}");

        let mut m = tiny_gpt2("smollm");
        m.0.insert("tokenizer.ggml.model".into(), Value::Str("t5".into()));
        let e = err(m);
        assert!(e.contains("unsupported tokenizer model `t5`"), "{e}");

        let mut m = tiny_gpt2("smollm");
        m.0.insert("tokenizer.ggml.merges".into(), Value::Array(vec![Value::U64(1)]));
        let e = err(m);
        assert!(e.contains("tokenizer.ggml.merges") && e.contains("expected strings"), "{e}");

        let mut m = tiny_gpt2("smollm");
        m.0.insert("tokenizer.ggml.merges".into(), strs(&["12"]));
        let e = err(m);
        assert!(e.contains("tokenizer.ggml.merges") && e.contains("entry 0"), "{e}");

        let mut m = tiny_gpt2("smollm");
        m.0.insert("tokenizer.ggml.merges".into(), strs(&["x y"]));
        let e = err(m);
        assert!(e.contains("tokenizer.ggml.merges"), "{e}");

        let mut m = tiny_gpt2("smollm");
        m.0.remove("tokenizer.ggml.merges");
        let e = err(m);
        assert!(e.contains("tokenizer.ggml.merges") && e.contains("missing"), "{e}");

        let mut m = tiny_gpt2("smollm");
        m.0.insert("tokenizer.ggml.eos_token_id".into(), Value::U64(99));
        let e = err(m);
        assert!(e.contains("eos_token_id") && e.contains("99"), "{e}");

        let mut m = tiny_gpt2("smollm");
        m.0.insert("tokenizer.ggml.token_type".into(), Value::Array(vec![Value::I64(1)]));
        let e = err(m);
        assert!(e.contains("token_type") && e.contains("1 entries for 9 tokens"), "{e}");

        let mut m = tiny_spm();
        m.0.insert("tokenizer.ggml.scores".into(), strs(&["x"]));
        let e = err(m);
        assert!(e.contains("tokenizer.ggml.scores"), "{e}");
    }

    /// A tiny Hugging Face `tokenizer.json`: byte-level BPE with two special tokens and a
    /// post-processor that puts `<s>` first.
    const TINY_JSON: &str = r#"{
      "version": "1.0",
      "truncation": null,
      "padding": null,
      "added_tokens": [
        {"id": 0, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
        {"id": 1, "content": "<|im_end|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}
      ],
      "normalizer": null,
      "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
      "post_processor": {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<s>": {"id": "<s>", "ids": [0], "tokens": ["<s>"]}}
      },
      "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
      "model": {
        "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
        "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
        "vocab": {"<s>": 0, "<|im_end|>": 1, "h": 2, "i": 3, "Ġ": 4, "hi": 5, "Ġhi": 6},
        "merges": ["h i", "Ġ hi"]
      }
    }"#;

    #[test]
    fn json_tiny() {
        // No config: BOS inferred from the post-processor, EOS from known end tokens.
        let tk = Tokenizer::from_json(TINY_JSON.as_bytes(), None).unwrap();
        assert_eq!(tk.bos_token(), None);
        assert!(!tk.adds_bos());
        assert_eq!(tk.encode("hi hi<|im_end|>").unwrap(), vec![5, 6, 1]);
        assert_eq!(tk.eos_tokens(), &[1]);
        assert_eq!(tk.decode(&[5, 6, 1]).unwrap(), "hi hi");

        let config = br#"{"bos_token": {"content": "<s>", "special": true}, "eos_token": "<|im_end|>",
            "chat_template": "{{ messages }}"}"#;
        let tk = Tokenizer::from_json(TINY_JSON.as_bytes(), Some(config)).unwrap();
        assert_eq!(tk.bos_token(), Some(0));
        assert!(tk.adds_bos(), "post-processor puts <s> first");
        assert_eq!(tk.encode("hi").unwrap(), vec![0, 5]);
        assert_eq!(tk.eos_tokens(), &[1]);
        assert_eq!(tk.bos_str().as_deref(), Some("<s>"));

        let config = br#"{"bos_token": "<s>", "eos_token": "<|im_end|>", "add_bos_token": false}"#;
        let tk = Tokenizer::from_json(TINY_JSON.as_bytes(), Some(config)).unwrap();
        assert_eq!(tk.encode("hi").unwrap(), vec![5]);

        let e = Tokenizer::from_json(b"{not json", None).unwrap_err().to_string();
        assert!(e.contains("bad tokenizer.json"), "{e}");
        let e = Tokenizer::from_json(TINY_JSON.as_bytes(), Some(br#"{"eos_token": "</s>"}"#)).unwrap_err().to_string();
        assert!(e.contains("eos_token") && e.contains("</s>"), "{e}");
    }

    #[test]
    fn chat_template_in_config() {
        assert_eq!(chat_template_from_config(br#"{"chat_template": "abc"}"#).as_deref(), Some("abc"));
        let list =
            br#"{"chat_template": [{"name": "tool_use", "template": "t"}, {"name": "default", "template": "d"}]}"#;
        assert_eq!(chat_template_from_config(list).as_deref(), Some("d"));
        let list = br#"{"chat_template": [{"name": "rag", "template": "r"}]}"#;
        assert_eq!(chat_template_from_config(list).as_deref(), Some("r"));
        assert_eq!(chat_template_from_config(br#"{"bos_token": "<s>"}"#), None);
        assert_eq!(chat_template_from_config(b"nope"), None);
    }
}
