// RMSNorm of each token: y[t, i] = x[t, i] / sqrt(mean(x[t, :]^2) + eps) * weight[i].
//
// One workgroup per token: dispatch (1, n_tokens, 1). WG (threads per workgroup, a power of
// two) is owned by engine/gpu/ops.rs.

override WG: u32 = 64u;

struct Step {
    n_tokens: u32,
    pos: u32,
    _pad0: u32,
    _pad1: u32,
}

struct Params {
    dim: u32,
    eps: f32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> x: array<f32>;        // (n_tokens, dim)
@group(0) @binding(3) var<storage, read> weight: array<f32>;   // (dim)
@group(0) @binding(4) var<storage, read_write> y: array<f32>;  // (n_tokens, dim)

var<workgroup> red: array<f32, WG>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let t = wid.y;
    if t >= step.n_tokens {
        return;
    }
    let base = t * p.dim;
    var ss = 0.0;
    for (var i = tid; i < p.dim; i += WG) {
        let v = x[base + i];
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
    let scale = 1.0 / sqrt(red[0] / f32(p.dim) + p.eps);
    for (var i = tid; i < p.dim; i += WG) {
        y[base + i] = x[base + i] * scale * weight[i];
    }
}
