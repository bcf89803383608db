//! The audit's limit against honest drift and against every way a node can lie, on
//! generated models whose weights and inputs differ from those `ait calibrate` uses.

use web_node::engine::gpu::GpuContext;
use web_node::trust::DELTA_LIMIT;

use relay::calibrate::{calibrate_generated, FAULTS};

/// A session's steps on the CPU backend and on wgpu (lavapipe here), each checked against an
/// audit's one prefill on either backend, never deviate by more than a tenth of the limit;
/// every session of every fault class (a skipped layer, Q4_1 run for Q8_0, another model,
/// noise of 1e-3, the input returned, a stale position) deviates by more than the limit on
/// its worst token, against either auditor.
#[test]
fn the_audit_limit_separates_honest_backends_from_every_fault() {
    let gpu = pollster::block_on(GpuContext::new()).expect("a wgpu adapter (lavapipe) is required");
    let mut honest_tokens = 0;
    for seed in [11, 12, 13] {
        let c = calibrate_generated(seed, 3, Some(&gpu), 6).unwrap();
        assert_eq!(c.backends.len(), 2, "{:?}", c.backends);
        let (worst, at) = c.worst_honest();
        assert!(worst <= DELTA_LIMIT / 10.0, "seed {seed}: honest {worst:e} at {at}");
        for fault in FAULTS {
            let mildest = c.mildest_session_of(fault);
            assert!(mildest > DELTA_LIMIT, "seed {seed}: {fault} deviates only {mildest:e}\n{c}");
        }
        for r in &c.ranges {
            // Four honest pairs (cpu and wgpu sessions against cpu and wgpu audits), each
            // token of each session checked.
            assert_eq!(r.honest.len(), 4);
            honest_tokens +=
                r.honest.iter().flat_map(|p| &p.sessions).map(|s| s.prefill.len() + s.decode.len()).sum::<usize>();
        }
    }
    assert_eq!(honest_tokens, 3 * 2 * 4 * 3 * 24);
}
