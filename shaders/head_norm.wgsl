// Per-head RMSNorm of queries and keys, in place (Qwen3's q_norm / k_norm, before RoPE):
// each head_dim-long head row r becomes r / sqrt(mean(r^2) + eps) * weight, with weight
// `w[0 .. head_dim]` for query heads and `w[head_dim .. 2 head_dim]` for key heads.
//
// q rows are t (the step's scratch); k rows are pos + t, as in rope.wgsl. One workgroup per
// (head, token) over n_heads + n_kv_heads heads: dispatch (n_heads + n_kv_heads, n_tokens, 1).
// WG (threads per workgroup, a power of two) is owned by engine/gpu/ops.rs.

override WG: u32 = 64u;

struct Step {
    n_tokens: u32,
    pos: u32,
    _pad0: u32,
    _pad1: u32,
}

struct Params {
    n_heads: u32,
    n_kv_heads: u32,
    head_dim: u32,
    eps: f32,
}

@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> w: array<f32>;        // (2, head_dim)
@group(0) @binding(3) var<storage, read_write> q: array<f32>;  // (n_tokens, n_heads, head_dim)
@group(0) @binding(4) var<storage, read_write> k: array<f32>;  // (pos + n_tokens, n_kv_heads, head_dim)

var<workgroup> red: array<f32, WG>;

fn load(is_q: bool, i: u32) -> f32 {
    if is_q {
        return q[i];
    }
    return k[i];
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let t = wid.y;
    let head = wid.x;
    if t >= step.n_tokens || head >= p.n_heads + p.n_kv_heads {
        return;
    }
    let is_q = head < p.n_heads;
    var base: u32;
    var wo: u32;
    if is_q {
        base = (t * p.n_heads + head) * p.head_dim;
        wo = 0u;
    } else {
        base = ((step.pos + t) * p.n_kv_heads + head - p.n_heads) * p.head_dim;
        wo = p.head_dim;
    }
    var ss = 0.0;
    for (var i = tid; i < p.head_dim; i += WG) {
        let v = load(is_q, base + i);
        ss += v * v;
    }
    red[tid] = ss;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if tid < s {
            red[tid] += red[tid + s];
        }
        workgroupBarrier();
    }
    let scale = 1.0 / sqrt(red[0] / f32(p.head_dim) + p.eps);
    for (var i = tid; i < p.head_dim; i += WG) {
        if is_q {
            q[base + i] = q[base + i] * scale * w[wo + i];
        } else {
            k[base + i] = k[base + i] * scale * w[wo + i];
        }
    }
}
