//! Sessions over one backend: open, step (prefill or decode), close.

use std::collections::HashMap;
use std::ops::Range;
use std::time::Duration;

use web_time::Instant;

use super::prefix::{PrefixCache, Reuse, Track};
use super::{Backend, BatchItem, EngineError};

/// Identifies one session of a [`BlockExecutor`]; it comes back in every step's result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Limits of a [`BlockExecutor`].
#[derive(Clone, Debug)]
pub struct ExecutorConfig {
    /// Sessions open at once. Default 16.
    pub max_sessions: usize,
    /// Tokens one session may hold. Default: the model's context length.
    pub max_session_len: Option<usize>,
    /// A session untouched for this long is closed by the next open or step. Default 10 min.
    pub idle_timeout: Duration,
    /// Tokens of recent sessions' prompts kept for reuse by sessions whose prompts start the
    /// same way (their keys and values on the device, plus input and output rows);
    /// 0 turns reuse off. Default [`DEFAULT_PREFIX_CACHE_TOKENS`]. This memory comes on top of
    /// the sessions' own caches.
    pub prefix_cache_tokens: usize,
}

/// Default of [`ExecutorConfig::prefix_cache_tokens`]: a few chat prompts' worth.
pub const DEFAULT_PREFIX_CACHE_TOKENS: usize = 512;

impl Default for ExecutorConfig {
    fn default() -> Self {
        Self {
            max_sessions: 16,
            max_session_len: None,
            idle_timeout: Duration::from_secs(600),
            prefix_cache_tokens: DEFAULT_PREFIX_CACHE_TOKENS,
        }
    }
}

impl ExecutorConfig {
    /// The defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the number of sessions open at once.
    pub fn with_max_sessions(mut self, n: usize) -> Self {
        self.max_sessions = n;
        self
    }

    /// Sets how long an idle session lives.
    pub fn with_idle_timeout(mut self, t: Duration) -> Self {
        self.idle_timeout = t;
        self
    }

    /// Sets how many tokens of prompt prefixes are kept for reuse (0: none).
    pub fn with_prefix_cache_tokens(mut self, n: usize) -> Self {
        self.prefix_cache_tokens = n;
        self
    }

    /// Sets the longest session, in tokens.
    pub fn with_max_session_len(mut self, n: usize) -> Self {
        self.max_session_len = Some(n);
        self
    }
}

/// One session's step in a [`BlockExecutor::step_batch`].
#[derive(Clone, Copy, Debug)]
pub struct BatchStep<'a> {
    /// The session.
    pub id: SessionId,
    /// The position the step continues at, when the caller names one: it must equal the
    /// session's length.
    pub pos: Option<usize>,
    /// `[n_tokens, hidden]` input hidden states.
    pub hidden: &'a [f32],
    /// Tokens in `hidden`.
    pub n_tokens: usize,
}

struct Session<C> {
    cache: C,
    pos: usize,
    capacity: usize,
    last_used: Instant,
    /// Its rows while it prefills from position 0, for prompt prefix reuse.
    track: Option<Track>,
}

/// A step of a batch that can run: its index among the steps, its session (out of the map
/// while it runs) and the rows of a kept prompt it reuses.
type Taken<C> = (usize, SessionId, Session<C>, Option<Reuse>);

/// Holds the weights of layers `[a, b)` on one backend and runs sessions on them.
pub struct BlockExecutor<B: Backend> {
    backend: B,
    config: ExecutorConfig,
    sessions: HashMap<SessionId, Session<B::Cache>>,
    next_id: u64,
    prefixes: PrefixCache<B::Cache>,
}

impl<B: Backend> BlockExecutor<B> {
    /// An executor over `backend` with the given limits.
    pub fn new(backend: B, config: ExecutorConfig) -> Self {
        let prefixes = PrefixCache::new(config.prefix_cache_tokens);
        Self { backend, config, sessions: HashMap::new(), next_id: 1, prefixes }
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The backend, dropping every session.
    pub fn into_backend(self) -> B {
        self.backend
    }

    /// Model layers this executor runs.
    pub fn layers(&self) -> Range<usize> {
        self.backend.layers()
    }

    /// Steps that reused rows of a kept prompt, and the tokens they reused in all (see
    /// [`ExecutorConfig::prefix_cache_tokens`]).
    pub fn prefix_reuse(&self) -> (u64, u64) {
        (self.prefixes.hits, self.prefixes.reused)
    }

    /// Sessions open now.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Closes every session idle for longer than the configured timeout; returns how many.
    pub fn close_idle(&mut self) -> usize {
        let before = self.sessions.len();
        let timeout = self.config.idle_timeout;
        self.sessions.retain(|_, s| s.last_used.elapsed() <= timeout);
        before - self.sessions.len()
    }

    /// Opens a session that may hold up to `max_len` tokens.
    pub fn open_session(&mut self, max_len: usize) -> Result<SessionId, EngineError> {
        self.close_idle();
        if self.sessions.len() >= self.config.max_sessions {
            return Err(EngineError::TooManySessions(self.config.max_sessions));
        }
        let limit = self.config.max_session_len.unwrap_or(self.backend.config().max_seq_len);
        if max_len == 0 || max_len > limit {
            return Err(EngineError::SessionTooLong { asked: max_len, limit });
        }
        let cache = self.backend.new_cache(max_len)?;
        let id = SessionId(self.next_id);
        self.next_id += 1;
        let track = self.prefixes.track();
        self.sessions.insert(id, Session { cache, pos: 0, capacity: max_len, last_used: Instant::now(), track });
        Ok(id)
    }

    /// Tokens already processed by a session.
    pub fn session_len(&self, id: SessionId) -> Result<usize, EngineError> {
        self.sessions.get(&id).map(|s| s.pos).ok_or(EngineError::UnknownSession(id.0))
    }

    /// Runs `n_tokens` hidden states (`[n_tokens, hidden]`) through the layers: a prefill when
    /// `n_tokens > 1`, a decode step when it is 1. Returns the output hidden states.
    pub async fn step(&mut self, id: SessionId, hidden: &[f32], n_tokens: usize) -> Result<Vec<f32>, EngineError> {
        let mut r = self.step_batch(&[BatchStep { id, pos: None, hidden, n_tokens }]).await;
        r.pop().expect("one result per step")
    }

    /// Like [`BlockExecutor::step`], for a step that names its position: it must equal the
    /// session's length (what a remote client sends, see the inference protocol).
    pub async fn step_at(
        &mut self,
        id: SessionId,
        pos: usize,
        hidden: &[f32],
        n_tokens: usize,
    ) -> Result<Vec<f32>, EngineError> {
        let mut r = self.step_batch(&[BatchStep { id, pos: Some(pos), hidden, n_tokens }]).await;
        r.pop().expect("one result per step")
    }

    /// Runs the steps of several sessions as one batch ([`Backend::forward_batch`]); returns
    /// each step's result, in order. A step that cannot run (unknown session, wrong position
    /// or shape, no room left; a second step of a session already in the batch is at the
    /// wrong position) fails alone and the others run. If the batch itself fails on the
    /// device, each step is run again alone, so an error stays with the step that meets it.
    pub async fn step_batch(&mut self, steps: &[BatchStep<'_>]) -> Vec<Result<Vec<f32>, EngineError>> {
        self.close_idle();
        let dim = self.backend.config().hidden;
        let mut results: Vec<Option<Result<Vec<f32>, EngineError>>> = steps.iter().map(|_| None).collect();
        // The sessions of the steps that can run, out of the map while they do, each with the
        // rows of a kept prompt it reuses.
        let mut taken: Vec<Taken<B::Cache>> = Vec::new();
        for (i, step) in steps.iter().enumerate() {
            match self.take_for(step, steps, &taken) {
                Ok(mut session) => {
                    let reuse = match &session.track {
                        Some(t) => {
                            self.prefixes.reuse(&self.backend, t, step.hidden, step.n_tokens, &mut session.cache)
                        }
                        None => Ok(None),
                    };
                    match reuse {
                        Ok(reuse) => taken.push((i, step.id, session, reuse)),
                        Err(e) => {
                            self.sessions.insert(step.id, session);
                            results[i] = Some(Err(e));
                        }
                    }
                }
                Err(e) => results[i] = Some(Err(e)),
            }
        }
        // What each step computes: the rows after its reused prefix, from that position.
        let part = |i: usize, s: &Session<B::Cache>, reuse: &Option<Reuse>| {
            let skip = reuse.as_ref().map_or(0, |r| r.len);
            (&steps[i].hidden[skip * dim..], steps[i].n_tokens - skip, s.pos + skip)
        };
        let outs = {
            let items = taken
                .iter_mut()
                .map(|(i, _, s, reuse)| {
                    let (hidden, n_tokens, pos) = part(*i, s, reuse);
                    BatchItem { cache: &mut s.cache, hidden, n_tokens, pos }
                })
                .collect::<Vec<_>>();
            self.backend.forward_batch(items).await
        };
        let outs: Vec<Result<Vec<f32>, EngineError>> = match outs {
            Ok(outs) => outs.into_iter().map(Ok).collect(),
            Err(e) if taken.len() == 1 => vec![Err(e)],
            Err(e) => {
                tracing::debug!("a batch of {} steps failed ({e}); running them one by one", taken.len());
                let mut outs = Vec::with_capacity(taken.len());
                for (i, _, s, reuse) in taken.iter_mut() {
                    let (hidden, n_tokens, pos) = part(*i, s, reuse);
                    outs.push(self.backend.forward(&mut s.cache, hidden, n_tokens, pos).await);
                }
                outs
            }
        };
        for ((i, _, s, reuse), out) in taken.iter_mut().zip(outs) {
            let out = out.map(|computed| match reuse.take() {
                Some(r) => [r.outputs, computed].concat(),
                None => computed,
            });
            if let Ok(out) = &out {
                if let Some(track) = s.track.take() {
                    match self.prefixes.record(&self.backend, track, steps[*i].hidden, out, &s.cache) {
                        Ok(track) => s.track = track,
                        Err(e) => tracing::debug!("prompt not kept for reuse: {e}"),
                    }
                }
                s.pos += steps[*i].n_tokens;
                s.last_used = Instant::now();
            }
            results[*i] = Some(out);
        }
        for (_, id, s, _) in taken {
            self.sessions.insert(id, s);
        }
        results.into_iter().map(|r| r.expect("every step has a result")).collect()
    }

    /// Checks that `step` (one of `steps`) can run and takes its session out of the map;
    /// `taken` holds the sessions of the batch's earlier steps, by index into `steps`.
    fn take_for(
        &mut self,
        step: &BatchStep<'_>,
        steps: &[BatchStep<'_>],
        taken: &[Taken<B::Cache>],
    ) -> Result<Session<B::Cache>, EngineError> {
        let dim = self.backend.config().hidden;
        let expected = step.n_tokens.saturating_mul(dim);
        if step.n_tokens == 0 || step.hidden.len() != expected {
            return Err(EngineError::Shape { what: "hidden states", expected, actual: step.hidden.len() });
        }
        let id = step.id;
        if let Some((i, _, s, _)) = taken.iter().find(|(_, t, _, _)| *t == id) {
            // Once the earlier step has run, the session holds its tokens too.
            let held = s.pos + steps[*i].n_tokens;
            return Err(EngineError::WrongPosition { session: id.0, held, asked: step.pos.unwrap_or(s.pos) });
        }
        let session = self.sessions.get(&id).ok_or(EngineError::UnknownSession(id.0))?;
        if let Some(asked) = step.pos.filter(|&p| p != session.pos) {
            return Err(EngineError::WrongPosition { session: id.0, held: session.pos, asked });
        }
        if session.pos + step.n_tokens > session.capacity {
            return Err(EngineError::ContextFull {
                session: id.0,
                pos: session.pos,
                n_tokens: step.n_tokens,
                capacity: session.capacity,
            });
        }
        Ok(self.sessions.remove(&id).expect("the session was just found"))
    }

    /// Closes a session and frees its cache.
    pub fn close_session(&mut self, id: SessionId) -> Result<(), EngineError> {
        self.sessions.remove(&id).map(|_| ()).ok_or(EngineError::UnknownSession(id.0))
    }
}
