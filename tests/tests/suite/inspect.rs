//! `ait inspect`: what a model file is and whether this build runs it, on the default model, on
//! a K-quant mix of it, and on files it cannot run (a type it lacks, a K-quant block whose scale
//! is NaN), each refusal naming the tensor and the reason.

use ait_tests::default_model;
use ait_tests::procs::{ait, temp_dir};
use ait_tests::requantize::{k_quant_mix, requantize_gguf, rewrite_gguf};

/// Runs `ait inspect PATH`: (stdout, exit success).
fn inspect(path: &std::path::Path) -> (String, bool) {
    let out = ait().arg("inspect").arg(path).output().expect("ait runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.code().is_some(), "ait inspect crashed: {}", String::from_utf8_lossy(&out.stderr));
    (stdout, out.status.success())
}

#[test]
fn inspect_describes_runnable_and_unrunnable_files() {
    let (text, ok) = inspect(&default_model());
    assert!(ok, "{text}");
    for line in [
        "architecture: llama",
        "shape: layers 30, hidden 576, ffn 1536, heads 9, kv heads 3",
        "context: 8192",
        "parameters: 134515008",
        "Q4_1      210 tensors",
        "Q8_0        1 tensors",
        "tokenizer: gpt2, 49152 tokens",
        "chat template: present",
        "runs here: yes (Llama, 30 layers",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }

    let dir = temp_dir("inspect");
    let mix = dir.join("q4_k_m-like.gguf");
    std::fs::write(&mix, requantize_gguf(&default_model(), k_quant_mix)).expect("write");
    let (text, ok) = inspect(&mix);
    assert!(ok, "{text}");
    assert!(text.contains("Q4_K       15 tensors") && text.contains("Q6_K       15 tensors"), "{text}");

    // A type this build lacks (IQ2_XXS: 66 bytes per 256 weights), in layer 3's ffn_down.
    let iq2 = dir.join("iq2.gguf");
    std::fs::write(
        &iq2,
        rewrite_gguf(&default_model(), |_, t| {
            (t.name == "blk.3.ffn_down.weight").then(|| (16, vec![0u8; 576 * 1536 / 256 * 66]))
        }),
    )
    .expect("write");
    let (text, ok) = inspect(&iq2);
    assert!(!ok, "{text}");
    assert!(text.contains("IQ2_XXS     1 tensors") && text.contains("(not supported by this build)"), "{text}");
    assert!(
        text.contains("runs here: no:") && text.contains("blk.3.ffn_down.weight: unsupported type IQ2_XXS"),
        "{text}"
    );

    // A Q4_K super-block whose d is NaN, in layer 4's ffn_down (row 7, block 2).
    let nan = dir.join("nan-scale.gguf");
    std::fs::write(
        &nan,
        rewrite_gguf(&mix, |file, t| {
            (t.name == "blk.4.ffn_down.weight").then(|| {
                let mut b = file.tensor_bytes(&t.name).expect("bytes").to_vec();
                let at = (7 * 6 + 2) * 144;
                b[at..at + 2].copy_from_slice(&half::f16::NAN.to_le_bytes());
                (t.dtype.0, b)
            })
        }),
    )
    .expect("write");
    let (text, ok) = inspect(&nan);
    assert!(!ok, "{text}");
    assert!(text.contains("blk.4.ffn_down.weight: q4_k block 2 (row 7) has a non-finite scale NaN"), "{text}");
    std::fs::remove_dir_all(&dir).ok();
}
