//! The KV cache of sliding-window layers: only the rows a window can still reach.
//!
//! A layer with a window of `w` positions attends, from position `p`, to positions
//! `p + 1 - w ..= p`. Its keys and values older than that are never read again, so its cache
//! keeps [`window_rows`] rows (the `w - 1` positions before a step plus the step's own, at
//! most [`WINDOW_STEP`] tokens) instead of the whole session. Row `r` of such a buffer holds
//! position `base + r`; before a step that would run past the end, [`make_room`] moves the
//! last `w - 1` rows to the front and advances `base`. Attention then runs on positions
//! relative to `base`, which changes no arithmetic (a window's first key is relative to the
//! query too), so the results are the bits of a full-length cache. Global layers keep every
//! row, as before.

use std::ops::Range;

use crate::model::LlamaConfig;

/// The most tokens one step adds to a windowed layer's buffer; backends split longer steps
/// (their results do not depend on how a prefill is chunked). The GPU backend's
/// [`MAX_CHUNK`](super::gpu::MAX_CHUNK) already is this size.
pub const WINDOW_STEP: usize = 256;

/// Rows of layer `layer`'s cache for a session of up to `max_len` tokens: `max_len` for a
/// global layer, or for a window long enough that the buffer would not be shorter.
pub fn window_rows(config: &LlamaConfig, layer: usize, max_len: usize) -> usize {
    match config.layer_window(layer) {
        Some(w) => max_len.min(w - 1 + WINDOW_STEP),
        None => max_len,
    }
}

/// KV-cache bytes (f32 keys and values) of a session of `max_len` tokens over `layers`.
pub fn kv_bytes(config: &LlamaConfig, layers: Range<usize>, max_len: usize) -> u64 {
    let row = (config.kv_dim() * 2 * 4) as u64;
    layers.map(|l| window_rows(config, l, max_len) as u64 * row).sum()
}

/// The sliding buffers of one session's cache: every windowed layer of a range shares the
/// model's one window, so they share one `base`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// The window, in positions.
    pub window: usize,
    /// Rows of each windowed layer's buffer ([`window_rows`]).
    pub rows: usize,
    /// Position held by row 0.
    pub base: usize,
}

impl Window {
    /// The sliding buffers of `layers` for a session of `max_len` tokens; `None` when no
    /// layer's buffer is shorter than the session (then every row stays where it is).
    pub fn of(config: &LlamaConfig, layers: Range<usize>, max_len: usize) -> Option<Window> {
        let layer = layers.clone().find(|&l| window_rows(config, l, max_len) < max_len)?;
        let window = config.layer_window(layer)?;
        Some(Window { window, rows: window_rows(config, layer, max_len), base: 0 })
    }

    /// Before a step of `n <= WINDOW_STEP` tokens at position `pos`: when the step would run
    /// past the buffers' end, the rows to move to the front (the last `window - 1` positions),
    /// with `base` advanced to match; `None` when the step fits as it is.
    pub fn make_room(&mut self, pos: usize, n: usize) -> Option<Range<usize>> {
        debug_assert!(n <= WINDOW_STEP && pos >= self.base);
        if pos - self.base + n <= self.rows {
            return None;
        }
        // Here pos - base > window - 1, so the new base is past the old one.
        let base = pos + 1 - self.window;
        let keep = base - self.base..pos - self.base;
        self.base = base;
        Some(keep)
    }

    /// Whether positions `rows` sit at rows of the same number, as in a full-length cache
    /// (nothing has slid yet and they fit): only then can a prefix be copied in or out.
    pub fn unmoved(&self, rows: &Range<usize>) -> bool {
        self.base == 0 && rows.end <= self.rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The buffer slides so that every step finds the `window - 1` positions before it, and
    /// never holds more than `window - 1 + WINDOW_STEP` rows.
    #[test]
    fn make_room_keeps_the_last_window() {
        let mut w = Window { window: 4, rows: 3 + WINDOW_STEP, base: 0 };
        assert_eq!(w.make_room(0, WINDOW_STEP), None);
        assert_eq!(w.make_room(WINDOW_STEP, 3), None);
        // Position 259: rows 0..259 hold positions 0..259; one more token does not fit.
        assert_eq!(w.make_room(WINDOW_STEP + 3, 1), Some(WINDOW_STEP..WINDOW_STEP + 3));
        assert_eq!(w.base, WINDOW_STEP);
        assert_eq!(w.make_room(WINDOW_STEP + 3, WINDOW_STEP), None);
        assert_eq!(w.make_room(2 * WINDOW_STEP + 3, 2), Some(WINDOW_STEP..WINDOW_STEP + 3));
        assert_eq!(w.base, 2 * WINDOW_STEP);
    }
}
