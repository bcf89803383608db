// SiLU-gated MLP activation, in place: gate[i] = silu(gate[i]) * up[i], silu(g) = g / (1 + e^-g).
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
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read_write> gate: array<f32>;  // (n_tokens, dim)
@group(0) @binding(3) var<storage, read> up: array<f32>;          // (n_tokens, dim)

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    if gid.x >= p.dim || gid.y >= step.n_tokens {
        return;
    }
    let i = gid.y * p.dim + gid.x;
    let g = gate[i];
    gate[i] = g / (1.0 + exp(-g)) * up[i];
}
