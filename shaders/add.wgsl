// Row-wise add: y[row, i] += b[row_b, i], where row_b = t when `per_token` is 1 (residual
// add of two [n_tokens, dim] tensors) and 0 otherwise (a bias broadcast over tokens).
// y's rows start at pos when `y_at_pos` is 1 (a bias added straight into the KV cache).
//
// One thread per element: dispatch (ceil(dim / WG), n_tokens, 1); WG owned by engine/gpu/ops.rs.

override WG: u32 = 64u;

struct Step {
    n_tokens: u32,
    pos: u32,
    _pad0: u32,
    _pad1: u32,
}

struct Params {
    dim: u32,
    per_token: u32,
    y_at_pos: u32,
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> b: array<f32>;          // (n_tokens, dim) or (dim)
@group(0) @binding(3) var<storage, read_write> y: array<f32>;    // (.., dim)

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let t = gid.y;
    if gid.x >= p.dim || t >= step.n_tokens {
        return;
    }
    let yi = (t + step.pos * p.y_at_pos) * p.dim + gid.x;
    y[yi] = y[yi] + b[t * p.per_token * p.dim + gid.x];
}
