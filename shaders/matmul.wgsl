// Matrix product y = W x over weights kept in their stored format, f32 accumulation.
//
// Entry points:
// - `matvec`: one token (decode). A workgroup computes ROWS rows; WG / ROWS threads share a
//   row, each walking every (WG / ROWS)-th 32-element block, then a workgroup-memory
//   reduction. Dispatch: (ceil(rows / ROWS), 1, 1).
// - `matmat`: n tokens (prefill). Same row split; each thread dequantizes a weight block once
//   and applies it to TT tokens. Dispatch: (ceil(rows / ROWS), ceil(n / TT), 1).
// Both sum a block as `acc_step` over its raw (unscaled) elements, then scale in `acc_end`:
// a token's result is the same bits in either kernel, whatever other tokens share its step.
//
// Weight layout (`w`, u32 words, repacked at upload, see engine/gpu/weights.rs); row r starts
// at word r * row_words:
// - DTYPE 0 F32:  one word per element (f32 bits).
// - DTYPE 1 F16:  two elements per word (element 2i in the low half), unpack2x16float.
// - DTYPE 2 BF16: two elements per word (element 2i in the low half); value = bits << 16.
// - DTYPE 3 Q4_0: 5 words per 32-element block: [d (f16, low half), qs[0..4], .., qs[12..16]].
// - DTYPE 4 Q4_1: 5 words per block: [d | m << 16 (f16 pair), qs as in Q4_0].
// - DTYPE 5 Q8_0: 9 words per block: [d (f16, low half), qs[0..4] (i8), .., qs[28..32]].
// - DTYPE 6 Q5_0: 6 words per block: [d (f16, low half), qh, qs[0..4], .., qs[12..16]].
// - DTYPE 7 Q5_1: 6 words per block: [d | m << 16, qh, qs as in Q5_0].
// - DTYPE 8 IQ4_NL: as Q4_0; a nibble indexes IQ4_VALUES.
// - DTYPE 9..14 Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_XS: a 256-element super-block's bytes as
//   stored, zero-padded to whole words (21, 28, 36, 44, 53, 34 words); block b of a row is
//   32-element chunk b % 8 of super-block b / 8. Byte layouts: web-node/src/model/quant.rs.
// Nibbles: byte j of qs holds element j (low nibble) and element j + 16 (high nibble).
// Q2_K, Q3_K and Q6_K scale every 16 elements: their raw4 returns dequantized values and their
// block scale is (1, 0).
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

// Bits s .. s + width (mask = 2^width - 1) of each byte of q, in byte order.
fn bits4(q: u32, s: u32, mask: u32) -> vec4<u32> {
    return (vec4<u32>(q) >> (vec4<u32>(0u, 8u, 16u, 24u) + s)) & vec4<u32>(mask);
}

// Byte `off` of the block starting at word `base`.
fn byte_at(base: u32, off: u32) -> u32 {
    return (w[base + off / 4u] >> (8u * (off % 4u))) & 0xFFu;
}

var<private> IQ4_VALUES: array<f32, 16> = array<f32, 16>(
    -127.0, -104.0, -83.0, -65.0, -49.0, -35.0, -22.0, -10.0, 1.0, 13.0, 25.0, 38.0, 53.0, 69.0, 89.0, 113.0,
);

fn iq4(q: vec4<u32>) -> vec4<f32> {
    return vec4<f32>(IQ4_VALUES[q.x], IQ4_VALUES[q.y], IQ4_VALUES[q.z], IQ4_VALUES[q.w]);
}

// Words per super-block of the K-quant types (DTYPE 9..14).
fn kblock_words() -> u32 {
    switch DTYPE {
        case 9u: { return 21u; }
        case 10u: { return 28u; }
        case 11u: { return 36u; }
        case 12u: { return 44u; }
        case 13u: { return 53u; }
        default: { return 34u; }
    }
}

// The 5-bit values' top bits for elements 4j .. 4j + 4 of a Q5_0/Q5_1 block, from qh.
fn q5_high(qh: u32, j: u32) -> vec4<u32> {
    return ((vec4<u32>(qh) >> (vec4<u32>(0u, 1u, 2u, 3u) + 4u * j)) & vec4<u32>(1u)) << vec4<u32>(4u);
}

// Q4_K/Q5_K: the 6-bit (scale, min) of chunk c from the 12 scale bytes at byte 4.
fn k4_scale_min(base: u32, c: u32) -> vec2<f32> {
    if c < 4u {
        return vec2<f32>(f32(byte_at(base, 4u + c) & 63u), f32(byte_at(base, 8u + c) & 63u));
    }
    let sc = (byte_at(base, 8u + c) & 0xFu) | ((byte_at(base, c) >> 6u) << 4u);
    let m = (byte_at(base, 8u + c) >> 4u) | ((byte_at(base, 4u + c) >> 6u) << 4u);
    return vec2<f32>(f32(sc), f32(m));
}

// Elements 4j .. 4j + 4 of chunk c of the K-quant super-block at word base: raw values for
// Q4_K, Q5_K and IQ4_XS (scaled by `block_scale`), dequantized values for the others.
fn kraw4(base: u32, c: u32, j: u32) -> vec4<f32> {
    let half = select(0u, 1u, j >= 4u);
    if DTYPE == 9u {
        // Q2_K: scales[16], qs[64], d, dmin.
        let q = bits4(w[base + 4u + 8u * (c / 4u) + j], 2u * (c % 4u), 3u);
        let sc = byte_at(base, 2u * c + half);
        let dm = unpack2x16float(w[base + 20u]);
        return vec4<f32>(q) * (dm.x * f32(sc & 0xFu)) - vec4<f32>(dm.y * f32(sc >> 4u));
    }
    if DTYPE == 10u {
        // Q3_K: hmask[32], qs[64], scales[12], d.
        let lo = bits4(w[base + 8u + 8u * (c / 4u) + j], 2u * (c % 4u), 3u);
        let hi = bits4(w[base + j], c, 1u);
        let q = vec4<i32>(lo | (hi << vec4<u32>(2u))) - vec4<i32>(4);
        let s = 2u * c + half;
        let sl = (byte_at(base, 96u + s % 8u) >> (4u * (s / 8u))) & 0xFu;
        let sh = (byte_at(base, 104u + s % 4u) >> (2u * (s / 4u))) & 3u;
        let d = unpack2x16float(w[base + 27u]).x;
        return vec4<f32>(q) * (d * f32(i32(sl | (sh << 4u)) - 32));
    }
    if DTYPE == 11u {
        // Q4_K: d, dmin, scales[12], qs[128].
        return vec4<f32>(bits4(w[base + 4u + 8u * (c / 2u) + j], 4u * (c % 2u), 0xFu));
    }
    if DTYPE == 12u {
        // Q5_K: d, dmin, scales[12], qh[32], qs[128].
        let lo = bits4(w[base + 12u + 8u * (c / 2u) + j], 4u * (c % 2u), 0xFu);
        return vec4<f32>(lo | (bits4(w[base + 4u + j], c, 1u) << vec4<u32>(4u)));
    }
    if DTYPE == 13u {
        // Q6_K: ql[128], qh[64], scales[16] (i8), d.
        let h = c / 4u;
        let k = c % 4u;
        let lo = bits4(w[base + 16u * h + 8u * (k % 2u) + j], 4u * (k / 2u), 0xFu);
        let hi = bits4(w[base + 32u + 8u * h + j], 2u * k, 3u);
        let q = vec4<i32>(lo | (hi << vec4<u32>(4u))) - vec4<i32>(32);
        let sc = (i32(byte_at(base, 192u + 8u * h + 2u * k + half)) << 24u) >> 24u;
        let d = unpack2x16float(w[base + 52u]).x;
        return vec4<f32>(q) * (d * f32(sc));
    }
    // IQ4_XS: d, scales_h, scales_l[4], qs[128].
    let q = w[base + 2u + 4u * c + (j & 3u)];
    return iq4(select(bits4(q, 4u, 0xFu), bits4(q, 0u, 0xFu), j < 4u));
}

// (scale, min) of chunk c of the K-quant super-block at word base (see `kraw4`).
fn kscale(base: u32, c: u32) -> vec2<f32> {
    if DTYPE == 11u || DTYPE == 12u {
        let dm = unpack2x16float(w[base]);
        let sm = k4_scale_min(base, c);
        return vec2<f32>(dm.x * sm.x, -(dm.y * sm.y));
    }
    if DTYPE == 14u {
        let lo = (byte_at(base, 4u + c / 2u) >> (4u * (c % 2u))) & 0xFu;
        let hi = (w[base] >> (16u + 2u * c)) & 3u;
        return vec2<f32>(unpack2x16float(w[base]).x * f32(i32(lo | (hi << 4u)) - 32), 0.0);
    }
    return vec2<f32>(1.0, 0.0);
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

// Elements c .. c + 4 (c a multiple of 4) of a float-typed row at word ro, zero from
// column cols on.
fn float4_at(ro: u32, c: u32) -> vec4<f32> {
    if c + 4u <= p.cols {
        if DTYPE == 0u {
            return bitcast<vec4<f32>>(vec4<u32>(w[ro + c], w[ro + c + 1u], w[ro + c + 2u], w[ro + c + 3u]));
        }
        let lo = w[ro + c / 2u];
        let hi = w[ro + c / 2u + 1u];
        if DTYPE == 1u {
            return vec4<f32>(unpack2x16float(lo), unpack2x16float(hi));
        }
        // BF16
        return bitcast<vec4<f32>>(vec4<u32>(lo << 16u, lo & 0xFFFF0000u, hi << 16u, hi & 0xFFFF0000u));
    }
    var e = vec4<f32>(0.0);
    for (var i = 0u; i < 4u; i++) {
        if c + i < p.cols {
            e[i] = float_at(ro, c + i);
        }
    }
    return e;
}

// A block's elements before scaling, as exact f32: elements 4j .. 4j + 4 (j < 8) of block
// b of the row at word ro. Q4_0: nibble - 8; Q4_1: nibble; Q8_0: the i8; Q5_0: q - 16; Q5_1:
// q; IQ4_NL: the table value; K-quants: see `kraw4`; floats: the value.
fn raw4(ro: u32, b: u32, j: u32) -> vec4<f32> {
    if DTYPE >= 9u {
        return kraw4(ro + (b / 8u) * kblock_words(), b % 8u, j);
    }
    if DTYPE == 6u || DTYPE == 7u {
        let bo = ro + b * 6u;
        let q = w[bo + 2u + (j & 3u)];
        let n = select(bits4(q, 4u, 0xFu), bits4(q, 0u, 0xFu), j < 4u) | q5_high(w[bo + 1u], j);
        return select(vec4<f32>(n), vec4<f32>(n) - 16.0, DTYPE == 6u);
    }
    if DTYPE == 8u {
        let q = w[ro + b * 5u + 1u + (j & 3u)];
        return iq4(select(bits4(q, 4u, 0xFu), bits4(q, 0u, 0xFu), j < 4u));
    }
    if DTYPE == 3u || DTYPE == 4u {
        let q = w[ro + b * 5u + 1u + (j & 3u)];
        let n = select(nib_hi(q), nib_lo(q), j < 4u);
        return select(n, n - 8.0, DTYPE == 3u);
    }
    if DTYPE == 5u {
        return bytes_i8(w[ro + b * 9u + 1u + j]);
    }
    return float4_at(ro, b * 32u + 4u * j);
}

// The block's (scale, min): element = scale * raw + min. Floats: (1, 0).
fn block_scale(ro: u32, b: u32) -> vec2<f32> {
    if DTYPE >= 9u {
        return kscale(ro + (b / 8u) * kblock_words(), b % 8u);
    }
    if DTYPE == 6u || DTYPE == 7u {
        let dm = unpack2x16float(w[ro + b * 6u]);
        return select(vec2<f32>(dm.x, 0.0), dm, DTYPE == 7u);
    }
    if DTYPE == 8u {
        return vec2<f32>(unpack2x16float(w[ro + b * 5u]).x, 0.0);
    }
    if DTYPE == 3u || DTYPE == 5u {
        return vec2<f32>(unpack2x16float(w[ro + b * select(5u, 9u, DTYPE == 5u)]).x, 0.0);
    }
    if DTYPE == 4u {
        return unpack2x16float(w[ro + b * 5u]);
    }
    return vec2<f32>(1.0, 0.0);
}

// x[i .. i + 4] for columns c .. c + 4, zero from column cols on (the partial last block of
// a float row).
fn x4_upto(i: u32, c: u32) -> vec4<f32> {
    var e = vec4<f32>(0.0);
    for (var j = 0u; j < 4u; j++) {
        if c + j < p.cols {
            e[j] = x[i + j];
        }
    }
    return e;
}

// A block's running dot product: s = sum of raw * x, sx = sum of x (for Q4_1's min).
struct Acc {
    s: vec4<f32>,
    sx: vec4<f32>,
}

// Step k (< 4) of a block: raw elements ql (4k ..) and qh (16 + 4k ..) times xl and xh.
// `matvec` and `matmat` both go through `acc_step` and `acc_end` in the same order, so a
// token's result is the same bits in either kernel, whatever else shares its step.
fn acc_step(a: Acc, ql: vec4<f32>, qh: vec4<f32>, xl: vec4<f32>, xh: vec4<f32>) -> Acc {
    return Acc(a.s + (ql * xl + qh * xh), a.sx + (xl + xh));
}

fn acc_end(a: Acc, dm: vec2<f32>) -> f32 {
    let s = a.s.x + a.s.y + a.s.z + a.s.w;
    // Types with a minimum: Q4_1, Q5_1, Q4_K, Q5_K.
    if DTYPE == 4u || DTYPE == 7u || DTYPE == 11u || DTYPE == 12u {
        return dm.x * s + dm.y * (a.sx.x + a.sx.y + a.sx.z + a.sx.w);
    }
    return dm.x * s;
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
            let c0 = b * 32u;
            // Quantized rows are whole blocks; a float row's last block may be partial.
            let full = DTYPE >= 3u || c0 + 32u <= p.cols;
            var a = Acc(vec4<f32>(0.0), vec4<f32>(0.0));
            if full {
                for (var k = 0u; k < 4u; k++) {
                    let cl = c0 + 4u * k;
                    a = acc_step(a, raw4(ro, b, k), raw4(ro, b, k + 4u), x4(cl), x4(cl + 16u));
                }
            } else {
                for (var k = 0u; k < 4u; k++) {
                    let cl = c0 + 4u * k;
                    a = acc_step(a, raw4(ro, b, k), raw4(ro, b, k + 4u), x4_upto(cl, cl), x4_upto(cl + 16u, cl + 16u));
                }
            }
            acc += acc_end(a, block_scale(ro, b));
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
            // The block's raw elements in eight values (no private array: CPU adapters keep
            // them in registers), applied to each token as `matvec` applies them to its one.
            let r0 = raw4(ro, b, 0u);
            let r1 = raw4(ro, b, 1u);
            let r2 = raw4(ro, b, 2u);
            let r3 = raw4(ro, b, 3u);
            let r4 = raw4(ro, b, 4u);
            let r5 = raw4(ro, b, 5u);
            let r6 = raw4(ro, b, 6u);
            let r7 = raw4(ro, b, 7u);
            let dm = block_scale(ro, b);
            let c0 = b * 32u;
            // Quantized rows are whole blocks; a float row's last block may be partial.
            let full = DTYPE >= 3u || c0 + 32u <= p.cols;
            // A constant trip count, so the compiler can unroll it and keep acc in registers.
            for (var t = 0u; t < TT; t++) {
                if t >= nt {
                    break;
                }
                let xb = (t0 + t) * p.cols + c0;
                var a = Acc(vec4<f32>(0.0), vec4<f32>(0.0));
                if full {
                    a = acc_step(a, r0, r4, x4(xb), x4(xb + 16u));
                    a = acc_step(a, r1, r5, x4(xb + 4u), x4(xb + 20u));
                    a = acc_step(a, r2, r6, x4(xb + 8u), x4(xb + 24u));
                    a = acc_step(a, r3, r7, x4(xb + 12u), x4(xb + 28u));
                } else {
                    a = acc_step(a, r0, r4, x4_upto(xb, c0), x4_upto(xb + 16u, c0 + 16u));
                    a = acc_step(a, r1, r5, x4_upto(xb + 4u, c0 + 4u), x4_upto(xb + 20u, c0 + 20u));
                    a = acc_step(a, r2, r6, x4_upto(xb + 8u, c0 + 8u), x4_upto(xb + 24u, c0 + 24u));
                    a = acc_step(a, r3, r7, x4_upto(xb + 12u, c0 + 12u), x4_upto(xb + 28u, c0 + 28u));
                }
                acc[t] += acc_end(a, dm);
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
