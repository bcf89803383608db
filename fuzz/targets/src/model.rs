//! Targets for model files and what is built from them: GGUF and safetensors parsing and
//! loading, downloaded parts checked against a manifest, tokenizers, chat templates.

use std::sync::OnceLock;

use bytes::Bytes;
use web_node::model::gguf::{GgufFile, GgufModel};
use web_node::model::parts::{verify_block, verify_head};
use web_node::model::safetensors::SafetensorsModel;
use web_node::model::{ChatMessage, ChatTemplate, Manifest, Tokenizer};

use crate::{split_first, split_len, tiny};

/// Texts every tokenizer built from fuzzed metadata encodes.
const TEXTS: [&str; 4] = ["Hello, world! 123", " the  the\n\t", "<|im_start|>user\nhé<|im_end|>", "\u{0}\u{ffff}🦀"];

/// Encodes `text` and decodes the ids back, all at once and as a stream.
fn exercise_tokenizer(tok: &Tokenizer, text: &str) {
    let Ok(ids) = tok.encode(text) else { return };
    let _ = tok.decode(&ids);
    let mut stream = tok.stream();
    for &id in ids.iter().take(256) {
        let _ = stream.push(id);
    }
    let _ = stream.finish();
    let _ = (tok.bos_str(), tok.eos_str(), tok.vocab_size());
}

/// Everything a node reads from a GGUF file: parse, configuration, every layer and the head,
/// tokenizer (then encoding), chat template (then rendering).
pub fn gguf(data: &[u8]) {
    let bytes = Bytes::copy_from_slice(data);
    if GgufFile::parse(bytes.clone()).is_err() {
        return;
    }
    let Ok(model) = GgufModel::from_bytes(bytes) else { return };
    for i in 0..model.config().n_layers.min(8) {
        let _ = model.load_layer(i);
    }
    let _ = model.load_head();
    if let Ok(tok) = model.tokenizer() {
        exercise_tokenizer(&tok, TEXTS[0]);
        if let Ok(t) = ChatTemplate::for_model(model.chat_template().as_deref(), &tok) {
            let _ = t.render(&[ChatMessage::user("hi")], true);
        }
    }
}

/// A Hugging Face `config.json` of a tiny model (the usual seed for [`safetensors`]).
pub const SAFETENSORS_CONFIG: &str = r#"{"architectures":["LlamaForCausalLM"],"model_type":"llama","hidden_size":16,"intermediate_size":24,"num_hidden_layers":1,"num_attention_heads":2,"num_key_value_heads":1,"head_dim":8,"rope_theta":10000.0,"rms_norm_eps":1e-5,"vocab_size":32,"max_position_embeddings":64,"tie_word_embeddings":true}"#;

/// `SafetensorsModel::from_parts`: the input is a `u16` length, that many bytes of
/// `config.json`, then one safetensors shard. Loading checks every tensor.
pub fn safetensors(data: &[u8]) {
    let (config, shard) = split_len(data);
    let Ok(model) = SafetensorsModel::from_parts(config, vec![Bytes::copy_from_slice(shard)], None, None) else {
        return;
    };
    let _ = model.load_head();
    let _ = model.chat_template();
}

/// A downloaded model part checked against the tiny model's manifest. First byte: 0 the rest
/// is block 0's part, 1 block 1's, 2 the head's, 3 a manifest (JSON) whose id is computed.
pub fn parts(data: &[u8]) {
    let (mode, rest) = split_first(data);
    let manifest = tiny::manifest();
    let bytes = Bytes::copy_from_slice(rest);
    match mode % 4 {
        i @ (0 | 1) => {
            let _ = verify_block(manifest, i as usize, bytes);
        }
        2 => {
            let _ = verify_head(manifest, bytes);
        }
        _ => {
            if let Ok(m) = serde_json::from_slice::<Manifest>(rest) {
                let _ = m.id();
            }
        }
    }
}

/// The tiny model's tokenizers (byte-level BPE and SentencePiece).
fn tiny_tokenizers() -> &'static [Tokenizer; 2] {
    static TOKS: OnceLock<[Tokenizer; 2]> = OnceLock::new();
    TOKS.get_or_init(|| {
        let build = |md: Vec<(&str, web_node::model::gguf::Value)>| {
            let file = web_node::model::gguf::writer::write(&md, &[]);
            let file = GgufFile::parse(Bytes::from(file)).expect("tokenizer metadata parses");
            Tokenizer::from_gguf(&file.metadata).expect("the tiny tokenizers build")
        };
        [build(tiny::tokenizer_metadata()), build(tiny::spm_tokenizer_metadata())]
    })
}

/// Tokenizers. First byte: 0 the rest is a GGUF file whose `tokenizer.ggml.*` metadata builds
/// a tokenizer, which then encodes fixed texts; 1 a `tokenizer.json`; 2 text encoded by the
/// tiny byte-level BPE and SentencePiece tokenizers.
pub fn tokenizer(data: &[u8]) {
    let (mode, rest) = split_first(data);
    match mode % 3 {
        0 => {
            let Ok(file) = GgufFile::parse(Bytes::copy_from_slice(rest)) else { return };
            if let Ok(tok) = Tokenizer::from_gguf(&file.metadata) {
                TEXTS.iter().for_each(|t| exercise_tokenizer(&tok, t));
            }
        }
        1 => {
            if let Ok(tok) = Tokenizer::from_json(rest, None) {
                TEXTS.iter().for_each(|t| exercise_tokenizer(&tok, t));
            }
        }
        _ => {
            let text = String::from_utf8_lossy(rest);
            tiny_tokenizers().iter().for_each(|t| exercise_tokenizer(t, &text));
        }
    }
}

/// Chat templates: a `u16` length, that many bytes of template source, then the messages as
/// a JSON array of `{"role", "content"}` (or, if that does not parse, one user message holding
/// the bytes as text). Compiled and rendered with and without the generation prompt.
pub fn chat(data: &[u8]) {
    let (source, rest) = split_len(data);
    let source = String::from_utf8_lossy(source);
    let Ok(template) = ChatTemplate::new(&source, "<s>", "</s>") else { return };
    let messages = serde_json::from_slice::<Vec<ChatMessage>>(rest)
        .unwrap_or_else(|_| vec![ChatMessage::user(String::from_utf8_lossy(rest))]);
    let _ = template.render(&messages, true);
    let _ = template.render(&messages, false);
}
