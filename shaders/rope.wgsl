// Rotate-half RoPE (Hugging Face layout), in place on q and k for tokens pos .. pos + n.
//
// In each head, dimension i < head_dim / 2 pairs with i + head_dim / 2:
//   (a, b) -> (a cos - b sin, a sin + b cos), with (cos, sin) of angle (pos + t) * inv_freq[i]
// taken from `cs`, which the host fills per step from the model's f64-computed inverse
// frequencies (so the GPU never evaluates sin/cos of large angles).
// q rows are t (the step's scratch); k rows are pos + t (written straight into the KV cache).
// One thread per (t, head, i) over n_heads + n_kv_heads heads: dispatch
// (ceil((n_heads + n_kv_heads) * head_dim / 2 / WG), n_tokens, 1); WG owned by
// engine/gpu/ops.rs.

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
    // First (cos, sin) pair of this layer's table in `cs` (Gemma 3's windowed layers have a
    // table of their own after the others').
    cs_base: u32,
}

@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> cs: array<vec2<f32>>;  // (n_tokens, head_dim / 2): (cos, sin)
@group(0) @binding(3) var<storage, read_write> q: array<f32>;   // (n_tokens, n_heads, head_dim)
@group(0) @binding(4) var<storage, read_write> k: array<f32>;   // (pos + n_tokens, n_kv_heads, head_dim)

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let t = gid.y;
    let half = p.head_dim / 2u;
    let head = gid.x / half;
    let i = gid.x % half;
    if t >= step.n_tokens || head >= p.n_heads + p.n_kv_heads {
        return;
    }
    let c = cs[p.cs_base + t * half + i];
    if head < p.n_heads {
        let o = (t * p.n_heads + head) * p.head_dim + i;
        let a = q[o];
        let b = q[o + half];
        q[o] = a * c.x - b * c.y;
        q[o + half] = a * c.y + b * c.x;
    } else {
        let o = ((step.pos + t) * p.n_kv_heads + head - p.n_heads) * p.head_dim + i;
        let a = k[o];
        let b = k[o + half];
        k[o] = a * c.x - b * c.y;
        k[o + half] = a * c.y + b * c.x;
    }
}
