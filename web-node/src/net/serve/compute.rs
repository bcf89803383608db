//! The compute loop: the one owner of a server's [`BlockExecutor`], fed through a
//! [`ComputeHandle`].
//!
//! Steps from every session stream queue here and run one at a time on the device, so the
//! loop can live on its own thread natively (it blocks while the device computes) or on the
//! page's event loop in a browser.

use std::time::Duration;

use futures::channel::{mpsc, oneshot};
use futures::{SinkExt, StreamExt};

use crate::engine::{Backend, BlockExecutor, EngineError, SessionId};

type Reply<T> = oneshot::Sender<Result<T, EngineError>>;

enum Job {
    Open { max_len: usize, reply: Reply<SessionId> },
    Step { id: SessionId, pos: usize, hidden: Vec<f32>, n_tokens: usize, reply: Reply<(Vec<f32>, Duration)> },
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
}

impl<B: Backend> ComputeLoop<B> {
    /// A loop over `executor` and the handle that feeds it (a bounded queue of 64 jobs).
    pub fn new(executor: BlockExecutor<B>) -> (ComputeHandle, ComputeLoop<B>) {
        let (tx, rx) = mpsc::channel(64);
        (ComputeHandle { tx }, ComputeLoop { executor, rx })
    }

    /// Runs jobs one at a time until every [`ComputeHandle`] is dropped.
    pub async fn run(mut self) {
        while let Some(job) = self.rx.next().await {
            match job {
                Job::Open { max_len, reply } => {
                    let _ = reply.send(self.executor.open_session(max_len));
                }
                Job::Step { id, pos, hidden, n_tokens, reply } => {
                    let started = web_time::Instant::now();
                    let r = self.executor.step_at(id, pos, &hidden, n_tokens).await;
                    let _ = reply.send(r.map(|out| (out, started.elapsed())));
                }
                Job::Close(id) => {
                    let _ = self.executor.close_session(id);
                }
            }
        }
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

    /// Runs `n_tokens` tokens at position `pos` (which must equal the session's length);
    /// returns the output and the compute time.
    pub async fn step(
        &self,
        id: SessionId,
        pos: usize,
        hidden: Vec<f32>,
        n_tokens: usize,
    ) -> Result<(Vec<f32>, Duration), EngineError> {
        self.ask(|reply| Job::Step { id, pos, hidden, n_tokens, reply }).await
    }

    /// Closes a session (fire and forget).
    pub fn close(&self, id: SessionId) {
        let _ = self.tx.clone().try_send(Job::Close(id));
    }
}
