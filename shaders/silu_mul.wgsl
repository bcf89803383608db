// Gated MLP activation, in place: gate[i] = act(gate[i]) * up[i], with act SiLU,
// g / (1 + e^-g), or with `gelu` set GELU's tanh approximation (Gemma),
// 0.5 g (1 + tanh(sqrt(2 / pi) (g + 0.044715 g^3))).
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
    gelu: u32,
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
    if p.gelu == 1u {
        gate[i] = 0.5 * g * (1.0 + tanh(0.7978846 * (g + 0.044715 * g * g * g))) * up[i];
    } else {
        gate[i] = g / (1.0 + exp(-g)) * up[i];
    }
}
