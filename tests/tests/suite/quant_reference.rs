//! Every quantized weight type's reference dequantization (web-node's `quant::dequantize`, which
//! every CPU and GPU kernel is tested against, to the exact value) compared bit for bit with
//! llama.cpp's own Python package `gguf` 0.19 (`tests/gguf_py/dequantize.py`, numpy):
//! - random blocks with valid scales: random bytes cover every packed value and scale pattern;
//! - blocks of real weights: the default model's own Q4_1 and Q8_0 blocks, and its `ffn_down`
//!   matrices (1536 wide, the only ones a K-quant super-block divides) requantized by candle's
//!   quantizer to every type candle writes.

use std::path::Path;

use ait_tests::procs::temp_dir;
use ait_tests::requantize::{candle_dtype, quantize};
use ait_tests::{default_model, python};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use web_node::model::gguf::{GgmlType, GgufModel};
use web_node::model::quant::{dequantize, random_blocks};
use web_node::model::WeightType;

/// Writes `blocks` of `dtype` for the Python side, as `<tag>.<TYPE>.bin`.
fn write_case(dir: &Path, tag: &str, dtype: WeightType, blocks: &[u8]) {
    std::fs::write(dir.join(format!("{tag}.{}.bin", GgmlType::from(dtype).name())), blocks).expect("write blocks");
}

#[test]
fn dequantization_matches_gguf_py_bit_for_bit() {
    let dir = temp_dir("gguf-py");
    let mut rng = ChaCha8Rng::seed_from_u64(13);
    let quantized: Vec<WeightType> = WeightType::ALL.into_iter().filter(|t| t.block_len() > 1).collect();
    for &t in &quantized {
        write_case(&dir, "random", t, &random_blocks(t, 400, &mut rng));
    }
    let model = GgufModel::open(&default_model()).expect("default model");
    let file = model.file();
    // The file's own blocks: two layers' ffn_down (Q4_1) and 300 rows of token_embd (Q8_0).
    let down = file.matrix("blk.0.ffn_down.weight", 576, 1536).expect("ffn_down");
    assert_eq!(down.dtype, WeightType::Q4_1);
    write_case(&dir, "file", WeightType::Q4_1, &down.data);
    let embd = file.tensor_bytes("token_embd.weight").expect("token_embd");
    write_case(&dir, "file", WeightType::Q8_0, &embd[..300 * 576 / 32 * 34]);
    // Real weights requantized by candle: layer 7's ffn_down (its Q4_1 values, which the file
    // case above checks, as f32).
    let down7 = file.matrix("blk.7.ffn_down.weight", 576, 1536).expect("ffn_down");
    let mut requantized = 0;
    for &t in quantized.iter().filter(|t| candle_dtype(**t).is_some()) {
        write_case(&dir, "requantized", t, &quantize(down7.dequantize(), 576, 1536, t));
        requantized += 1;
    }
    assert!(requantized >= 10, "candle requantized {requantized} types");

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("gguf_py/dequantize.py");
    let out = python().arg(&script).arg(&dir).output().expect("python3 runs");
    assert!(
        out.status.success(),
        "gguf-py dequantization failed (scripts/pydeps.sh installs gguf into $AIT_PYDEPS):\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).expect("read dir") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "bin") {
            continue;
        }
        let name = path.file_stem().expect("stem").to_string_lossy().into_owned();
        let type_name = name.rsplit('.').next().expect("type");
        let dtype = *quantized.iter().find(|&&t| GgmlType::from(t).name() == type_name).expect("known type");
        let blocks = std::fs::read(&path).expect("blocks");
        let theirs: Vec<f32> = std::fs::read(path.with_extension("f32"))
            .expect("gguf-py output")
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let mut ours = vec![0.0f32; blocks.len() / dtype.block_bytes() * dtype.block_len()];
        dequantize(dtype, &blocks, &mut ours);
        assert_eq!(ours.len(), theirs.len(), "{name}: element count");
        for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
            assert!(
                a.to_bits() == b.to_bits(),
                "{name}: element {i} (block {}): ours {a:e}, gguf-py {b:e}",
                i / dtype.block_len()
            );
        }
        files += 1;
    }
    assert_eq!(files, quantized.len() + 2 + requantized, "every case was compared");
    std::fs::remove_dir_all(&dir).ok();
}
