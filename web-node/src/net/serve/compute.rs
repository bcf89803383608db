//! The compute loop: the one owner of a server's [`BlockExecutor`], fed through a
//! [`ComputeHandle`].
//!
//! Steps from every session queue here and run in batches on the device (continuous
//! batching): each turn takes the steps that are ready from all sessions, runs them as one
//! [`BlockExecutor::step_batch`], and answers each; sessions join and leave between turns.
//! The loop can live on its own thread natively (it blocks while the device computes) or on
//! the page's event loop in a browser.
//!
//! A turn takes at most [`BatchLimits::max_tokens`] tokens and [`BatchLimits::max_steps`]
//! steps: decode steps first, then prompts, and a prompt longer than the tokens left is cut
//! into chunks that run in later turns (its answer goes out when the last chunk is done), so
//! a long prompt does not stall everyone's decode. Steps are taken round-robin between their
//! owners (the peer that opened the session; this node itself is one owner): when a turn is
//! full, a peer with many sessions or long prompts queued gets its share like everyone else
//! and no more.
//!
//! Between turns the loop gathers: the sessions whose decode steps the last turn answered
//! usually send their next step a moment later (their clients sample a token and embed it),
//! so when only decode steps are queued, the next turn waits for them, at most
//! [`GATHER_FRACTION`] of the last turn's time (and never more than [`MAX_GATHER`]), instead
//! of starting with whichever step came back first and leaving the others for a turn of
//! their own. A queued prompt never waits for this.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use libp2p::PeerId;

use futures::channel::{mpsc, oneshot};
use futures::{SinkExt, StreamExt};

use super::announce::Health;
use crate::engine::{Backend, BatchStep, BlockExecutor, EngineError, SessionId};

type Reply<T> = oneshot::Sender<Result<T, EngineError>>;

/// Longest a turn waits for the last turn's sessions, as a fraction of the last turn's time.
pub const GATHER_FRACTION: f64 = 0.25;
/// Longest a turn waits for the last turn's sessions.
pub const MAX_GATHER: Duration = Duration::from_millis(20);

/// How large one turn of the compute loop may be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchLimits {
    /// Tokens in one turn, decode steps and prompt chunks together. Default 64: a turn with
    /// a prompt chunk takes about as long as the chunk alone, and everyone's next token waits
    /// for it.
    pub max_tokens: usize,
    /// Steps (sessions) in one turn. Default 32.
    pub max_steps: usize,
}

impl Default for BatchLimits {
    fn default() -> Self {
        BatchLimits { max_tokens: 64, max_steps: 32 }
    }
}

enum Job {
    Open { max_len: usize, reply: Reply<SessionId> },
    Step(Pending),
    Close(SessionId),
}

/// A queued step, possibly part-done (a prompt cut into chunks).
struct Pending {
    owner: Option<PeerId>,
    id: SessionId,
    /// Position of the step's first token.
    pos: usize,
    hidden: Vec<f32>,
    n_tokens: usize,
    /// Tokens already run (earlier chunks).
    done: usize,
    /// Outputs of the earlier chunks.
    out: Vec<f32>,
    /// Time of the turns the step was in.
    compute: Duration,
    reply: Reply<(Vec<f32>, Duration)>,
}

impl Pending {
    fn left(&self) -> usize {
        self.n_tokens - self.done
    }
}

/// Sends work to the [`ComputeLoop`]. Cheap to clone.
#[derive(Clone)]
pub struct ComputeHandle {
    tx: mpsc::Sender<Job>,
}

/// The loop that owns the executor; [`ComputeLoop::run`] it where compute may block.
pub struct ComputeLoop<B: Backend> {
    executor: BlockExecutor<B>,
    rx: mpsc::Receiver<Job>,
    health: Health,
    limits: BatchLimits,
    /// Longest a turn waits for the last turn's sessions, as a fraction of the last turn's
    /// time ([`GATHER_FRACTION`]) and at most ([`MAX_GATHER`]).
    gather_fraction: f64,
    max_gather: Duration,
}

impl<B: Backend> ComputeLoop<B> {
    /// A loop over `executor` with turns of at most `limits`, and the handle that feeds it (a
    /// bounded queue of 64 jobs).
    pub fn new(executor: BlockExecutor<B>, limits: BatchLimits) -> (ComputeHandle, ComputeLoop<B>) {
        let (tx, rx) = mpsc::channel(64);
        let limits = BatchLimits { max_tokens: limits.max_tokens.max(1), max_steps: limits.max_steps.max(1) };
        let lp = ComputeLoop {
            executor,
            rx,
            health: Health::new(),
            limits,
            gather_fraction: GATHER_FRACTION,
            max_gather: MAX_GATHER,
        };
        (ComputeHandle { tx }, lp)
    }

    /// The server's health as this loop's results show it (repeated out-of-memory errors or a
    /// lost device make it unhealthy; see [`Health`]).
    pub fn health(&self) -> Health {
        self.health.clone()
    }

    /// Runs turns until every [`ComputeHandle`] is dropped and the queue is empty.
    pub async fn run(mut self) {
        let mut queue = Queue::default();
        let mut open = true;
        // Sessions the last turn answered a decode step of, and how long that turn took.
        let mut expected: HashSet<SessionId> = HashSet::new();
        let mut last_turn = Duration::ZERO;
        loop {
            // Wait for work when there is none queued; then take everything already sent.
            if queue.is_empty() {
                match self.rx.next().await {
                    Some(job) => self.take(job, &mut queue, &mut expected),
                    None => return,
                }
            }
            while open {
                match self.rx.try_recv() {
                    Ok(job) => self.take(job, &mut queue, &mut expected),
                    Err(mpsc::TryRecvError::Closed) => open = false,
                    Err(mpsc::TryRecvError::Empty) => break,
                }
            }
            if open && self.limits.max_steps > 1 {
                let wait = last_turn.mul_f64(self.gather_fraction).min(self.max_gather);
                open = self.gather(&mut queue, &mut expected, wait).await;
            }
            expected.clear();
            let turn = queue.turn(self.limits);
            if turn.is_empty() {
                if open {
                    continue;
                }
                return;
            }
            last_turn = self.run_turn(turn, &mut queue, &mut expected).await;
        }
    }

    /// Takes jobs until every session of `expected` has a step queued, for `wait` at most,
    /// and not while a prompt is queued; false once every handle is dropped.
    async fn gather(&mut self, queue: &mut Queue, expected: &mut HashSet<SessionId>, wait: Duration) -> bool {
        expected.retain(|id| !queue.has_step(*id));
        if expected.is_empty() || wait.is_zero() {
            return true;
        }
        let mut deadline = futures_timer::Delay::new(wait);
        while !expected.is_empty() && !queue.has_prompt() {
            match futures::future::select(self.rx.next(), &mut deadline).await {
                futures::future::Either::Left((Some(job), _)) => {
                    self.take(job, queue, expected);
                }
                futures::future::Either::Left((None, _)) => return false,
                futures::future::Either::Right(_) => break,
            }
        }
        true
    }

    /// Runs one turn's chunks (`(step, tokens to run now)`) as a batch; answers the steps
    /// that are done and queues the rest again.
    /// Adds the sessions whose decode steps it answered to `expected`; returns the turn's time.
    async fn run_turn(
        &mut self,
        turn: Vec<(Pending, usize)>,
        queue: &mut Queue,
        expected: &mut HashSet<SessionId>,
    ) -> Duration {
        let dim = self.executor.backend().config().hidden;
        let started = web_time::Instant::now();
        let results = {
            let steps: Vec<BatchStep<'_>> = turn
                .iter()
                .map(|(p, n)| BatchStep {
                    id: p.id,
                    pos: Some(p.pos + p.done),
                    hidden: &p.hidden[p.done * dim..(p.done + n) * dim],
                    n_tokens: *n,
                })
                .collect();
            self.executor.step_batch(&steps).await
        };
        let took = started.elapsed();
        for ((mut p, n), r) in turn.into_iter().zip(results) {
            self.health.record(&r);
            match r {
                Ok(out) => {
                    p.out.extend_from_slice(&out);
                    p.done += n;
                    p.compute += took;
                    if p.done == p.n_tokens {
                        if p.n_tokens == 1 {
                            expected.insert(p.id);
                        }
                        let _ = p.reply.send(Ok((p.out, p.compute)));
                    } else {
                        queue.push_front(p);
                    }
                }
                Err(e) => {
                    let _ = p.reply.send(Err(e));
                }
            }
        }
        took
    }

    /// Runs an open or close at once (cheap, and a close frees memory); queues a step. A
    /// session closed or with its step here is no longer waited for (`expected`).
    fn take(&mut self, job: Job, queue: &mut Queue, expected: &mut HashSet<SessionId>) {
        match job {
            Job::Open { max_len, reply } => {
                let r = self.executor.open_session(max_len);
                self.health.record(&r);
                let _ = reply.send(r);
            }
            Job::Close(id) => {
                expected.remove(&id);
                let _ = self.executor.close_session(id);
            }
            Job::Step(p) => {
                // The session's next step is here: a gathering turn need not wait for it.
                expected.remove(&p.id);
                // Chunks slice the input: refuse a step whose input does not match its tokens.
                let len = p.n_tokens.saturating_mul(self.executor.backend().config().hidden);
                if p.n_tokens == 0 || p.hidden.len() != len {
                    let e = EngineError::Shape { what: "hidden states", expected: len, actual: p.hidden.len() };
                    let _ = p.reply.send(Err(e));
                } else {
                    queue.push_back(p);
                }
            }
        }
    }
}

/// Queued steps, one queue per owner, served in turn.
#[derive(Default)]
struct Queue {
    owners: VecDeque<(Option<PeerId>, VecDeque<Pending>)>,
}

impl Queue {
    fn is_empty(&self) -> bool {
        self.owners.is_empty()
    }

    /// Whether a step of more than one token (a prompt, or what is left of one) is queued.
    fn has_prompt(&self) -> bool {
        self.owners.iter().any(|(_, q)| q.iter().any(|p| p.left() > 1))
    }

    /// Whether a step of session `id` is queued.
    fn has_step(&self, id: SessionId) -> bool {
        self.owners.iter().any(|(_, q)| q.iter().any(|p| p.id == id))
    }

    fn owner_queue(&mut self, owner: Option<PeerId>) -> &mut VecDeque<Pending> {
        let i = match self.owners.iter().position(|(o, _)| *o == owner) {
            Some(i) => i,
            None => {
                self.owners.push_back((owner, VecDeque::new()));
                self.owners.len() - 1
            }
        };
        &mut self.owners[i].1
    }

    fn push_back(&mut self, p: Pending) {
        self.owner_queue(p.owner).push_back(p);
    }

    /// Puts a part-done step back first in its owner's line.
    fn push_front(&mut self, p: Pending) {
        self.owner_queue(p.owner).push_front(p);
    }

    /// Takes the next turn: `(step, tokens to run now)`. Decode steps first, then prompts
    /// (the last one taken possibly cut to the tokens left); each pass over the owners takes
    /// at most one step of each, starting with the owner after the one that started the last
    /// turn. At most one step per session (a session's later steps wait for its earlier).
    fn turn(&mut self, limits: BatchLimits) -> Vec<(Pending, usize)> {
        let mut turn = Vec::new();
        let mut tokens = limits.max_tokens;
        let mut sessions = HashSet::new();
        for decode in [true, false] {
            loop {
                let mut took = false;
                for (_, q) in self.owners.iter_mut() {
                    if tokens == 0 || turn.len() == limits.max_steps {
                        break;
                    }
                    // This owner's first step of a session not in the turn yet, and not behind
                    // an earlier step of its own session.
                    let mut seen = HashSet::new();
                    let pick = q.iter().position(|p| {
                        let first = seen.insert(p.id);
                        first && !sessions.contains(&p.id) && (p.left() == 1) == decode
                    });
                    if let Some(i) = pick {
                        let p = q.remove(i).expect("the position was just found");
                        let n = p.left().min(tokens);
                        tokens -= n;
                        sessions.insert(p.id);
                        turn.push((p, n));
                        took = true;
                    }
                }
                if !took || tokens == 0 || turn.len() == limits.max_steps {
                    break;
                }
            }
        }
        self.owners.rotate_left(usize::from(!self.owners.is_empty()));
        self.owners.retain(|(_, q)| !q.is_empty());
        turn
    }
}

fn stopped() -> EngineError {
    EngineError::Unavailable("the compute loop has stopped".into())
}

impl ComputeHandle {
    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Job) -> Result<T, EngineError> {
        let (tx, rx) = oneshot::channel();
        self.tx.clone().send(make(tx)).await.map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// Opens a session holding up to `max_len` tokens.
    pub async fn open(&self, max_len: usize) -> Result<SessionId, EngineError> {
        self.ask(|reply| Job::Open { max_len, reply }).await
    }

    /// Runs `n_tokens` tokens at position `pos` (which must equal the session's length) for
    /// `owner` (the peer that opened the session, `None` for this node); returns the output
    /// and the compute time (of the turns the step was in).
    pub async fn step(
        &self,
        owner: Option<PeerId>,
        id: SessionId,
        pos: usize,
        hidden: Vec<f32>,
        n_tokens: usize,
    ) -> Result<(Vec<f32>, Duration), EngineError> {
        self.ask(|reply| {
            Job::Step(Pending {
                owner,
                id,
                pos,
                hidden,
                n_tokens,
                done: 0,
                out: Vec::new(),
                compute: Duration::ZERO,
                reply,
            })
        })
        .await
    }

    /// Closes a session (fire and forget).
    pub fn close(&self, id: SessionId) {
        let _ = self.tx.clone().try_send(Job::Close(id));
    }
}

#[cfg(test)]
mod tests {
    use std::ops::Range;
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::engine::{BatchItem, ExecutorConfig};
    use crate::model::{Arch, LlamaConfig};

    fn step(owner: Option<PeerId>, id: u64, n_tokens: usize) -> Pending {
        let (reply, _) = oneshot::channel();
        let (hidden, out, compute) = (Vec::new(), Vec::new(), Duration::ZERO);
        Pending { owner, id: SessionId(id), pos: 0, hidden, n_tokens, done: 0, out, compute, reply }
    }

    fn ids(turn: &[(Pending, usize)]) -> Vec<(u64, usize)> {
        turn.iter().map(|(p, n)| (p.id.0, *n)).collect()
    }

    const LIMITS: BatchLimits = BatchLimits { max_tokens: 64, max_steps: 32 };

    /// Decode steps go first; a prompt fills the tokens left and its rest waits, first in its
    /// owner's line, for the next turn.
    #[test]
    fn decode_first_then_prompt_chunks() {
        let (a, b) = (Some(PeerId::random()), Some(PeerId::random()));
        let mut q = Queue::default();
        q.push_back(step(a, 1, 100));
        q.push_back(step(b, 2, 1));
        q.push_back(step(a, 3, 1));
        q.push_back(step(None, 4, 1));
        let turn = q.turn(LIMITS);
        assert_eq!(ids(&turn), vec![(3, 1), (2, 1), (4, 1), (1, 61)]);
        let (mut prompt, n) = turn.into_iter().last().expect("the prompt");
        prompt.done += n;
        q.push_front(prompt);
        q.push_back(step(b, 2, 1));
        assert_eq!(ids(&q.turn(LIMITS)), vec![(2, 1), (1, 39)]);
        assert!(q.is_empty());
    }

    /// A full turn is shared between owners: a peer with many sessions does not crowd out one
    /// with a single session, and turns start with each owner in turn.
    #[test]
    fn owners_share_a_full_turn() {
        let (a, b) = (Some(PeerId::random()), Some(PeerId::random()));
        let mut q = Queue::default();
        for id in 0..10 {
            q.push_back(step(a, id, 1));
        }
        q.push_back(step(b, 20, 1));
        let limits = BatchLimits { max_tokens: 64, max_steps: 4 };
        assert_eq!(ids(&q.turn(limits)), vec![(0, 1), (20, 1), (1, 1), (2, 1)]);
        q.push_back(step(b, 20, 1));
        assert_eq!(ids(&q.turn(limits)), vec![(3, 1), (20, 1), (4, 1), (5, 1)]);
        // With both lines longer than a turn, b starts the turn after the one a started.
        for id in 20..23 {
            q.push_back(step(b, id, 1));
        }
        assert_eq!(ids(&q.turn(limits)), vec![(6, 1), (20, 1), (7, 1), (21, 1)]);
        assert_eq!(ids(&q.turn(limits)), vec![(22, 1), (8, 1), (9, 1)]);
    }

    /// Two prompts of 60 tokens with a 64-token turn: the second starts in the first turn with
    /// 4 tokens; nobody's prompt waits behind more than one other whole prompt.
    #[test]
    fn prompts_share_turns() {
        let (a, b) = (Some(PeerId::random()), Some(PeerId::random()));
        let mut q = Queue::default();
        q.push_back(step(a, 1, 60));
        q.push_back(step(b, 2, 60));
        assert_eq!(ids(&q.turn(LIMITS)), vec![(1, 60), (2, 4)]);
    }

    /// A session's second step waits for its first (the client sent them in order).
    #[test]
    fn one_step_per_session_per_turn() {
        let a = Some(PeerId::random());
        let mut q = Queue::default();
        q.push_back(step(a, 1, 1));
        q.push_back(step(a, 1, 1));
        q.push_back(step(a, 2, 1));
        assert_eq!(ids(&q.turn(LIMITS)), vec![(1, 1), (2, 1)]);
        assert_eq!(ids(&q.turn(LIMITS)), vec![(1, 1)]);
    }

    const HIDDEN: usize = 8;

    /// A device that takes `delay` per batch, returns its input, and records each batch's
    /// size: what the loop's turns look like, without weights.
    struct Recorder {
        config: LlamaConfig,
        delay: Duration,
        sizes: Arc<Mutex<Vec<usize>>>,
    }

    impl Backend for Recorder {
        type Cache = ();

        fn name(&self) -> &'static str {
            "recorder"
        }

        fn config(&self) -> &LlamaConfig {
            &self.config
        }

        fn layers(&self) -> Range<usize> {
            0..1
        }

        fn new_cache(&self, _max_len: usize) -> Result<(), EngineError> {
            Ok(())
        }

        async fn forward(&self, _: &mut (), hidden: &[f32], _: usize, _: usize) -> Result<Vec<f32>, EngineError> {
            self.sizes.lock().expect("sizes").push(1);
            std::thread::sleep(self.delay);
            Ok(hidden.to_vec())
        }

        async fn forward_batch(&self, items: Vec<BatchItem<'_, ()>>) -> Result<Vec<Vec<f32>>, EngineError> {
            self.sizes.lock().expect("sizes").push(items.len());
            std::thread::sleep(self.delay);
            Ok(items.iter().map(|it| it.hidden.to_vec()).collect())
        }
    }

    /// Two sessions decoding, one answering its steps at once and one 5 ms late, on a device
    /// that takes 20 ms a turn: the loop waits for the late one, so after the first turns
    /// every turn holds both (without gathering they would come apart, one turn each). The
    /// window is widened to 2 s here: with the default (a quarter of a turn, 5 ms) a loaded
    /// machine that runs the late thread more than 5 ms late splits a turn, and this test is
    /// about the waiting, not about how long it lasts.
    #[test]
    fn a_turn_waits_for_the_last_turns_sessions() {
        let config = LlamaConfig {
            arch: Arch::Llama,
            hidden: HIDDEN,
            intermediate: 16,
            n_layers: 1,
            n_heads: 2,
            n_kv_heads: 1,
            head_dim: 4,
            rope_theta: 10000.0,
            rms_eps: 1e-5,
            vocab: 32,
            max_seq_len: 64,
            tie_embeddings: true,
            rope_freq_factors: None,
            rope_attn_factor: 1.0,
            sliding_window: None,
            gemma: None,
        };
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let backend = Recorder { config, delay: Duration::from_millis(20), sizes: sizes.clone() };
        let (handle, mut lp) = ComputeLoop::new(BlockExecutor::new(backend, ExecutorConfig::default()), LIMITS);
        (lp.gather_fraction, lp.max_gather) = (100.0, Duration::from_secs(2));
        let worker = std::thread::spawn(move || futures::executor::block_on(lp.run()));
        const ROUNDS: usize = 6;
        let run = |lag: Duration| {
            let h = handle.clone();
            let id = futures::executor::block_on(h.open(64)).expect("open");
            std::thread::spawn(move || {
                for pos in 0..ROUNDS {
                    std::thread::sleep(lag);
                    futures::executor::block_on(h.step(None, id, pos, vec![0.5; HIDDEN], 1)).expect("step");
                }
                // A finished session is not waited for.
                h.close(id);
            })
        };
        let (a, b) = (run(Duration::ZERO), run(Duration::from_millis(5)));
        a.join().expect("a");
        b.join().expect("b");
        drop(handle);
        worker.join().expect("loop");
        let sizes = sizes.lock().expect("sizes").clone();
        assert_eq!(sizes.iter().sum::<usize>(), 2 * ROUNDS, "{sizes:?}");
        // The late session's first step may miss the first turns (a loaded machine can start
        // its thread late, and nothing waits for a session before its first answer); from the
        // first turn that holds both until the last, every turn does.
        let first = sizes.iter().position(|&s| s == 2).unwrap_or_else(|| panic!("never together: {sizes:?}"));
        let last = sizes.iter().rposition(|&s| s == 2).unwrap_or(first);
        assert!(sizes[first..=last].iter().all(|&s| s == 2), "turns {sizes:?}");
        assert!(last - first + 1 >= ROUNDS / 2, "turns {sizes:?}");
    }
}
