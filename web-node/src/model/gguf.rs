//! GGUF v2/v3 reader: metadata, tensor index, and Llama-family weights.
//!
//! Main types: [`GgufFile`] (parsed header over the file's bytes) and [`GgufModel`] (a
//! [`GgufFile`] resolved into a [`LlamaConfig`] that hands out layers and the head).
//! Every length and offset read from the file is checked against the file's size before
//! anything is allocated or sliced, so a truncated or hostile file gives an error, never a
//! panic. Tensor data is not copied: [`QMatrix`] slices share the file's [`Bytes`].

use std::collections::HashMap;

use bytes::Bytes;

use super::config::{Arch, GemmaParams, LlamaConfig, LongRope};
use super::quant::{QMatrix, WeightType};
use super::weights::{unpermute_rope_rows, HeadWeights, LayerWeights};
use super::{ModelError, Tokenizer};

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// Longest string accepted in metadata (16 MiB; a whole `tokenizer.json` is the longest kind).
pub const MAX_STRING: u64 = 1 << 24;
/// Most array elements all metadata arrays may hold together. A decoded [`Value`] takes 32
/// bytes however small its encoding (one byte for a `u8`), so this, not the file size, bounds
/// the memory metadata takes: 4 Mi elements are at most 128 MiB. The largest real vocabularies
/// need about a million (Gemma 3: 262k tokens, scores and types; Llama 3: 128k tokens and
/// 280k merges).
pub const MAX_METADATA_ELEMENTS: u64 = 1 << 22;
/// Fewest bytes one metadata entry takes: key length (8), empty key, type (4), a `u8` (1).
const MIN_KV_BYTES: u64 = 8 + 4 + 1;
/// Fewest bytes one tensor-index entry takes: name length (8), empty name, dim count (4), one
/// dim (8), type (4), offset (8).
const MIN_TENSOR_INFO_BYTES: u64 = 8 + 4 + 8 + 4 + 8;

/// Fewest bytes one encoded value of GGUF type `ty` takes; `None` for arrays and unknown
/// types.
fn min_value_bytes(ty: u32) -> Option<u64> {
    Some(match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        // A string is at least its 8-byte length.
        8 | 10..=12 => 8,
        _ => return None,
    })
}

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// Unsigned integer (u8, u16, u32, u64).
    U64(u64),
    /// Signed integer (i8, i16, i32, i64).
    I64(i64),
    /// Float (f32, f64).
    F64(f64),
    /// Boolean.
    Bool(bool),
    /// UTF-8 string (invalid UTF-8 is replaced).
    Str(String),
    /// Array of values.
    Array(Vec<Value>),
}

impl Value {
    fn type_name(&self) -> &'static str {
        match self {
            Value::U64(_) => "unsigned integer",
            Value::I64(_) => "signed integer",
            Value::F64(_) => "float",
            Value::Bool(_) => "bool",
            Value::Str(_) => "string",
            Value::Array(_) => "array",
        }
    }

    /// The value as an unsigned integer, if it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U64(v) => Some(v),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float, if it is numeric.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F64(v) => Some(v),
            Value::U64(v) => Some(v as f64),
            Value::I64(v) => Some(v as f64),
            _ => None,
        }
    }

    /// The value as a string slice.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The value as an array.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// GGUF metadata: key to value.
#[derive(Clone, Debug, Default)]
pub struct Metadata(pub HashMap<String, Value>);

impl Metadata {
    /// The raw value of `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key)
    }

    fn typed<'a, T>(
        &'a self,
        key: &str,
        want: &str,
        f: impl Fn(&'a Value) -> Option<T>,
    ) -> Result<Option<T>, ModelError> {
        match self.0.get(key) {
            None => Ok(None),
            Some(v) => f(v).map(Some).ok_or_else(|| ModelError::Metadata {
                key: key.to_string(),
                what: format!("expected {want}, found {}", v.type_name()),
            }),
        }
    }

    /// An optional unsigned integer.
    pub fn u64(&self, key: &str) -> Result<Option<u64>, ModelError> {
        self.typed(key, "unsigned integer", Value::as_u64)
    }

    /// An optional float.
    pub fn f64(&self, key: &str) -> Result<Option<f64>, ModelError> {
        self.typed(key, "number", Value::as_f64)
    }

    /// An optional string.
    pub fn str(&self, key: &str) -> Result<Option<&str>, ModelError> {
        self.typed(key, "string", Value::as_str)
    }

    /// An optional array.
    pub fn array(&self, key: &str) -> Result<Option<&[Value]>, ModelError> {
        self.typed(key, "array", Value::as_array)
    }

    /// A required unsigned integer.
    pub fn req_u64(&self, key: &str) -> Result<u64, ModelError> {
        self.u64(key)?.ok_or_else(|| missing(key))
    }

    /// An optional array of strings.
    pub fn str_array(&self, key: &str) -> Result<Option<Vec<&str>>, ModelError> {
        let Some(a) = self.array(key)? else { return Ok(None) };
        a.iter()
            .map(|v| {
                v.as_str().ok_or_else(|| ModelError::Metadata {
                    key: key.to_string(),
                    what: format!("expected strings, found {}", v.type_name()),
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }
}

fn missing(key: &str) -> ModelError {
    ModelError::Metadata { key: key.to_string(), what: "missing".to_string() }
}

/// Storage type of a tensor as the file names it (ggml type id).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GgmlType(pub u32);

impl GgmlType {
    /// The engine's [`WeightType`] for this id, if supported.
    pub fn weight_type(self) -> Option<WeightType> {
        WeightType::ALL.into_iter().find(|&t| GgmlType::from(t) == self)
    }

    /// ggml's name for the type.
    pub fn name(self) -> String {
        const NAMES: [&str; 42] = [
            "F32",
            "F16",
            "Q4_0",
            "Q4_1",
            "Q4_2",
            "Q4_3",
            "Q5_0",
            "Q5_1",
            "Q8_0",
            "Q8_1",
            "Q2_K",
            "Q3_K",
            "Q4_K",
            "Q5_K",
            "Q6_K",
            "Q8_K",
            "IQ2_XXS",
            "IQ2_XS",
            "IQ3_XXS",
            "IQ1_S",
            "IQ4_NL",
            "IQ3_S",
            "IQ2_S",
            "IQ4_XS",
            "I8",
            "I16",
            "I32",
            "I64",
            "F64",
            "IQ1_M",
            "BF16",
            "Q4_0_4_4",
            "Q4_0_4_8",
            "Q4_0_8_8",
            "TQ1_0",
            "TQ2_0",
            "IQ4_NL_4_4",
            "IQ4_NL_4_8",
            "IQ4_NL_8_8",
            "MXFP4",
            "NVFP4",
            "Q1_0",
        ];
        NAMES.get(self.0 as usize).map_or_else(|| format!("type {}", self.0), |s| s.to_string())
    }
}

impl From<WeightType> for GgmlType {
    /// ggml's id of a weight type.
    fn from(t: WeightType) -> Self {
        GgmlType(match t {
            WeightType::F32 => 0,
            WeightType::F16 => 1,
            WeightType::Q4_0 => 2,
            WeightType::Q4_1 => 3,
            WeightType::Q5_0 => 6,
            WeightType::Q5_1 => 7,
            WeightType::Q8_0 => 8,
            WeightType::Q2_K => 10,
            WeightType::Q3_K => 11,
            WeightType::Q4_K => 12,
            WeightType::Q5_K => 13,
            WeightType::Q6_K => 14,
            WeightType::IQ4_NL => 20,
            WeightType::IQ4_XS => 23,
            WeightType::BF16 => 30,
        })
    }
}

/// One entry of the tensor index.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    /// Tensor name.
    pub name: String,
    /// Dimensions, fastest-varying first (ggml's `ne`): a matrix is `[cols, rows]`.
    pub dims: Vec<u64>,
    /// Storage type.
    pub dtype: GgmlType,
    /// Absolute byte offset of the data in the file.
    pub offset: u64,
    /// Byte size of the data, when the type is supported.
    pub size: Option<u64>,
}

/// A parsed GGUF file: metadata and tensor index over the file's bytes.
#[derive(Clone, Debug)]
pub struct GgufFile {
    /// Format version (2 or 3).
    pub version: u32,
    /// Metadata key/values.
    pub metadata: Metadata,
    /// Tensor index, in file order.
    pub tensors: Vec<TensorInfo>,
    by_name: HashMap<String, usize>,
    data: Bytes,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Array elements still allowed (see [`MAX_METADATA_ELEMENTS`]).
    elements_left: u64,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    /// Checks that `count` items of at least `min_bytes` each can fit in the bytes left, so
    /// that `count` can size an allocation.
    fn check_count(&self, what: &str, count: u64, min_bytes: u64) -> Result<usize, ModelError> {
        let max = self.remaining() / min_bytes;
        if count > max {
            return Err(ModelError::Count {
                what: what.to_string(),
                count,
                max,
                why: format!("{min_bytes} bytes each in the {} bytes left", self.remaining()),
            });
        }
        usize::try_from(count).map_err(|_| ModelError::Count {
            what: what.to_string(),
            count,
            max: usize::MAX as u64,
            why: "address space".into(),
        })
    }

    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8], ModelError> {
        let len = self.buf.len() as u64;
        let end = (self.pos as u64).checked_add(n).filter(|&e| e <= len);
        let Some(end) = end else {
            return Err(ModelError::Truncated { what: what.to_string(), offset: self.pos as u64, needed: n, len });
        };
        // `end <= buf.len()`, so it fits in usize.
        let end = end as usize;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], ModelError> {
        let s = self.take(N as u64, what)?;
        Ok(s.try_into().expect("take returned N bytes"))
    }

    fn u32(&mut self, what: &str) -> Result<u32, ModelError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, ModelError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &str) -> Result<String, ModelError> {
        let len = self.u64(what)?;
        if len > MAX_STRING {
            return Err(ModelError::BadFormat { format: "GGUF", what: format!("{what}: string of {len} bytes") });
        }
        Ok(String::from_utf8_lossy(self.take(len, what)?).into_owned())
    }

    fn value(&mut self, ty: u32, key: &str, depth: u32) -> Result<Value, ModelError> {
        Ok(match ty {
            0 => Value::U64(self.array::<1>(key)?[0] as u64),
            1 => Value::I64(self.array::<1>(key)?[0] as i8 as i64),
            2 => Value::U64(u16::from_le_bytes(self.array(key)?) as u64),
            3 => Value::I64(i16::from_le_bytes(self.array(key)?) as i64),
            4 => Value::U64(self.u32(key)? as u64),
            5 => Value::I64(i32::from_le_bytes(self.array(key)?) as i64),
            6 => Value::F64(f32::from_le_bytes(self.array(key)?) as f64),
            7 => Value::Bool(self.array::<1>(key)?[0] != 0),
            8 => Value::Str(self.string(key)?),
            9 if depth == 0 => {
                let elem = self.u32(key)?;
                let n = self.u64(key)?;
                let Some(min) = min_value_bytes(elem) else {
                    return Err(ModelError::BadFormat {
                        format: "GGUF",
                        what: match elem {
                            9 => format!("metadata {key}: nested arrays are not supported"),
                            _ => format!("metadata {key}: unknown array element type {elem}"),
                        },
                    });
                };
                // The encoded elements must fit in the bytes left, and all arrays together in
                // the element budget, before anything is reserved.
                let n = self.check_count(&format!("array {key}"), n, min)?;
                if n as u64 > self.elements_left {
                    return Err(ModelError::Count {
                        what: format!("array {key}"),
                        count: n as u64,
                        max: self.elements_left,
                        why: format!("{MAX_METADATA_ELEMENTS} metadata array elements in all"),
                    });
                }
                self.elements_left -= n as u64;
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.value(elem, key, depth + 1)?);
                }
                Value::Array(v)
            }
            10 => Value::U64(self.u64(key)?),
            11 => Value::I64(i64::from_le_bytes(self.array(key)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(key)?)),
            9 => {
                return Err(ModelError::BadFormat {
                    format: "GGUF",
                    what: format!("metadata {key}: nested arrays are not supported"),
                })
            }
            _ => {
                return Err(ModelError::BadFormat {
                    format: "GGUF",
                    what: format!("metadata {key}: unknown value type {ty}"),
                })
            }
        })
    }
}

impl GgufFile {
    /// Parses the header of a GGUF file held in memory.
    pub fn parse(data: Bytes) -> Result<GgufFile, ModelError> {
        let len = data.len() as u64;
        Self::parse_prefix(data, len)
    }

    /// Parses the header of a GGUF file of `file_len` bytes from its first bytes, `prefix`
    /// (the whole header, and any tensor data it holds): for reading a large file a part at a
    /// time. The tensors' places are checked against `file_len`; the data of a tensor past
    /// the prefix is an error when asked for ([`GgufFile::tensor_bytes`]), so the caller reads
    /// it where [`TensorInfo::offset`] says. A prefix too short for the header is an error
    /// (a longer one may parse).
    pub fn parse_prefix(data: Bytes, file_len: u64) -> Result<GgufFile, ModelError> {
        let mut r = Reader { buf: &data, pos: 0, elements_left: MAX_METADATA_ELEMENTS };
        let magic = r.array::<4>("magic")?;
        if &magic != MAGIC {
            return Err(ModelError::BadFormat { format: "GGUF", what: format!("magic {magic:?}") });
        }
        let version = r.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(ModelError::BadFormat { format: "GGUF", what: format!("unsupported version {version}") });
        }
        let n_tensors = r.u64("tensor count")?;
        let n_kv = r.u64("metadata count")?;
        let len = file_len.max(data.len() as u64);
        let n_kv = r.check_count("metadata entries", n_kv, MIN_KV_BYTES)?;
        // Both indexes follow: the tensor index must fit beside the smallest metadata.
        let after_kv = (n_kv as u64).saturating_mul(MIN_KV_BYTES);
        let max_tensors = r.remaining().saturating_sub(after_kv) / MIN_TENSOR_INFO_BYTES;
        if n_tensors > max_tensors {
            return Err(ModelError::Count {
                what: "tensors".into(),
                count: n_tensors,
                max: max_tensors,
                why: format!("{MIN_TENSOR_INFO_BYTES} bytes each beside {n_kv} metadata entries in {len} bytes"),
            });
        }
        let mut metadata = HashMap::new();
        for _ in 0..n_kv {
            let key = r.string("metadata key")?;
            let ty = r.u32(&key)?;
            let value = r.value(ty, &key, 0)?;
            metadata.insert(key, value);
        }
        let metadata = Metadata(metadata);
        let n_tensors = r.check_count("tensors", n_tensors, MIN_TENSOR_INFO_BYTES)?;
        let mut tensors = Vec::with_capacity(n_tensors);
        for _ in 0..n_tensors {
            let name = r.string("tensor name")?;
            let n_dims = r.u32(&name)?;
            if n_dims == 0 || n_dims > 4 {
                return Err(ModelError::BadFormat { format: "GGUF", what: format!("tensor {name}: {n_dims} dims") });
            }
            let dims = (0..n_dims).map(|_| r.u64(&name)).collect::<Result<Vec<_>, _>>()?;
            let dtype = GgmlType(r.u32(&name)?);
            let offset = r.u64(&name)?;
            tensors.push(TensorInfo { name, dims, dtype, offset, size: None });
        }
        let alignment = match metadata.u64("general.alignment")? {
            Some(a) if a > 0 && a.is_power_of_two() => a,
            Some(a) => {
                return Err(ModelError::BadFormat { format: "GGUF", what: format!("alignment {a}") });
            }
            None => DEFAULT_ALIGNMENT,
        };
        let data_start = (r.pos as u64).div_ceil(alignment).saturating_mul(alignment);
        let mut by_name = HashMap::with_capacity(tensors.len());
        for (i, t) in tensors.iter_mut().enumerate() {
            let elems = t.dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
            let size = match (t.dtype.weight_type(), elems) {
                (Some(wt), Some(n)) => usize::try_from(n).ok().and_then(|n| wt.bytes_for(n)).map(|b| b as u64),
                _ => None,
            };
            t.offset = data_start.saturating_add(t.offset);
            if let Some(size) = size {
                if t.offset.checked_add(size).is_none_or(|end| end > len) {
                    return Err(ModelError::Truncated {
                        what: format!("tensor {} data", t.name),
                        offset: t.offset,
                        needed: size,
                        len,
                    });
                }
            }
            t.size = size;
            by_name.insert(t.name.clone(), i);
        }
        Ok(GgufFile { version, metadata, tensors, by_name, data })
    }

    /// The index entry of a tensor.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    fn raw(&self, name: &str) -> Result<(&TensorInfo, WeightType, Bytes), ModelError> {
        let t = self.tensor(name).ok_or_else(|| ModelError::MissingTensor(name.to_string()))?;
        let Some(wt) = t.dtype.weight_type() else {
            return Err(ModelError::UnsupportedType { tensor: name.to_string(), dtype: t.dtype.name() });
        };
        let Some(size) = t.size else {
            return Err(ModelError::BadFormat {
                format: "GGUF",
                what: format!(
                    "tensor {name}: {:?} elements do not fill whole {wt} blocks of {}",
                    t.dims,
                    wt.block_len()
                ),
            });
        };
        // `parse` checked that `offset + size` is within the file; a header parsed from a
        // prefix may not hold it.
        let end = t.offset + size;
        if end > self.data.len() as u64 {
            return Err(ModelError::Truncated {
                what: format!("tensor {name} data (not read)"),
                offset: t.offset,
                needed: size,
                len: self.data.len() as u64,
            });
        }
        Ok((t, wt, self.data.slice(t.offset as usize..end as usize)))
    }

    /// The raw bytes of a tensor of a supported type, as stored in the file.
    pub fn tensor_bytes(&self, name: &str) -> Result<Bytes, ModelError> {
        self.raw(name).map(|(_, _, b)| b)
    }

    /// A 2-D tensor as a matrix, checked against the expected `[rows, cols]`.
    pub fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<QMatrix, ModelError> {
        let (t, wt, bytes) = self.raw(name)?;
        let actual: Vec<usize> = t.dims.iter().rev().map(|&d| dim(d)).collect();
        if actual != [rows, cols] {
            return Err(ModelError::TensorShape { tensor: name.to_string(), expected: vec![rows, cols], actual });
        }
        QMatrix::new(wt, rows, cols, bytes)
            .map_err(|e| ModelError::BadFormat { format: "GGUF", what: format!("{name}: {e}") })
    }

    /// A 1-D tensor of `len` values, dequantized to f32.
    pub fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>, ModelError> {
        let (t, wt, bytes) = self.raw(name)?;
        let actual: Vec<usize> = t.dims.iter().map(|&d| dim(d)).collect();
        if actual != [len] || wt.bytes_for(len) != Some(bytes.len()) {
            return Err(ModelError::TensorShape { tensor: name.to_string(), expected: vec![len], actual });
        }
        let mut out = vec![0.0; len];
        super::quant::dequantize(wt, &bytes, &mut out);
        if let Some(i) = out.iter().position(|v| !v.is_finite()) {
            return Err(ModelError::BadFormat { format: "GGUF", what: format!("{name}: value {i} is {}", out[i]) });
        }
        Ok(out)
    }
}

/// A dimension as usize; one too large for this target saturates (it then matches no shape).
fn dim(d: u64) -> usize {
    usize::try_from(d).unwrap_or(usize::MAX)
}

/// A GGUF file resolved as a Llama-family model.
#[derive(Clone, Debug)]
pub struct GgufModel {
    file: GgufFile,
    config: LlamaConfig,
}

impl GgufModel {
    /// Reads and parses a GGUF file from disk. Errors name the file.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open(path: &std::path::Path) -> Result<GgufModel, ModelError> {
        let ctx = |e: ModelError| e.in_file(path.display().to_string());
        let bytes = std::fs::read(path).map_err(|e| ctx(e.into()))?;
        Self::from_bytes(Bytes::from(bytes)).map_err(ctx)
    }

    /// Parses a GGUF file held in memory.
    pub fn from_bytes(bytes: Bytes) -> Result<GgufModel, ModelError> {
        Self::from_file(GgufFile::parse(bytes)?)
    }

    /// The model of a parsed file (or of a header parsed from a prefix: configuration,
    /// tokenizer and template are there; weights past the prefix are not).
    pub fn from_file(file: GgufFile) -> Result<GgufModel, ModelError> {
        let config = config_from_metadata(&file)?;
        Ok(GgufModel { file, config })
    }

    /// The parsed file.
    pub fn file(&self) -> &GgufFile {
        &self.file
    }

    /// Resolved configuration.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// Weights of layer `i`, q/k rows converted to the rotate-half layout.
    pub fn load_layer(&self, i: usize) -> Result<LayerWeights, ModelError> {
        let c = &self.config;
        let (h, q, kv, f) = (c.hidden, c.q_dim(), c.kv_dim(), c.intermediate);
        let f_ = &self.file;
        let name = |t: &str| format!("blk.{i}.{t}");
        // Phi-3 files store q/k/v as one `attn_qkv` and gate/up as one `ffn_up` (gate first).
        let (mut attn_q, mut attn_k, attn_v) = if f_.tensor(&name("attn_qkv.weight")).is_some() {
            let qkv = f_.matrix(&name("attn_qkv.weight"), q + 2 * kv, h)?;
            (qkv.slice_rows(0..q), qkv.slice_rows(q..q + kv), qkv.slice_rows(q + kv..q + 2 * kv))
        } else {
            (
                f_.matrix(&name("attn_q.weight"), q, h)?,
                f_.matrix(&name("attn_k.weight"), kv, h)?,
                f_.matrix(&name("attn_v.weight"), kv, h)?,
            )
        };
        let (ffn_gate, ffn_up) = if c.arch == Arch::Phi3 {
            let gate_up = f_.matrix(&name("ffn_up.weight"), 2 * f, h)?;
            (gate_up.slice_rows(0..f), gate_up.slice_rows(f..2 * f))
        } else {
            (f_.matrix(&name("ffn_gate.weight"), f, h)?, f_.matrix(&name("ffn_up.weight"), f, h)?)
        };
        let mut qkv_bias = None;
        if c.arch.has_qkv_bias() {
            qkv_bias = Some([
                f_.vector(&name("attn_q.bias"), q)?,
                f_.vector(&name("attn_k.bias"), kv)?,
                f_.vector(&name("attn_v.bias"), kv)?,
            ]);
        }
        let post_norms = if c.arch.has_post_norms() {
            Some([f_.vector(&name("post_attention_norm.weight"), h)?, f_.vector(&name("post_ffw_norm.weight"), h)?])
        } else {
            None
        };
        let qk_norm = if c.arch.has_qk_norm() {
            Some([
                f_.vector(&name("attn_q_norm.weight"), c.head_dim)?,
                f_.vector(&name("attn_k_norm.weight"), c.head_dim)?,
            ])
        } else {
            None
        };
        if c.arch.gguf_permutes_qk() {
            // llama.cpp permutes q/k rows of llama-architecture models for interleaved RoPE.
            attn_q = attn_q.permute_rows(&unpermute_rope_rows(c.n_heads, c.head_dim));
            attn_k = attn_k.permute_rows(&unpermute_rope_rows(c.n_kv_heads, c.head_dim));
        }
        Ok(LayerWeights {
            attn_norm: f_.vector(&name("attn_norm.weight"), h)?,
            attn_q,
            attn_k,
            attn_v,
            attn_output: f_.matrix(&name("attn_output.weight"), h, q)?,
            qkv_bias,
            qk_norm,
            post_norms,
            ffn_norm: f_.vector(&name("ffn_norm.weight"), h)?,
            ffn_gate,
            ffn_up,
            ffn_down: f_.matrix(&name("ffn_down.weight"), h, f)?,
        })
    }

    /// Token embeddings, final norm and LM head.
    pub fn load_head(&self) -> Result<HeadWeights, ModelError> {
        let c = &self.config;
        let output =
            if c.tie_embeddings { None } else { Some(self.file.matrix("output.weight", c.vocab, c.hidden)?) };
        Ok(HeadWeights {
            token_embd: self.file.matrix("token_embd.weight", c.vocab, c.hidden)?,
            output_norm: self.file.vector("output_norm.weight", c.hidden)?,
            output,
        })
    }

    /// Whether the file describes a tokenizer (`tokenizer.ggml.model` or
    /// `tokenizer.huggingface.json` is present).
    pub fn has_tokenizer(&self) -> bool {
        let md = &self.file.metadata;
        md.get("tokenizer.ggml.model").is_some() || md.get(super::tokenizer::HF_JSON).is_some()
    }

    /// The tokenizer described by the `tokenizer.*` metadata (see [`Tokenizer::from_gguf`]).
    pub fn tokenizer(&self) -> Result<Tokenizer, ModelError> {
        Tokenizer::from_gguf(&self.file.metadata)
    }

    /// `tokenizer.chat_template`, if present.
    pub fn chat_template(&self) -> Option<String> {
        self.file.metadata.str("tokenizer.chat_template").ok().flatten().map(str::to_string)
    }
}

fn config_from_metadata(file: &GgufFile) -> Result<LlamaConfig, ModelError> {
    let md = &file.metadata;
    let arch_name = md.str("general.architecture")?.ok_or_else(|| missing("general.architecture"))?;
    let arch = Arch::parse(arch_name).ok_or_else(|| ModelError::Metadata {
        key: "general.architecture".into(),
        what: format!("{arch_name} is not a supported architecture ({})", Arch::NAMES),
    })?;
    let key = |k: &str| format!("{arch_name}.{k}");
    let usize_of = |v: u64, k: &str| {
        usize::try_from(v)
            .ok()
            .filter(|&v| v <= 1 << 24)
            .ok_or_else(|| ModelError::Metadata { key: key(k), what: format!("value {v} is out of range") })
    };
    let hidden = usize_of(md.req_u64(&key("embedding_length"))?, "embedding_length")?;
    let n_heads = usize_of(md.req_u64(&key("attention.head_count"))?, "attention.head_count")?;
    let n_kv_heads = match md.u64(&key("attention.head_count_kv"))? {
        Some(v) => usize_of(v, "attention.head_count_kv")?,
        None => n_heads,
    };
    let head_dim = match md.u64(&key("attention.key_length"))? {
        Some(v) => usize_of(v, "attention.key_length")?,
        None if n_heads > 0 => hidden / n_heads,
        None => 0,
    };
    let vocab = match md.u64(&key("vocab_size"))? {
        Some(v) => usize_of(v, "vocab_size")?,
        None => match file.tensor("token_embd.weight") {
            Some(t) if t.dims.len() == 2 => usize_of(t.dims[1], "token_embd rows")?,
            _ => return Err(ModelError::MissingTensor("token_embd.weight".into())),
        },
    };
    let config = LlamaConfig {
        arch,
        hidden,
        intermediate: usize_of(md.req_u64(&key("feed_forward_length"))?, "feed_forward_length")?,
        n_layers: usize_of(md.req_u64(&key("block_count"))?, "block_count")?,
        n_heads,
        n_kv_heads,
        head_dim,
        rope_theta: md.f64(&key("rope.freq_base"))?.unwrap_or(10_000.0) as f32,
        rms_eps: md
            .f64(&key("attention.layer_norm_rms_epsilon"))?
            .ok_or_else(|| missing(&key("attention.layer_norm_rms_epsilon")))? as f32,
        vocab,
        max_seq_len: usize_of(md.req_u64(&key("context_length"))?, "context_length")?,
        tie_embeddings: file.tensor("output.weight").is_none(),
        rope_freq_factors: rope_freq_factors(file, arch_name, head_dim)?,
        rope_attn_factor: 1.0,
        sliding_window: None,
        gemma: None,
    };
    if let Some(d) = md.u64(&key("rope.dimension_count"))? {
        if d != head_dim as u64 {
            return Err(ModelError::Metadata {
                key: key("rope.dimension_count"),
                what: format!("{d} of {head_dim} head dimensions rotated: partial RoPE is not supported"),
            });
        }
    }
    let window = match md.u64(&key("attention.sliding_window"))? {
        Some(w) => Some(usize_of(w, "attention.sliding_window")?),
        None => None,
    };
    // Gemma: soft-caps from the file; the rest as llama.cpp sets it, since GGUF has no keys
    // for it: the 27B models' queries scaled by hidden / heads, the others' by the head size;
    // Gemma 2 windows every other layer, Gemma 3 five in six, with a RoPE base of 10000 there.
    let gemma = match config.arch {
        arch @ (Arch::Gemma2 | Arch::Gemma3) => {
            let cap = |k: &str| md.f64(&key(k)).map(|v| v.map(|v| v as f32));
            let is_27b = config.n_layers == if arch == Arch::Gemma2 { 46 } else { 62 };
            let query_scalar = if is_27b { hidden / n_heads.max(1) } else { head_dim };
            Some(GemmaParams {
                attn_softcap: cap("attn_logit_softcapping")?,
                final_softcap: cap("final_logit_softcapping")?,
                query_scalar: query_scalar as f32,
                window_pattern: if arch == Arch::Gemma2 { 2 } else { 6 },
                local_rope_base: (arch == Arch::Gemma3).then_some(10_000.0),
            })
        }
        _ => None,
    };
    let config = match longrope(file, arch_name, &config)? {
        Some(l) => l.apply(config)?,
        None => config,
    };
    let config =
        LlamaConfig { sliding_window: LlamaConfig::window_within(window, config.max_seq_len), gemma, ..config };
    config.validate()?;
    Ok(config)
}

/// LongRoPE tensors, as llama.cpp's converter writes them for Phi-3 128k and Phi-3.5.
const LONGROPE_TENSORS: [&str; 2] = ["rope_factors_short.weight", "rope_factors_long.weight"];

fn has_longrope(file: &GgufFile) -> bool {
    LONGROPE_TENSORS.iter().any(|t| file.tensor(t).is_some())
}

/// LongRoPE from the `rope_factors_short/long` tensors, the original context
/// (`rope.scaling.original_context_length`) and the attention factor
/// (`rope.scaling.attn_factor`, 1 when absent, as in llama.cpp); `None` without those tensors.
fn longrope(file: &GgufFile, arch: &str, config: &LlamaConfig) -> Result<Option<LongRope>, ModelError> {
    if !has_longrope(file) {
        return Ok(None);
    }
    let md = &file.metadata;
    let half = config.head_dim / 2;
    if file.tensor("rope_freqs.weight").is_some() {
        return Err(ModelError::Metadata {
            key: "rope_freqs.weight".into(),
            what: "a file with both RoPE frequency factors and LongRoPE factors".into(),
        });
    }
    // Both present and well formed, as llama.cpp expects them; the long ones are not used.
    let [short, _long] = [file.vector(LONGROPE_TENSORS[0], half)?, file.vector(LONGROPE_TENSORS[1], half)?];
    let original = md.req_u64(&format!("{arch}.rope.scaling.original_context_length"))?;
    Ok(Some(LongRope {
        trained: config.max_seq_len,
        original: usize::try_from(original).unwrap_or(usize::MAX),
        short,
        attn_factor: Some(md.f64(&format!("{arch}.rope.scaling.attn_factor"))?.unwrap_or(1.0) as f32),
    }))
}

/// RoPE frequency divisors: the `rope_freqs.weight` tensor (Llama 3.1+), else a linear
/// `rope.scaling.factor`; other scaling types (yarn, ...) are refused rather than ignored.
fn rope_freq_factors(file: &GgufFile, arch: &str, head_dim: usize) -> Result<Option<Vec<f32>>, ModelError> {
    if has_longrope(file) {
        return Ok(None); // see `longrope`
    }
    if file.tensor("rope_freqs.weight").is_some() {
        return file.vector("rope_freqs.weight", head_dim / 2).map(Some);
    }
    let md = &file.metadata;
    let kind = md.str(&format!("{arch}.rope.scaling.type"))?;
    let factor = match md.f64(&format!("{arch}.rope.scaling.factor"))? {
        Some(f) => Some(f),
        None => md.f64(&format!("{arch}.rope.scale_linear"))?,
    };
    match (kind, factor) {
        (None | Some("none"), None) | (Some("none"), Some(_)) => Ok(None),
        (None | Some("linear"), Some(f)) if f > 0.0 && f.is_finite() => {
            Ok((f != 1.0).then(|| vec![f as f32; head_dim / 2]))
        }
        (Some("linear"), None) => Ok(None),
        (kind, factor) => Err(ModelError::Metadata {
            key: format!("{arch}.rope.scaling.type"),
            what: format!("{} with factor {factor:?} is not supported (none, linear)", kind.unwrap_or("linear")),
        }),
    }
}

/// Writes a GGUF v3 file: for tests and for tools that produce small models.
pub mod writer {
    use super::Value;

    /// A tensor to write: name, dims (fastest first), ggml type id, raw bytes.
    pub struct TensorOut<'a> {
        /// Name.
        pub name: &'a str,
        /// Dimensions, fastest-varying first.
        pub dims: Vec<u64>,
        /// ggml type id.
        pub ggml_type: u32,
        /// Data.
        pub data: &'a [u8],
    }

    fn put_str(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }

    /// The GGUF type a value is written as. Integers that fit 32 bits are written as u32 or
    /// i32, llama.cpp's types for nearly every key (it checks them: a block count stored as
    /// u64 does not load); an array's elements all take the widest type any of them needs.
    fn type_id(v: &Value) -> u32 {
        match v {
            Value::U64(x) if u32::try_from(*x).is_ok() => 4,
            Value::U64(_) => 10,
            Value::I64(x) if i32::try_from(*x).is_ok() => 5,
            Value::I64(_) => 11,
            Value::F64(_) => 6,
            Value::Bool(_) => 7,
            Value::Str(_) => 8,
            Value::Array(_) => 9,
        }
    }

    fn elem_type(a: &[Value]) -> u32 {
        let wide = |t: u32| match t {
            4 if a.iter().any(|e| type_id(e) == 10) => 10,
            5 if a.iter().any(|e| type_id(e) == 11) => 11,
            t => t,
        };
        wide(a.first().map_or(8, type_id))
    }

    fn put_value(out: &mut Vec<u8>, v: &Value, ty: u32) {
        match v {
            Value::U64(x) if ty == 4 => out.extend_from_slice(&(*x as u32).to_le_bytes()),
            Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::I64(x) if ty == 5 => out.extend_from_slice(&(*x as i32).to_le_bytes()),
            Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::F64(x) => out.extend_from_slice(&(*x as f32).to_le_bytes()),
            Value::Bool(b) => out.push(*b as u8),
            Value::Str(s) => put_str(out, s),
            Value::Array(a) => {
                let et = elem_type(a);
                out.extend_from_slice(&et.to_le_bytes());
                out.extend_from_slice(&(a.len() as u64).to_le_bytes());
                a.iter().for_each(|e| put_value(out, e, et));
            }
        }
    }

    /// Tensor data is aligned to this many bytes (GGUF's default; no `general.alignment` key).
    pub const ALIGNMENT: usize = super::DEFAULT_ALIGNMENT as usize;

    /// Zero bytes that pad `len` bytes of tensor data to [`ALIGNMENT`].
    pub fn padding(len: usize) -> usize {
        len.div_ceil(ALIGNMENT) * ALIGNMENT - len
    }

    /// A tensor's entry in the header: its data (`len` bytes) follows the header, in the
    /// order of the entries, each padded with [`padding`].
    pub struct TensorHeader<'a> {
        /// Name.
        pub name: &'a str,
        /// Dimensions, fastest-varying first.
        pub dims: &'a [u64],
        /// ggml type id.
        pub ggml_type: u32,
        /// Bytes of data.
        pub len: u64,
    }

    /// The header of a GGUF v3 file (magic, metadata, tensor infos), padded to where the
    /// first tensor's data starts. For writing a file tensor by tensor without holding it.
    pub fn header(metadata: &[(&str, Value)], tensors: &[TensorHeader<'_>]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(b"GGUF");
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
        for (k, v) in metadata {
            put_str(&mut out, k);
            let ty = type_id(v);
            out.extend_from_slice(&ty.to_le_bytes());
            put_value(&mut out, v, ty);
        }
        let mut offset = 0u64;
        for t in tensors {
            put_str(&mut out, t.name);
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            t.dims.iter().for_each(|d| out.extend_from_slice(&d.to_le_bytes()));
            out.extend_from_slice(&t.ggml_type.to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            offset += t.len + padding(t.len as usize) as u64;
        }
        out.resize(out.len() + padding(out.len()), 0);
        out
    }

    /// Serializes metadata and tensors (alignment 32).
    pub fn write(metadata: &[(&str, Value)], tensors: &[TensorOut<'_>]) -> Vec<u8> {
        let headers: Vec<TensorHeader<'_>> = tensors
            .iter()
            .map(|t| TensorHeader { name: t.name, dims: &t.dims, ggml_type: t.ggml_type, len: t.data.len() as u64 })
            .collect();
        let mut out = header(metadata, &headers);
        for t in tensors {
            out.extend_from_slice(t.data);
            out.resize(out.len() + padding(t.data.len()), 0);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::writer::{write, TensorOut};
    use super::*;

    fn metadata(extra: &[(&'static str, Value)]) -> Vec<(&'static str, Value)> {
        let mut md = vec![
            ("general.architecture", Value::Str("llama".into())),
            ("llama.embedding_length", Value::U64(64)),
            ("llama.feed_forward_length", Value::U64(128)),
            ("llama.block_count", Value::U64(2)),
            ("llama.attention.head_count", Value::U64(4)),
            ("llama.attention.layer_norm_rms_epsilon", Value::F64(1e-5)),
            ("llama.context_length", Value::U64(256)),
            ("llama.vocab_size", Value::U64(100)),
        ];
        md.extend_from_slice(extra);
        md
    }

    fn config(extra: &[(&'static str, Value)]) -> Result<LlamaConfig, ModelError> {
        GgufModel::from_bytes(Bytes::from(write(&metadata(extra), &[]))).map(|m| m.config().clone())
    }

    #[test]
    fn rope_scaling_linear_applies_and_yarn_is_refused() {
        assert_eq!(config(&[]).expect("plain").rope_freq_factors, None);
        let linear = config(&[
            ("llama.rope.scaling.type", Value::Str("linear".into())),
            ("llama.rope.scaling.factor", Value::F64(4.0)),
        ])
        .expect("linear");
        assert_eq!(linear.rope_freq_factors, Some(vec![4.0; 8]));
        let e = config(&[
            ("llama.rope.scaling.type", Value::Str("yarn".into())),
            ("llama.rope.scaling.factor", Value::F64(4.0)),
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains("llama.rope.scaling.type") && e.contains("yarn"), "{e}");
    }

    /// LongRoPE tensors: the short factors and llama.cpp's attention factor at the original
    /// context; the long factors must be there and well formed; an original context beyond
    /// the trained one, or a missing one, is refused by name.
    #[test]
    fn longrope_takes_the_short_factors_at_the_original_context() {
        let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let (short, long) = (bytes(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]), bytes(&[9.0; 8]));
        let file = |extra: &[(&'static str, Value)], long: &[u8]| {
            let tensors = [("rope_factors_short.weight", &short[..]), ("rope_factors_long.weight", long)]
                .map(|(name, data)| TensorOut { name, dims: vec![(data.len() / 4) as u64], ggml_type: 0, data });
            let model = GgufModel::from_bytes(Bytes::from(write(&metadata(extra), &tensors)));
            model.map(|m| m.config().clone())
        };
        let orig = ("llama.rope.scaling.original_context_length", Value::U64(64));
        let c = file(&[orig.clone(), ("llama.rope.scaling.attn_factor", Value::F64(1.19))], &long).unwrap();
        assert_eq!(c.max_seq_len, 64);
        assert_eq!(c.rope_freq_factors, Some(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]));
        assert_eq!(c.rope_attn_factor, 1.19);
        assert_eq!(file(std::slice::from_ref(&orig), &long).unwrap().rope_attn_factor, 1.0);
        let e = file(std::slice::from_ref(&orig), &long[..28]).unwrap_err().to_string();
        assert!(e.contains("rope_factors_long.weight"), "{e}");
        let e = file(&[], &long).unwrap_err().to_string();
        assert!(e.contains("llama.rope.scaling.original_context_length"), "{e}");
        let e = file(&[("llama.rope.scaling.original_context_length", Value::U64(512))], &long).unwrap_err();
        assert!(e.to_string().contains("LongRoPE original context 512"), "{e}");
    }

    /// A GGUF header claiming `n_tensors` tensors and holding one metadata array of `n`
    /// elements of type `elem`, with `body` as the elements' bytes.
    fn raw_array_file(n_tensors: u64, elem: u32, n: u64, body: &[u8]) -> Bytes {
        let mut out = b"GGUF".to_vec();
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&n_tensors.to_le_bytes());
        out.extend_from_slice(&1u64.to_le_bytes());
        out.extend_from_slice(&1u64.to_le_bytes());
        out.push(b'a');
        out.extend_from_slice(&9u32.to_le_bytes());
        out.extend_from_slice(&elem.to_le_bytes());
        out.extend_from_slice(&n.to_le_bytes());
        out.extend_from_slice(body);
        Bytes::from(out)
    }

    #[test]
    fn counts_are_bounded_by_the_bytes_left() {
        // A 1 KiB file claiming 1 KiB / 9 tensors: once enough to reserve 10x the file.
        let file = raw_array_file(1024 / 9, 0, 4, &[0; 1000]);
        let e = GgufFile::parse(file).unwrap_err();
        assert!(matches!(e, ModelError::Count { ref what, .. } if what == "tensors"), "{e}");
        // An array of u64 claiming one element per byte left: each needs 8.
        let file = raw_array_file(0, 10, 1000, &[0; 1000]);
        let e = GgufFile::parse(file).unwrap_err();
        assert!(matches!(e, ModelError::Count { ref what, max: 125, .. } if what == "array a"), "{e}");
        assert!(e.to_string().contains("array a: 1000 entries, at most 125 fit (8 bytes each"), "{e}");
        // Counts near u64::MAX are the same clear error, not an overflow.
        for n in [u64::MAX, u64::MAX / 2 + 1] {
            assert!(matches!(GgufFile::parse(raw_array_file(0, 12, n, &[0; 64])), Err(ModelError::Count { .. })));
            assert!(matches!(GgufFile::parse(raw_array_file(n, 0, 1, &[0; 64])), Err(ModelError::Count { .. })));
        }
        // An array of the right size parses.
        let file = raw_array_file(0, 0, 4, &[1, 2, 3, 4]);
        let md = GgufFile::parse(file).expect("parses").metadata;
        assert_eq!(md.array("a").expect("array").map(<[Value]>::len), Some(4));
    }

    #[test]
    fn one_byte_elements_cannot_amplify_past_the_element_budget() {
        // Each u8 decodes to a 32-byte Value: the budget, not the file, bounds the memory.
        let n = MAX_METADATA_ELEMENTS + 1;
        let file = raw_array_file(0, 0, n, &vec![0; n as usize]);
        // Not `unwrap_err`: its message would print the 4 Mi elements.
        let Err(e) = GgufFile::parse(file) else { panic!("an array of {n} elements parsed") };
        assert!(
            matches!(e, ModelError::Count { ref why, .. } if why.contains("metadata array elements in all")),
            "{e}"
        );
    }

    #[test]
    fn ragged_quantized_tensor_and_nested_array_are_clear_errors() {
        let data = [0u8; 64];
        let t = TensorOut { name: "x", dims: vec![48], ggml_type: 2, data: &data };
        let file = GgufFile::parse(Bytes::from(write(&metadata(&[]), &[t]))).expect("parses");
        let e = file.vector("x", 48).unwrap_err().to_string();
        assert!(e.contains("do not fill whole q4_0 blocks of 32"), "{e}");

        let nested = Value::Array(vec![Value::Array(vec![Value::U64(1)])]);
        let e = GgufFile::parse(Bytes::from(write(&[("k", nested)], &[]))).unwrap_err().to_string();
        assert!(e.contains("nested arrays are not supported"), "{e}");
    }

    /// Integers that fit 32 bits are written as llama.cpp's u32/i32 (it refuses a u64 block
    /// count), wider ones as 64-bit, arrays with their widest element's type; all read back.
    #[test]
    fn writer_uses_32_bit_integers_where_they_fit() {
        let md = [
            ("a", Value::U64(7)),
            ("b", Value::U64(1 << 40)),
            ("c", Value::I64(-3)),
            ("d", Value::Array(vec![Value::U64(1), Value::U64(1 << 33)])),
            ("e", Value::Array(vec![Value::I64(1), Value::I64(-2)])),
        ];
        let bytes = write(&md, &[]);
        // Header (24 bytes), then key "a" (8-byte length, 1 byte), then its type.
        assert_eq!(u32::from_le_bytes(bytes[33..37].try_into().unwrap()), 4, "u32");
        let file = GgufFile::parse(Bytes::from(bytes)).expect("parses");
        for (k, v) in md {
            assert_eq!(file.metadata.get(k), Some(&v), "{k}");
        }
    }
}
