// Matrix product y = W x over weights kept in their stored format, f32 accumulation.
//
// Entry points:
// - `matvec`: one token (decode). A workgroup computes ROWS rows; WG / ROWS threads share a
//   row, each walking every (WG / ROWS)-th 32-element block, then a workgroup-memory
//   reduction. Dispatch: (ceil(rows / ROWS), 1, 1).
// - `matmat`: n tokens (prefill). Same row split; each thread dequantizes a weight block once
//   and applies it to TT tokens. Dispatch: (ceil(rows / ROWS), ceil(n / TT), 1).
//
// Weight layout (`w`, u32 words, repacked at upload, see engine/gpu/weights.rs); row r starts
// at word r * row_words:
// - DTYPE 0 F32:  one word per element (f32 bits).
// - DTYPE 1 F16:  two elements per word (element 2i in the low half), unpack2x16float.
// - DTYPE 2 BF16: two elements per word (element 2i in the low half); value = bits << 16.
// - DTYPE 3 Q4_0: 5 words per 32-element block: [d (f16, low half), qs[0..4], .., qs[12..16]].
// - DTYPE 4 Q4_1: 5 words per block: [d | m << 16 (f16 pair), qs as in Q4_0].
// - DTYPE 5 Q8_0: 9 words per block: [d (f16, low half), qs[0..4] (i8), .., qs[28..32]].
// Nibbles: byte j of qs holds element j (low nibble) and element j + 16 (high nibble).
//
// Constants owned by engine/gpu/ops.rs: DTYPE, WG (threads per workgroup), ROWS (rows per
// workgroup; WG / ROWS must be a power of two). ROWS == WG (one thread per row, no barrier)
// suits CPU adapters, which run a workgroup's threads as SIMD lanes. TT is a shader const
// (private array size).

override DTYPE: u32 = 0u;
override WG: u32 = 64u;
override ROWS: u32 = 4u;
const TT: u32 = 8u;

struct Step {
    n_tokens: u32,
    pos: u32,
    _pad0: u32,
    _pad1: u32,
}

struct Params {
    rows: u32,
    cols: u32,
    // u32 words per stored row.
    row_words: u32,
    // 1: output row t goes to y row (pos + t) (writing straight into a KV cache).
    y_at_pos: u32,
    // 1: y += W x (residual add in the epilogue); 0: y = W x.
    accumulate: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> w: array<u32>;        // (rows, row_words)
@group(0) @binding(3) var<storage, read> x: array<f32>;        // (n_tokens, cols)
@group(0) @binding(4) var<storage, read_write> y: array<f32>;  // (.., rows)

var<workgroup> red: array<f32, WG * TT>;

fn nib_lo(q: u32) -> vec4<f32> {
    return vec4<f32>((vec4<u32>(q) >> vec4<u32>(0u, 8u, 16u, 24u)) & vec4<u32>(0xFu));
}

fn nib_hi(q: u32) -> vec4<f32> {
    return vec4<f32>((vec4<u32>(q) >> vec4<u32>(4u, 12u, 20u, 28u)) & vec4<u32>(0xFu));
}

fn bytes_i8(q: u32) -> vec4<f32> {
    return vec4<f32>(bitcast<vec4<i32>>(vec4<u32>(q) << vec4<u32>(24u, 16u, 8u, 0u)) >> vec4<u32>(24u));
}

fn x4(i: u32) -> vec4<f32> {
    return vec4<f32>(x[i], x[i + 1u], x[i + 2u], x[i + 3u]);
}

// Element c of a float-typed row starting at word ro (c < cols).
fn float_at(ro: u32, c: u32) -> f32 {
    if DTYPE == 0u {
        return bitcast<f32>(w[ro + c]);
    }
    let word = w[ro + c / 2u];
    if DTYPE == 1u {
        let v = unpack2x16float(word);
        return select(v.x, v.y, (c & 1u) == 1u);
    }
    // BF16
    return bitcast<f32>(select(word << 16u, word & 0xFFFF0000u, (c & 1u) == 1u));
}

// Dot product of block b (32 elements) of the row at word ro with x[xb + 32 b ..].
fn block_dot(ro: u32, b: u32, xb: u32) -> f32 {
    let c0 = b * 32u;
    if DTYPE == 3u {
        let o = ro + b * 5u;
        let d = unpack2x16float(w[o]).x;
        var s = vec4<f32>(0.0);
        for (var k = 0u; k < 4u; k++) {
            let q = w[o + 1u + k];
            s += (nib_lo(q) - 8.0) * x4(xb + c0 + 4u * k) + (nib_hi(q) - 8.0) * x4(xb + c0 + 16u + 4u * k);
        }
        return d * (s.x + s.y + s.z + s.w);
    }
    if DTYPE == 4u {
        let o = ro + b * 5u;
        let dm = unpack2x16float(w[o]);
        var s = vec4<f32>(0.0);
        var sx = vec4<f32>(0.0);
        for (var k = 0u; k < 4u; k++) {
            let q = w[o + 1u + k];
            let xl = x4(xb + c0 + 4u * k);
            let xh = x4(xb + c0 + 16u + 4u * k);
            s += nib_lo(q) * xl + nib_hi(q) * xh;
            sx += xl + xh;
        }
        return dm.x * (s.x + s.y + s.z + s.w) + dm.y * (sx.x + sx.y + sx.z + sx.w);
    }
    if DTYPE == 5u {
        let o = ro + b * 9u;
        let d = unpack2x16float(w[o]).x;
        var s = vec4<f32>(0.0);
        for (var k = 0u; k < 8u; k++) {
            s += bytes_i8(w[o + 1u + k]) * x4(xb + c0 + 4u * k);
        }
        return d * (s.x + s.y + s.z + s.w);
    }
    // Float types: the last block of a row may be partial.
    var s = 0.0;
    let end = min(c0 + 32u, p.cols);
    for (var c = c0; c < end; c++) {
        s += float_at(ro, c) * x[xb + c];
    }
    return s;
}

// Dequantized block b of the row at word ro, as 8 vec4 (zero past the row's end).
fn load_block(ro: u32, b: u32) -> array<vec4<f32>, 8> {
    var v: array<vec4<f32>, 8>;
    let c0 = b * 32u;
    if DTYPE == 3u || DTYPE == 4u {
        let o = ro + b * 5u;
        let dm = unpack2x16float(w[o]);
        let m = select(-8.0 * dm.x, dm.y, DTYPE == 4u);
        for (var k = 0u; k < 4u; k++) {
            let q = w[o + 1u + k];
            v[k] = nib_lo(q) * dm.x + m;
            v[k + 4u] = nib_hi(q) * dm.x + m;
        }
        return v;
    }
    if DTYPE == 5u {
        let o = ro + b * 9u;
        let d = unpack2x16float(w[o]).x;
        for (var k = 0u; k < 8u; k++) {
            v[k] = bytes_i8(w[o + 1u + k]) * d;
        }
        return v;
    }
    for (var k = 0u; k < 8u; k++) {
        var e = vec4<f32>(0.0);
        for (var i = 0u; i < 4u; i++) {
            let c = c0 + 4u * k + i;
            if c < p.cols {
                e[i] = float_at(ro, c);
            }
        }
        v[k] = e;
    }
    return v;
}

fn y_index(t: u32, r: u32) -> u32 {
    return (t + step.pos * p.y_at_pos) * p.rows + r;
}

fn store(t: u32, r: u32, v: f32) {
    let i = y_index(t, r);
    if p.accumulate == 1u {
        y[i] = y[i] + v;
    } else {
        y[i] = v;
    }
}

@compute @workgroup_size(WG)
fn matvec(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let tpr = WG / ROWS;
    let lane = tid % tpr;
    let r = wid.x * ROWS + tid / tpr;
    let nblocks = (p.cols + 31u) / 32u;
    var acc = 0.0;
    if r < p.rows {
        let ro = r * p.row_words;
        for (var b = lane; b < nblocks; b += tpr) {
            acc += block_dot(ro, b, 0u);
        }
    }
    if tpr == 1u {
        // One thread per row (CPU adapters): no reduction, no barrier.
        if r < p.rows {
            store(0u, r, acc);
        }
        return;
    }
    red[tid] = acc;
    workgroupBarrier();
    for (var s = tpr / 2u; s > 0u; s >>= 1u) {
        if lane < s {
            red[tid] += red[tid + s];
        }
        workgroupBarrier();
    }
    if lane == 0u && r < p.rows {
        store(0u, r, red[tid]);
    }
}

@compute @workgroup_size(WG)
fn matmat(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let tpr = WG / ROWS;
    let lane = tid % tpr;
    let r = wid.x * ROWS + tid / tpr;
    let t0 = wid.y * TT;
    let nt = min(TT, step.n_tokens - t0);
    let nblocks = (p.cols + 31u) / 32u;
    var acc: array<f32, TT>;
    if r < p.rows {
        let ro = r * p.row_words;
        for (var b = lane; b < nblocks; b += tpr) {
            let v = load_block(ro, b);
            let c0 = b * 32u;
            let full = c0 + 32u <= p.cols;
            for (var t = 0u; t < nt; t++) {
                let xb = (t0 + t) * p.cols + c0;
                var s = vec4<f32>(0.0);
                if full {
                    for (var k = 0u; k < 8u; k++) {
                        s += v[k] * x4(xb + 4u * k);
                    }
                } else {
                    // Partial float block: v is zero past the row, x must not be read.
                    for (var c = 0u; c < p.cols - c0; c++) {
                        s.x += v[c / 4u][c % 4u] * x[xb + c];
                    }
                }
                acc[t] += s.x + s.y + s.z + s.w;
            }
        }
    }
    if tpr == 1u {
        if r < p.rows {
            for (var t = 0u; t < TT; t++) {
                if t < nt {
                    store(t0 + t, r, acc[t]);
                }
            }
        }
        return;
    }
    for (var t = 0u; t < TT; t++) {
        red[t * WG + tid] = acc[t];
    }
    workgroupBarrier();
    for (var s = tpr / 2u; s > 0u; s >>= 1u) {
        if lane < s {
            for (var t = 0u; t < TT; t++) {
                red[t * WG + tid] += red[t * WG + tid + s];
            }
        }
        workgroupBarrier();
    }
    if lane == 0u && r < p.rows {
        for (var t = 0u; t < nt; t++) {
            store(t0 + t, r, red[t * WG + tid]);
        }
    }
}
