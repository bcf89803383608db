//! Matrix products of stored-format weights with f32 activations, on the CPU.
//!
//! `out[t, r] = sum_c W[r, c] * x[t, c]`: weights are dequantized on the fly, block by block,
//! and accumulated in f32. Activations are never quantized.
//!
//! Kernels: AVX-512F, else AVX2 + FMA + F16C, on x86_64 when the CPU has them (checked at run time, see
//! `simd_x86`), else the portable `scalar` kernel. Rows are split into chunks run in parallel
//! with rayon (native only; single-threaded on wasm32). Each output element is computed by
//! one thread with an arithmetic sequence that does not depend on the chunking, the tiling or
//! the thread count, so results are bit-for-bit reproducible on a given machine.

use std::ops::Range;

use super::scalar;
use crate::model::QMatrix;

/// Below this many multiply-adds a call runs on the calling thread.
const PAR_MIN_WORK: usize = 1 << 17;
/// Smallest number of rows given to one parallel job.
const MIN_CHUNK_ROWS: usize = 64;
/// Parallel jobs per thread (more than one so a busy core can be compensated).
const JOBS_PER_THREAD: usize = 4;

/// A row kernel: `out[(r - rows.start) * n + t] = W[r] . x[t]`.
type RowsFn = fn(&QMatrix, &[f32], usize, Range<usize>, &mut [f32]);

/// The fastest kernel this machine runs.
fn kernel() -> RowsFn {
    #[cfg(target_arch = "x86_64")]
    {
        if super::simd_x86::available_512() {
            return super::simd_x86::rows_512;
        }
        if super::simd_x86::available() {
            return super::simd_x86::rows;
        }
    }
    scalar::rows
}

/// `out[t * rows + r] = W[r] . x[t]` for `n` tokens; `x` is `[n, cols]`, `out` `[n, rows]`.
pub fn matmul(w: &QMatrix, x: &[f32], n: usize, out: &mut [f32]) {
    run(kernel(), &mut [(w, out)], x, n);
}

/// Two products sharing one input (the MLP's gate and up), in one parallel region.
pub fn matmul2(w: [&QMatrix; 2], x: &[f32], n: usize, out: [&mut [f32]; 2]) {
    let [o0, o1] = out;
    run(kernel(), &mut [(w[0], o0), (w[1], o1)], x, n);
}

/// Three products sharing one input (attention's q, k, v), in one parallel region.
pub fn matmul3(w: [&QMatrix; 3], x: &[f32], n: usize, out: [&mut [f32]; 3]) {
    let [o0, o1, o2] = out;
    run(kernel(), &mut [(w[0], o0), (w[1], o1), (w[2], o2)], x, n);
}

/// One parallel job: rows `rows` of `w`, results `[rows.len(), n]` into `out`, then (with
/// several tokens) copied into their columns of `dest`.
struct Job<'a> {
    w: &'a QMatrix,
    rows: Range<usize>,
    out: &'a mut [f32],
    dest: Option<Columns>,
}

impl Job<'_> {
    fn run(self, f: RowsFn, x: &[f32], n: usize) {
        f(self.w, x, n, self.rows.clone(), self.out);
        if let Some(d) = self.dest {
            for (r, sr) in self.rows.zip(self.out.chunks_exact(n)) {
                for (t, &v) in sr.iter().enumerate() {
                    // SAFETY: `d` points at a live `[n, d.rows]` buffer (see `Columns`), `t < n`
                    // and `r < d.rows`; no other job writes row `r`'s column.
                    unsafe { *d.ptr.add(t * d.rows + r) = v };
                }
            }
        }
    }
}

/// A `[n, rows]` result that every job of one product writes at once, each only in the columns
/// of its own rows (the jobs' row ranges do not overlap), so the transposition from the
/// kernels' `[rows, n]` runs in parallel with no copy of the whole result.
#[derive(Clone, Copy)]
struct Columns {
    ptr: *mut f32,
    rows: usize,
}

// SAFETY: `Columns` is only built in `run` from an output slice borrowed mutably for the whole
// parallel region, and jobs write disjoint elements of it.
unsafe impl Send for Columns {}

/// Runs the products `W_i x` for every `(W_i, out_i)` of `mats` with kernel `f`.
fn run(f: RowsFn, mats: &mut [(&QMatrix, &mut [f32])], x: &[f32], n: usize) {
    for (w, out) in mats.iter() {
        assert_eq!(x.len(), n * w.cols, "matmul: x has the wrong length");
        assert_eq!(out.len(), n * w.rows, "matmul: out has the wrong length");
    }
    if n == 0 {
        return;
    }
    // With several tokens the kernels write `[rows, n]`; transpose into `[n, rows]` after.
    let mut scratch: Vec<Vec<f32>> =
        if n == 1 { Vec::new() } else { mats.iter().map(|(w, _)| vec![0.0f32; w.rows * n]).collect() };
    let work: usize = mats.iter().map(|(w, _)| w.rows * w.cols * n).sum();
    let total_rows: usize = mats.iter().map(|(w, _)| w.rows).sum();
    let chunk = chunk_rows(work, total_rows);
    {
        let mut jobs = Vec::new();
        let mut scratch_it = scratch.iter_mut();
        for (w, out) in mats.iter_mut() {
            let (dst, dest): (&mut [f32], _) = if n == 1 {
                (out, None)
            } else {
                let dest = Columns { ptr: out.as_mut_ptr(), rows: w.rows };
                (scratch_it.next().expect("one scratch per matrix"), Some(dest))
            };
            let mut rest = dst;
            let mut r = 0;
            while r < w.rows {
                let len = chunk.min(w.rows - r);
                let (head, tail) = rest.split_at_mut(len * n);
                jobs.push(Job { w, rows: r..r + len, out: head, dest });
                rest = tail;
                r += len;
            }
        }
        execute(f, jobs, x, n);
    }
}

/// Rows per job: all of them for small products, else enough jobs to balance the threads.
fn chunk_rows(work: usize, total_rows: usize) -> usize {
    let threads = threads();
    if threads <= 1 || work < PAR_MIN_WORK {
        return total_rows.max(1);
    }
    let per_job = total_rows.div_ceil(threads * JOBS_PER_THREAD);
    // A multiple of 4 keeps the kernels' row tiles whole (only a speed matter).
    per_job.max(MIN_CHUNK_ROWS).next_multiple_of(4)
}

#[cfg(not(target_arch = "wasm32"))]
fn threads() -> usize {
    rayon::current_num_threads()
}

#[cfg(target_arch = "wasm32")]
fn threads() -> usize {
    1
}

#[cfg(not(target_arch = "wasm32"))]
fn execute(f: RowsFn, jobs: Vec<Job<'_>>, x: &[f32], n: usize) {
    use rayon::prelude::*;
    if jobs.len() == 1 {
        jobs.into_iter().for_each(|j| j.run(f, x, n));
    } else {
        jobs.into_par_iter().with_max_len(1).for_each(|j| j.run(f, x, n));
    }
}

#[cfg(target_arch = "wasm32")]
fn execute(f: RowsFn, jobs: Vec<Job<'_>>, x: &[f32], n: usize) {
    jobs.into_iter().for_each(|j| j.run(f, x, n));
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;
    use crate::engine::reference;
    use crate::model::quant::{random_matrix, QK};
    use crate::model::WeightType;

    fn random_x(n: usize, cols: usize, seed: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..n * cols).map(|_| rng.random_range(-2.0f32..2.0)).collect()
    }

    /// Tolerance: `|a - b| <= 1e-5 * sum_c |w_rc x_tc| + 1e-6`. Both sides sum the same exact
    /// products (the dequantized weights are bit-identical to the reference's) in a different
    /// order; f32 summation error is bounded by about `len * 2^-24 * sum |terms|`, and in
    /// practice (random rounding) by far less, so 1e-5 is loose for 64..600 columns while still
    /// catching any wrong element, scale or block.
    fn check(dtype: WeightType, w: &QMatrix, x: &[f32], n: usize, got: &[f32], what: &str) {
        let want = reference::matmul(w, x, n);
        let dq = w.dequantize();
        for t in 0..n {
            for r in 0..w.rows {
                let xt = &x[t * w.cols..(t + 1) * w.cols];
                let mag: f32 = dq[r * w.cols..(r + 1) * w.cols].iter().zip(xt).map(|(a, b)| (a * b).abs()).sum();
                let (a, b) = (got[t * w.rows + r], want[t * w.rows + r]);
                assert!(
                    (a - b).abs() <= 1e-5 * mag + 1e-6,
                    "{what} {dtype} [{}x{}] n={n}: (t={t}, r={r}): got {a}, want {b}, magnitude {mag}",
                    w.rows,
                    w.cols
                );
            }
        }
    }

    /// Shapes for the 32-element block types, and for the 256-element super-block types.
    const SHAPES: [(usize, usize); 4] = [(67, 64), (130, 96), (5, 32), (300, 576)];
    const SHAPES_K: [(usize, usize); 4] = [(67, 256), (130, 512), (5, 256), (300, 768)];

    fn shapes(dtype: WeightType) -> [(usize, usize); 4] {
        if dtype.block_len() > QK {
            SHAPES_K
        } else {
            SHAPES
        }
    }

    #[test]
    fn matmul_matches_reference_all_types() {
        for (i, dtype) in WeightType::ALL.into_iter().enumerate() {
            for (j, &(rows, cols)) in shapes(dtype).iter().enumerate() {
                let w = random_matrix(dtype, rows, cols, (i * 100 + j) as u64);
                for n in [1, 3, 17] {
                    let x = random_x(n, cols, 7 + n as u64);
                    let mut out = vec![f32::NAN; n * rows];
                    matmul(&w, &x, n, &mut out);
                    check(dtype, &w, &x, n, &out, "matmul");
                }
            }
        }
    }

    #[test]
    fn float_types_with_ragged_columns() {
        for dtype in [WeightType::F32, WeightType::F16, WeightType::BF16] {
            for cols in [1, 7, 45, 77] {
                let w = random_matrix(dtype, 33, cols, cols as u64);
                for n in [1, 3, 17] {
                    let x = random_x(n, cols, 3);
                    let mut out = vec![f32::NAN; n * 33];
                    matmul(&w, &x, n, &mut out);
                    check(dtype, &w, &x, n, &out, "ragged");
                }
            }
        }
    }

    /// Runs kernel `f` the way `run` does, but as one job on this thread.
    fn one_job(f: RowsFn, w: &QMatrix, x: &[f32], n: usize) -> Vec<f32> {
        let mut out = vec![f32::NAN; n * w.rows];
        let mut scratch = vec![f32::NAN; n * w.rows];
        f(w, x, n, 0..w.rows, &mut scratch);
        for r in 0..w.rows {
            for t in 0..n {
                out[t * w.rows + r] = scratch[r * n + t];
            }
        }
        out
    }

    #[test]
    fn scalar_kernel_matches_reference() {
        for (i, dtype) in WeightType::ALL.into_iter().enumerate() {
            for (j, &(rows, cols)) in shapes(dtype).iter().enumerate() {
                let w = random_matrix(dtype, rows, cols, (i * 10 + j) as u64);
                for n in [1, 3, 17] {
                    let x = random_x(n, cols, n as u64);
                    let out = one_job(scalar::rows, &w, &x, n);
                    check(dtype, &w, &x, n, &out, "scalar");
                    // Through the parallel driver too.
                    let mut par = vec![f32::NAN; n * rows];
                    run(scalar::rows, &mut [(&w, &mut par)], &x, n);
                    assert_eq!(par, out, "scalar {dtype}: parallel split changed the result");
                }
            }
        }
    }

    /// Every kernel this machine can run, by name.
    fn kernels() -> Vec<(&'static str, RowsFn)> {
        let mut k: Vec<(&'static str, RowsFn)> = vec![("scalar", scalar::rows)];
        #[cfg(target_arch = "x86_64")]
        {
            use super::super::simd_x86;
            if simd_x86::available() {
                k.push(("avx2", simd_x86::rows));
            } else {
                eprintln!("avx2 kernel not tested: no avx2/fma/f16c");
            }
            if simd_x86::available_512() {
                k.push(("avx512", simd_x86::rows_512));
            } else {
                eprintln!("avx512 kernel not tested: no avx512f");
            }
        }
        k
    }

    #[test]
    fn simd_kernels_match_reference() {
        for (name, f) in kernels() {
            for (i, dtype) in WeightType::ALL.into_iter().enumerate() {
                for (j, &(rows, cols)) in shapes(dtype).iter().enumerate() {
                    let w = random_matrix(dtype, rows, cols, (i * 10 + j) as u64);
                    for n in [1, 3, 17] {
                        let x = random_x(n, cols, n as u64);
                        let out = one_job(f, &w, &x, n);
                        check(dtype, &w, &x, n, &out, name);
                    }
                }
            }
        }
    }

    /// Every kernel decodes every type to exactly the reference's values: multiplied by the
    /// unit vectors (`x = I`, one token per column), each output is one weight times 1 plus
    /// zeros, so it equals the reference dequantization with no rounding of its own (zeros
    /// may lose their sign).
    #[test]
    fn unit_vectors_give_the_reference_values() {
        for (name, f) in kernels() {
            for (i, dtype) in WeightType::ALL.into_iter().enumerate() {
                let (rows, cols) = (5, 2 * dtype.block_len().max(QK));
                let w = random_matrix(dtype, rows, cols, 50 + i as u64);
                let mut eye = vec![0.0f32; cols * cols];
                for c in 0..cols {
                    eye[c * cols + c] = 1.0;
                }
                let got = one_job(f, &w, &eye, cols);
                let want = w.dequantize();
                for r in 0..rows {
                    for c in 0..cols {
                        let (g, e) = (got[c * rows + r], want[r * cols + c]);
                        assert!(g == e, "{name} {dtype}: element ({r}, {c}) decoded as {g}, reference {e}");
                    }
                }
            }
        }
    }

    /// Results are the same bit for bit whatever the job split, the token count and the run.
    #[test]
    fn deterministic_across_runs_splits_and_token_counts() {
        for dtype in WeightType::ALL {
            // Large enough to be split into parallel jobs.
            let (rows, cols) = (1030, if dtype.block_len() > QK { 768 } else { 576 });
            let w = random_matrix(dtype, rows, cols, 42);
            let n = 9;
            let x = random_x(n, cols, 43);
            let mut first = vec![0.0; n * rows];
            matmul(&w, &x, n, &mut first);
            for _ in 0..3 {
                let mut again = vec![0.0; n * rows];
                matmul(&w, &x, n, &mut again);
                assert_eq!(again, first, "{dtype}: repeated run differs");
            }
            assert_eq!(one_job(kernel(), &w, &x, n), first, "{dtype}: one job differs from the split");
            // Token t alone gives the same values as inside a batch (tiling does not matter).
            for t in [0, 4, 8] {
                let mut single = vec![0.0; rows];
                matmul(&w, &x[t * cols..(t + 1) * cols], 1, &mut single);
                assert_eq!(single[..], first[t * rows..(t + 1) * rows], "{dtype}: token {t} alone differs");
            }
        }
    }

    #[test]
    fn matmul2_and_matmul3_match_matmul() {
        let dtype = WeightType::Q4_1;
        let ws: Vec<QMatrix> = [(576, 576), (192, 576), (130, 576)]
            .iter()
            .enumerate()
            .map(|(i, &(r, c))| random_matrix(dtype, r, c, i as u64))
            .collect();
        for n in [1, 3] {
            let x = random_x(n, 576, 5);
            let single: Vec<Vec<f32>> = ws
                .iter()
                .map(|w| {
                    let mut o = vec![0.0; n * w.rows];
                    matmul(w, &x, n, &mut o);
                    o
                })
                .collect();
            let mut o: Vec<Vec<f32>> = ws.iter().map(|w| vec![0.0; n * w.rows]).collect();
            {
                let [a, b, c] = &mut o[..] else { unreachable!() };
                matmul3([&ws[0], &ws[1], &ws[2]], &x, n, [a, b, c]);
            }
            assert_eq!(o, single);
            let mut o2: Vec<Vec<f32>> = ws[..2].iter().map(|w| vec![0.0; n * w.rows]).collect();
            {
                let [a, b] = &mut o2[..] else { unreachable!() };
                matmul2([&ws[0], &ws[1]], &x, n, [a, b]);
            }
            assert_eq!(o2[..], single[..2]);
        }
    }

    /// Throughput on the shapes of SmolLM2-135M. Run with
    /// `cargo test -p web-node --lib cpu::matmul::tests::bench -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn bench() {
        use std::time::Instant;
        let shapes = [
            // (name, type, rows, cols, uses per decoded token)
            ("q/o 576x576 q4_1", WeightType::Q4_1, 576, 576, 60.0),
            ("k/v 192x576 q4_1", WeightType::Q4_1, 192, 576, 60.0),
            ("gate/up 1536x576 q4_1", WeightType::Q4_1, 1536, 576, 60.0),
            ("down 576x1536 q4_1", WeightType::Q4_1, 576, 1536, 30.0),
            ("lm head 49152x576 q8_0", WeightType::Q8_0, 49152, 576, 1.0),
        ];
        for (kname, f) in kernels().into_iter().skip(1) {
            println!("kernel {kname}, {} threads", threads());
            let mut per_token_s = 0.0;
            for (name, dtype, rows, cols, uses) in shapes {
                let w = random_matrix(dtype, rows, cols, 1);
                for n in [1usize, 100] {
                    let x = random_x(n, cols, 2);
                    let mut out = vec![0.0; n * rows];
                    let matmul = |w: &QMatrix, x: &[f32], n: usize, out: &mut [f32]| run(f, &mut [(w, out)], x, n);
                    matmul(&w, &x, n, &mut out);
                    let reps = ((2e8 / (rows * cols * n) as f64) as usize).clamp(3, 2000);
                    let mut times = Vec::new();
                    for _ in 0..5 {
                        let t0 = Instant::now();
                        for _ in 0..reps {
                            matmul(&w, &x, n, &mut out);
                        }
                        times.push(t0.elapsed().as_secs_f64() / reps as f64);
                    }
                    times.sort_by(f64::total_cmp);
                    let med = times[2];
                    let gbs = w.data.len() as f64 / med / 1e9;
                    let gmacs = (rows * cols * n) as f64 / med / 1e9;
                    println!("{name:26} n={n:3}: {:9.1} us  {gbs:6.2} GB/s  {gmacs:6.2} GMAC/s", med * 1e6);
                    if n == 1 {
                        per_token_s += med * uses;
                    }
                }
            }
            println!(
                "matmul time per decoded token: {:.2} ms -> {:.1} tok/s upper bound",
                per_token_s * 1e3,
                1.0 / per_token_s
            );
        }
    }
}
