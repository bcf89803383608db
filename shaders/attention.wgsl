// Causal grouped-query attention over the KV cache, one pass with an online softmax.
//
// Token t of the step sits at position pos + t and attends to cache rows 0 ..= pos + t (its
// own key and value already written), or with a sliding window of w positions (w > 0) to the
// last w of them; its query and output are row base + t of q and out
// (base is 0 except for one session's share of a batch). Query head h reads kv head h / (n_heads / n_kv_heads).
// One workgroup per (head, token): dispatch (n_heads, n_tokens, 1). Keys are taken WG at a
// time: thread j scores key j of the tile, then every thread updates the running max, sum and
// its head_dim / WG output dimensions. head_dim <= MAX_HD; WG and MAX_HD are owned by
// engine/gpu/ops.rs (each thread keeps MAX_HD / WG outputs).

override WG: u32 = 64u;
const MAX_HD: u32 = 256u;
const PER_THREAD: u32 = 4u; // MAX_HD / WG for the smallest allowed WG (64)

struct Step {
    n_tokens: u32,
    pos: u32,
    // Row of token 0 in q and out (a session's share of a batch).
    base: u32,
    _pad1: u32,
}

struct Params {
    n_heads: u32,
    n_kv_heads: u32,
    head_dim: u32,
    scale: f32,
    // Sliding window in positions; 0: global attention.
    window: u32,
    // Soft-cap of the scaled scores, c tanh(s / c) (Gemma 2); 0: none.
    softcap: f32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> q: array<f32>;          // (base + n_tokens, n_heads, head_dim)
@group(0) @binding(3) var<storage, read> kc: array<f32>;         // (len, n_kv_heads, head_dim)
@group(0) @binding(4) var<storage, read> vc: array<f32>;         // (len, n_kv_heads, head_dim)
@group(0) @binding(5) var<storage, read_write> out: array<f32>;  // (base + n_tokens, n_heads, head_dim)

var<workgroup> qs: array<f32, MAX_HD>;
var<workgroup> ps: array<f32, WG>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let h = wid.x;
    let t = wid.y;
    if t >= step.n_tokens {
        return;
    }
    let hd = p.head_dim;
    let kv_dim = p.n_kv_heads * hd;
    let kvo = (h / (p.n_heads / p.n_kv_heads)) * hd;
    let qo = ((step.base + t) * p.n_heads + h) * hd;
    for (var d = tid; d < hd; d += WG) {
        qs[d] = q[qo + d];
    }
    workgroupBarrier();

    let len = step.pos + t + 1u;
    let first = select(0u, len - p.window, p.window != 0u && len > p.window);
    var m = -1e30;
    var l = 0.0;
    var o: array<f32, PER_THREAD>;
    for (var start = first; start < len; start += WG) {
        let j = start + tid;
        var s = -1e30;
        if j < len {
            let ko = j * kv_dim + kvo;
            var dot = 0.0;
            for (var d = 0u; d < hd; d++) {
                dot += qs[d] * kc[ko + d];
            }
            s = dot * p.scale;
            if p.softcap > 0.0 {
                s = tanh(s / p.softcap) * p.softcap;
            }
        }
        ps[tid] = s;
        workgroupBarrier();
        let cnt = min(WG, len - start);
        var mc = m;
        for (var i = 0u; i < cnt; i++) {
            mc = max(mc, ps[i]);
        }
        workgroupBarrier();
        ps[tid] = select(0.0, exp(s - mc), j < len);
        workgroupBarrier();
        let alpha = exp(m - mc);
        var sum = 0.0;
        for (var i = 0u; i < cnt; i++) {
            sum += ps[i];
        }
        l = l * alpha + sum;
        for (var e = 0u; e < PER_THREAD; e++) {
            let d = tid + e * WG;
            if d < hd {
                var acc = o[e] * alpha;
                for (var i = 0u; i < cnt; i++) {
                    acc += ps[i] * vc[(start + i) * kv_dim + kvo + d];
                }
                o[e] = acc;
            }
        }
        m = mc;
        workgroupBarrier();
    }
    for (var e = 0u; e < PER_THREAD; e++) {
        let d = tid + e * WG;
        if d < hd {
            out[qo + d] = o[e] / l;
        }
    }
}
