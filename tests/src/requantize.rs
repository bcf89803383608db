//! Rewrites a GGUF file with some of its tensors requantized by candle's quantizer (llama.cpp's
//! algorithms, including the K-quants' scale search) or otherwise replaced, the rest copied
//! byte for byte.

use std::path::Path;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use web_node::model::gguf::writer::{write, TensorOut};
use web_node::model::gguf::{GgmlType, GgufFile, GgufModel, TensorInfo};
use web_node::model::WeightType;

/// candle's quantizer for a weight type, where it has one.
pub fn candle_dtype(t: WeightType) -> Option<GgmlDType> {
    Some(match t {
        WeightType::F32 => GgmlDType::F32,
        WeightType::F16 => GgmlDType::F16,
        WeightType::BF16 => GgmlDType::BF16,
        WeightType::Q4_0 => GgmlDType::Q4_0,
        WeightType::Q4_1 => GgmlDType::Q4_1,
        WeightType::Q5_0 => GgmlDType::Q5_0,
        WeightType::Q5_1 => GgmlDType::Q5_1,
        WeightType::Q8_0 => GgmlDType::Q8_0,
        WeightType::Q2_K => GgmlDType::Q2K,
        WeightType::Q3_K => GgmlDType::Q3K,
        WeightType::Q4_K => GgmlDType::Q4K,
        WeightType::Q5_K => GgmlDType::Q5K,
        WeightType::Q6_K => GgmlDType::Q6K,
        WeightType::IQ4_NL | WeightType::IQ4_XS => return None,
    })
}

/// `values` (`[rows, cols]`, row-major) quantized to `dtype` by candle.
pub fn quantize(values: Vec<f32>, rows: usize, cols: usize, dtype: WeightType) -> Vec<u8> {
    let ct = candle_dtype(dtype).unwrap_or_else(|| panic!("candle has no {dtype} quantizer"));
    let t = Tensor::from_vec(values, (rows, cols), &Device::Cpu).expect("tensor");
    QTensor::quantize(&t, ct).expect("candle quantizes").data().expect("bytes").into_owned()
}

/// The GGUF at `path` with every 2-D tensor for whose name `pick` gives a type requantized to
/// that type (from its dequantized values); metadata and other tensors unchanged.
pub fn requantize_gguf(path: &Path, pick: impl Fn(&str) -> Option<WeightType>) -> Vec<u8> {
    rewrite_gguf(path, |file, t| match (pick(&t.name), t.dims.len()) {
        (Some(dtype), 2) => {
            let (cols, rows) = (t.dims[0] as usize, t.dims[1] as usize);
            let m = file.matrix(&t.name, rows, cols).expect("matrix");
            Some((GgmlType::from(dtype).0, quantize(m.dequantize(), rows, cols, dtype)))
        }
        _ => None,
    })
}

/// The GGUF at `path` with the tensors for which `change` gives a new `(ggml type id, bytes)`
/// replaced; metadata and the other tensors unchanged.
pub fn rewrite_gguf(path: &Path, change: impl Fn(&GgufFile, &TensorInfo) -> Option<(u32, Vec<u8>)>) -> Vec<u8> {
    let model = GgufModel::open(path).expect("GGUF opens");
    let file = model.file();
    let mut metadata: Vec<(&str, _)> = file.metadata.0.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    metadata.sort_by(|a, b| a.0.cmp(b.0));
    let data: Vec<(&TensorInfo, u32, Vec<u8>)> = file
        .tensors
        .iter()
        .map(|t| match change(file, t) {
            Some((ty, bytes)) => (t, ty, bytes),
            None => (t, t.dtype.0, file.tensor_bytes(&t.name).expect("tensor bytes").to_vec()),
        })
        .collect();
    let tensors: Vec<TensorOut<'_>> = data
        .iter()
        .map(|(t, ty, b)| TensorOut { name: &t.name, dims: t.dims.clone(), ggml_type: *ty, data: b })
        .collect();
    write(&metadata, &tensors)
}

/// The default model as llama.cpp's Q4_K_M mixes K-quants into it: the `ffn_down` matrices
/// (the only ones 256-element super-blocks divide) in Q4_K on even layers and Q6_K on odd ones.
pub fn k_quant_mix(name: &str) -> Option<WeightType> {
    let layer: usize = name.strip_prefix("blk.")?.split('.').next()?.parse().ok()?;
    name.ends_with(".ffn_down.weight").then_some(if layer.is_multiple_of(2) {
        WeightType::Q4_K
    } else {
        WeightType::Q6_K
    })
}
