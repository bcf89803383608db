//! The model card: what a creator says about a model (name, tags, license, languages, the
//! address royalties go to) and what the creator's machine measured, signed by the creator's
//! key and kept beside the model id. The id ([`super::Manifest::id`]) covers only what changes
//! the maths or the text, so relabelling a model signs a new card and keeps its id.
//!
//! A card travels as a libp2p signed envelope (the same kind as the DHT's server records):
//! anyone can check that the key it names signed it, and it names the model it is about, so
//! a card cannot be moved onto another model. Whose card counts when two keys sign cards for
//! one model is the settlement issue's registry's question; a node keeps the first valid card
//! it gets.

use libp2p::core::SignedEnvelope;
use libp2p::identity::Keypair;
use libp2p::PeerId;
use serde::{Deserialize, Serialize};

use super::gguf::{GgufFile, GgufModel};
use super::manifest::{Manifest, ModelId};

/// The card format's version.
pub const CARD_VERSION: u32 = 1;

/// Largest signed card accepted, in bytes (envelope included).
pub const MAX_CARD: usize = 16 << 10;

/// Longest name, license or language, in bytes.
const MAX_FIELD: usize = 100;

/// Most tags or languages.
const MAX_ITEMS: usize = 16;

/// Longest tag, in bytes.
const MAX_TAG: usize = 32;

const DOMAIN: &str = "ai-torrent-model-card";
const PAYLOAD_TYPE: &[u8] = b"/ait/model-card/1";

/// What the creator says about a model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelCard {
    /// [`CARD_VERSION`].
    pub version: u32,
    /// The model (its id, hex).
    pub model: String,
    /// Display name.
    pub name: String,
    /// Free-form tags (lowercase words: `chat`, `code`, ...).
    pub tags: Vec<String>,
    /// SPDX license id (`apache-2.0`, `mit`, ...).
    pub license: Option<String>,
    /// Languages (ISO 639-1 codes).
    pub languages: Vec<String>,
    /// Where royalties go: an EVM address, `0x` and 40 hex digits.
    pub payout: Option<String>,
    /// Parameters.
    pub parameters: u64,
    /// Weight types and their share of the parameters, most first (`q4_1 62%`).
    pub quantization: String,
    /// What the creator's machine measured.
    pub measured: Option<Measured>,
    /// When it was signed (seconds since the Unix epoch).
    pub signed_at: u64,
}

/// A speed measured on the creator's machine.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Measured {
    /// Milliseconds per block per token.
    pub ms_per_block: f64,
    /// The backend it ran on (`cpu`, `wgpu (adapter)`).
    pub backend: String,
}

/// Why a card was refused.
#[derive(Debug, thiserror::Error)]
pub enum CardError {
    /// Not a signed envelope of a card, or the signature does not verify.
    #[error("bad signature or envelope: {0}")]
    Signature(String),
    /// The payload is not a card.
    #[error("malformed card: {0}")]
    Malformed(String),
    /// A field is out of bounds.
    #[error("invalid card: {0}")]
    Invalid(String),
    /// The card is about another model.
    #[error("the card is about model {card}, not {asked}")]
    OtherModel {
        /// The model the card names.
        card: String,
        /// The model asked for.
        asked: String,
    },
}

/// Whether `s` is an EVM address: `0x` and 40 hex digits (either case).
pub fn is_evm_address(s: &str) -> bool {
    s.len() == 42 && s.starts_with("0x") && s[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

impl ModelCard {
    /// Checks every field's bounds and form.
    pub fn validate(&self) -> Result<(), CardError> {
        let bad = |what: String| Err(CardError::Invalid(what));
        if self.version != CARD_VERSION {
            return bad(format!("version {}, this build reads {CARD_VERSION}", self.version));
        }
        if ModelId::from_hex(&self.model).is_none() {
            return bad(format!("model {:?} is not 64 hex digits", self.model));
        }
        let field = |name: &str, v: &str| -> Result<(), CardError> {
            if v.is_empty() || v.len() > MAX_FIELD || v.chars().any(char::is_control) {
                return Err(CardError::Invalid(format!("{name} {v:?}: 1 to {MAX_FIELD} bytes, no control characters")));
            }
            Ok(())
        };
        field("name", &self.name)?;
        if let Some(l) = &self.license {
            field("license", l)?;
        }
        if self.tags.len() > MAX_ITEMS || self.languages.len() > MAX_ITEMS {
            return bad(format!("at most {MAX_ITEMS} tags and {MAX_ITEMS} languages"));
        }
        for t in self.tags.iter().chain(&self.languages) {
            let ok = !t.is_empty()
                && t.len() <= MAX_TAG
                && t.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
            if !ok {
                return bad(format!("tag or language {t:?}: 1 to {MAX_TAG} of a-z, 0-9, '-', '.'"));
            }
        }
        if let Some(p) = &self.payout {
            if !is_evm_address(p) {
                return bad(format!("payout {p:?} is not an EVM address (0x and 40 hex digits)"));
            }
        }
        if self.quantization.len() > 4 * MAX_FIELD {
            return bad("quantization summary too long".into());
        }
        if let Some(m) = &self.measured {
            if !m.ms_per_block.is_finite() || m.ms_per_block < 0.0 {
                return bad(format!("ms per block {}", m.ms_per_block));
            }
            field("backend", &m.backend)?;
        }
        Ok(())
    }

    /// Signs the card with the creator's `key`: the bytes a node stores and sends.
    pub fn sign(&self, key: &Keypair) -> Result<Vec<u8>, CardError> {
        self.validate()?;
        let payload = serde_json::to_vec(self).map_err(|e| CardError::Malformed(e.to_string()))?;
        let env = SignedEnvelope::new(key, DOMAIN.into(), PAYLOAD_TYPE.to_vec(), payload)
            .map_err(|e| CardError::Signature(e.to_string()))?;
        Ok(env.into_protobuf_encoding())
    }

    /// Opens a signed card about model `id`: its size, signature, fields, and that it names
    /// `id`. Returns the card and its creator (the peer whose key signed it).
    pub fn open(bytes: &[u8], id: &ModelId) -> Result<(ModelCard, PeerId), CardError> {
        if bytes.len() > MAX_CARD {
            return Err(CardError::Malformed(format!("{} bytes, over {MAX_CARD}", bytes.len())));
        }
        let env = SignedEnvelope::from_protobuf_encoding(bytes).map_err(|e| CardError::Signature(e.to_string()))?;
        let (payload, signer) = env
            .payload_and_signing_key(DOMAIN.into(), PAYLOAD_TYPE)
            .map_err(|e| CardError::Signature(e.to_string()))?;
        let card: ModelCard = serde_json::from_slice(payload).map_err(|e| CardError::Malformed(e.to_string()))?;
        card.validate()?;
        if card.model != id.to_hex() {
            return Err(CardError::OtherModel { card: card.model, asked: id.to_hex() });
        }
        Ok((card, signer.to_peer_id()))
    }
}

/// What a creator says about a model when publishing it (`ait publish` flags, the app's
/// Publish panel); what is not given comes from the file's metadata.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Labels {
    /// Display name (default: the file's `general.name`, else the short id).
    pub name: Option<String>,
    /// Tags, added before the file's `general.tags`.
    pub tags: Vec<String>,
    /// SPDX license id (default: the file's `general.license`).
    pub license: Option<String>,
    /// Where royalties go.
    pub payout: Option<String>,
}

/// Parameters of a GGUF file and its weight types with their share of them, most first
/// (`q4_1 79%, q8_0 21%, f32 <1%`).
pub fn type_mix(file: &GgufFile) -> (u64, String) {
    let mut by_type: std::collections::BTreeMap<String, u64> = Default::default();
    for t in &file.tensors {
        let n = t.dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d)).unwrap_or(u64::MAX);
        let e = by_type.entry(t.dtype.name().to_lowercase()).or_default();
        *e = e.saturating_add(n);
    }
    let total: u64 = by_type.values().fold(0, |a, &n| a.saturating_add(n));
    let mut mix: Vec<(String, u64)> = by_type.into_iter().collect();
    mix.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let share = |n: u64| if total == 0 { 0.0 } else { n as f64 * 100.0 / total as f64 };
    let pct = |n: u64| match share(n) {
        s if s < 1.0 => "<1%".to_string(),
        s => format!("{s:.0}%"),
    };
    (total, mix.iter().map(|(t, n)| format!("{t} {}", pct(*n))).collect::<Vec<_>>().join(", "))
}

/// A card field from a free-form string: lowercase, spaces, underscores and slashes as `-`,
/// only what a tag may hold; `None` if nothing is left.
pub fn as_tag(s: &str) -> Option<String> {
    let t: String = s
        .trim()
        .to_lowercase()
        .chars()
        .map(|c| if c == ' ' || c == '_' || c == '/' { '-' } else { c })
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '.')
        .take(MAX_TAG)
        .collect();
    (!t.is_empty()).then_some(t)
}

impl ModelCard {
    /// The card of `manifest`'s model from `file`'s metadata and the creator's `labels`, with
    /// the speed `measured` on the creator's machine; signed at `now` (seconds since the
    /// epoch). Checked ([`ModelCard::validate`]).
    pub fn for_gguf(
        file: &GgufModel,
        manifest: &Manifest,
        labels: &Labels,
        measured: Option<Measured>,
        now: u64,
    ) -> Result<ModelCard, CardError> {
        let md = &file.file().metadata;
        let meta = |k: &str| md.str(k).ok().flatten().map(str::to_string);
        let list = |k: &str| -> Vec<String> {
            md.array(k).ok().flatten().unwrap_or_default().iter().filter_map(|v| v.as_str().and_then(as_tag)).collect()
        };
        let mut tags: Vec<String> = Vec::new();
        for t in labels.tags.iter().filter_map(|t| as_tag(t)).chain(list("general.tags")) {
            if !tags.contains(&t) && tags.len() < MAX_ITEMS {
                tags.push(t);
            }
        }
        let mut languages = list("general.languages");
        languages.truncate(MAX_ITEMS);
        let name = labels.name.clone().or_else(|| meta("general.name")).unwrap_or_else(|| manifest.id().short());
        let license = labels.license.clone().or_else(|| meta("general.license")).and_then(|l| as_tag(&l));
        let (parameters, quantization) = type_mix(file.file());
        let card = ModelCard {
            version: CARD_VERSION,
            model: manifest.id().to_hex(),
            name: name.chars().take(MAX_FIELD).collect(),
            tags,
            license,
            languages,
            payout: labels.payout.clone(),
            parameters,
            quantization,
            measured,
            signed_at: now,
        };
        card.validate()?;
        Ok(card)
    }

    /// The labels in a line, for a model picker: `135M parameters · q4_1 99%, f32 1% ·
    /// apache-2.0 · chat`.
    pub fn summary(&self) -> String {
        let params = match self.parameters {
            n if n >= 1_000_000_000 => format!("{:.1}B", n as f64 / 1e9),
            n => format!("{}M", n.div_ceil(1_000_000)),
        };
        let mut out = vec![format!("{params} parameters"), self.quantization.clone()];
        out.extend(self.license.clone());
        out.extend(self.tags.iter().cloned());
        out.retain(|s| !s.is_empty());
        out.join(" · ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn card(id: &ModelId) -> ModelCard {
        ModelCard {
            version: CARD_VERSION,
            model: id.to_hex(),
            name: "SmolLM2 135M Instruct".into(),
            tags: vec!["chat".into(), "small".into()],
            license: Some("apache-2.0".into()),
            languages: vec!["en".into()],
            payout: Some(format!("0x{}", "ab".repeat(20))),
            parameters: 134_515_008,
            quantization: "q4_1 99%, f32 1%".into(),
            measured: Some(Measured { ms_per_block: 0.31, backend: "cpu".into() }),
            signed_at: 1_796_000_000,
        }
    }

    #[test]
    fn a_signed_card_opens_and_forgeries_do_not() {
        let key = Keypair::generate_ed25519();
        let id = ModelId([7; 32]);
        let c = card(&id);
        let signed = c.sign(&key).unwrap();
        assert_eq!(ModelCard::open(&signed, &id).unwrap(), (c.clone(), key.public().to_peer_id()));
        // About another model.
        assert!(matches!(ModelCard::open(&signed, &ModelId([8; 32])), Err(CardError::OtherModel { .. })));
        // Any flipped byte: the signature, the payload or the key no longer agree.
        for i in (0..signed.len()).step_by(7) {
            let mut bad = signed.clone();
            bad[i] ^= 0x20;
            if let Ok((got, signer)) = ModelCard::open(&bad, &id) {
                panic!("byte {i} flipped still opens: {got:?} by {signer}");
            }
        }
        // A server record's envelope is not a card, even when the key signed it.
        let other =
            SignedEnvelope::new(&key, "ai-torrent-server-record".into(), b"/ait/server-record/1".to_vec(), vec![])
                .unwrap()
                .into_protobuf_encoding();
        assert!(matches!(ModelCard::open(&other, &id), Err(CardError::Signature(_))));
        assert!(ModelCard::open(&vec![0; MAX_CARD + 1], &id).is_err());
        assert_eq!(c.summary(), "135M parameters · q4_1 99%, f32 1% · apache-2.0 · chat · small");
    }

    #[test]
    fn fields_out_of_bounds_are_refused_before_signing() {
        let key = Keypair::generate_ed25519();
        let id = ModelId([7; 32]);
        type Change = Box<dyn Fn(&mut ModelCard)>;
        let cases: Vec<(&str, Change)> = vec![
            ("payout", Box::new(|c| c.payout = Some("0x1234".into()))),
            ("name", Box::new(|c| c.name = String::new())),
            ("name", Box::new(|c| c.name = "x".repeat(101))),
            ("tag", Box::new(|c| c.tags = vec!["Chat Bot".into()])),
            ("tags", Box::new(|c| c.tags = vec!["a".into(); 17])),
            ("model", Box::new(|c| c.model = "zz".into())),
            ("version", Box::new(|c| c.version = 2)),
            ("ms", Box::new(|c| c.measured = Some(Measured { ms_per_block: f64::NAN, backend: "cpu".into() }))),
        ];
        for (what, change) in cases {
            let mut c = card(&id);
            change(&mut c);
            assert!(matches!(c.sign(&key), Err(CardError::Invalid(_))), "{what}: {c:?}");
        }
        assert!(is_evm_address(&format!("0x{}", "aB".repeat(20))));
        assert!(!is_evm_address(&format!("0x{}", "g0".repeat(20))));
    }
}
