//! The tests that must run with nothing else beside them, one at a time: step timings and
//! time to first token under attack (`attacks`, `swarm`), Chromium's WebGPU on the CPU
//! (`browser`), payments counted to the unit (`payment`), the API through the `openai`
//! package (`openai_api`). Each takes [`serial`] for its whole run. Cargo runs this binary
//! apart from `suite` (one test binary after another), so nothing of `suite` runs beside them.
//! Run one subject with `cargo test --release -p ait-tests --test serial -- swarm::`.

use std::sync::{Mutex, MutexGuard};

mod attacks;
mod browser;
mod openai_api;
mod payment;
mod swarm;

static SERIAL: Mutex<()> = Mutex::new(());

/// Holds every other test of this binary off while the guard lives (a test that panicked
/// while holding it leaves it usable).
fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}
