//! The compute loop: the one owner of a server's [`BlockExecutor`], fed through a
//! [`ComputeHandle`].
//!
//! Steps from every session stream queue here and run one at a time on the device, so the
//! loop can live on its own thread natively (it blocks while the device computes) or on the
//! page's event loop in a browser.
//!
//! Steps are scheduled round-robin between their owners (the peer that opened the session;
//! this node itself is one owner): a peer with many sessions, or with long prefill steps
//! queued, gets its turn like everyone else and no more.

use std::collections::VecDeque;
use std::time::Duration;

use libp2p::PeerId;

use futures::channel::{mpsc, oneshot};
use futures::{SinkExt, StreamExt};

use super::announce::Health;
use crate::engine::{Backend, BlockExecutor, EngineError, SessionId};

type Reply<T> = oneshot::Sender<Result<T, EngineError>>;

enum Job {
    Open {
        max_len: usize,
        reply: Reply<SessionId>,
    },
    Step {
        owner: Option<PeerId>,
        id: SessionId,
        pos: usize,
        hidden: Vec<f32>,
        n_tokens: usize,
        reply: Reply<(Vec<f32>, Duration)>,
    },
    Close(SessionId),
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
}

impl<B: Backend> ComputeLoop<B> {
    /// A loop over `executor` and the handle that feeds it (a bounded queue of 64 jobs).
    pub fn new(executor: BlockExecutor<B>) -> (ComputeHandle, ComputeLoop<B>) {
        let (tx, rx) = mpsc::channel(64);
        (ComputeHandle { tx }, ComputeLoop { executor, rx, health: Health::new() })
    }

    /// The server's health as this loop's results show it (repeated out-of-memory errors or a
    /// lost device make it unhealthy; see [`Health`]).
    pub fn health(&self) -> Health {
        self.health.clone()
    }

    /// Runs jobs one at a time until every [`ComputeHandle`] is dropped.
    pub async fn run(mut self) {
        let mut fair = RoundRobin::default();
        let mut open = true;
        loop {
            // Wait for work when there is none queued; then take everything already sent.
            if fair.is_empty() {
                match self.rx.next().await {
                    Some(job) => self.take(job, &mut fair),
                    None => return,
                }
            }
            while open {
                match self.rx.try_recv() {
                    Ok(job) => self.take(job, &mut fair),
                    Err(mpsc::TryRecvError::Closed) => open = false,
                    Err(mpsc::TryRecvError::Empty) => break,
                }
            }
            let Some(job) = fair.pop() else {
                if open {
                    continue;
                }
                return;
            };
            let Job::Step { id, pos, hidden, n_tokens, reply, .. } = job else { continue };
            let started = web_time::Instant::now();
            let r = self.executor.step_at(id, pos, &hidden, n_tokens).await;
            self.health.record(&r);
            let _ = reply.send(r.map(|out| (out, started.elapsed())));
        }
    }

    /// Runs an open or close at once (cheap, and a close frees memory); queues a step.
    fn take(&mut self, job: Job, fair: &mut RoundRobin) {
        match job {
            Job::Open { max_len, reply } => {
                let r = self.executor.open_session(max_len);
                self.health.record(&r);
                let _ = reply.send(r);
            }
            Job::Close(id) => {
                let _ = self.executor.close_session(id);
            }
            step @ Job::Step { .. } => fair.push(step),
        }
    }
}

/// Queued steps, one queue per owner, served in turn.
#[derive(Default)]
struct RoundRobin {
    queues: VecDeque<(Option<PeerId>, VecDeque<Job>)>,
}

impl RoundRobin {
    fn is_empty(&self) -> bool {
        self.queues.is_empty()
    }

    fn push(&mut self, job: Job) {
        let owner = match &job {
            Job::Step { owner, .. } => *owner,
            _ => None,
        };
        match self.queues.iter_mut().find(|(o, _)| *o == owner) {
            Some((_, q)) => q.push_back(job),
            None => self.queues.push_back((owner, VecDeque::from([job]))),
        }
    }

    /// The next owner's oldest job; that owner goes to the back of the line.
    fn pop(&mut self) -> Option<Job> {
        let (owner, mut q) = self.queues.pop_front()?;
        let job = q.pop_front();
        if !q.is_empty() {
            self.queues.push_back((owner, q));
        }
        job
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
    /// and the compute time.
    pub async fn step(
        &self,
        owner: Option<PeerId>,
        id: SessionId,
        pos: usize,
        hidden: Vec<f32>,
        n_tokens: usize,
    ) -> Result<(Vec<f32>, Duration), EngineError> {
        self.ask(|reply| Job::Step { owner, id, pos, hidden, n_tokens, reply }).await
    }

    /// Closes a session (fire and forget).
    pub fn close(&self, id: SessionId) {
        let _ = self.tx.clone().try_send(Job::Close(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(owner: Option<PeerId>, id: u64) -> Job {
        let (reply, _) = oneshot::channel();
        Job::Step { owner, id: SessionId(id), pos: 0, hidden: vec![], n_tokens: 1, reply }
    }

    /// A peer with many queued steps does not starve one with a single step: owners take turns.
    #[test]
    fn owners_take_turns() {
        let (a, b) = (Some(PeerId::random()), Some(PeerId::random()));
        let mut rr = RoundRobin::default();
        for id in 0..4 {
            rr.push(step(a, id));
        }
        rr.push(step(b, 10));
        rr.push(step(None, 20));
        let order: Vec<u64> = std::iter::from_fn(|| rr.pop())
            .map(|j| match j {
                Job::Step { id, .. } => id.0,
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(order, vec![0, 10, 20, 1, 2, 3]);
    }
}
