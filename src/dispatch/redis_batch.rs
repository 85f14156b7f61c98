//! One Redis connection's commands, coalesced into pipelines.
//!
//! Every lookup is one command and every done mark another, so a command per write would cost
//! a loopback or network write (and a wake-up of Redis) per event. Here a single task per
//! connection sends whatever queued while its previous pipeline was out as the next one: one
//! write, one read and one Redis wake-up for the lot. When the queue is empty a command goes
//! alone, so a quiet bridge waits no longer than it would without the batching.
//!
//! Pipelines are sent with `ignore_errors`, so a command that Redis refuses (a script Redis has
//! forgotten, say) fails alone, and the others in its pipeline still get their answers.

use std::sync::Weak;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{Cmd, Value};
use tokio::sync::{mpsc, oneshot};

/// Commands queued per connection; beyond this a lookup waits for room (within its timeout) and
/// a done mark is dropped and counted.
const QUEUE: usize = 4096;
/// Commands per pipeline.
const MAX_BATCH: usize = 256;

/// What a command came back as: Redis's value, or why there is none (the error's kind only,
/// since its detail may quote the URL).
pub(super) type Answer = Result<Value, String>;

struct Request {
    cmd: Cmd,
    /// `None` for fire-and-forget commands (done marks): their failures are reported to the
    /// store as a count.
    reply: Option<oneshot::Sender<Answer>>,
}

/// Told about fire-and-forget commands that failed, and about pipelines that succeeded.
pub(super) trait Outcomes: Send + Sync + 'static {
    fn unanswered(&self, commands: u64, why: &str);
    fn answered(&self);
}

/// The sending side of one connection's pipeline task.
pub(super) struct Batcher {
    tx: mpsc::Sender<Request>,
}

/// Why a command was not queued.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Full {
    Full,
    Closed,
}

impl Batcher {
    /// Starts the task for `conn`. It stops when the batcher is dropped or `outcomes` is gone.
    pub(super) fn spawn<O: Outcomes>(
        conn: ConnectionManager,
        timeout: Duration,
        outcomes: Weak<O>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(conn, timeout, rx, outcomes));
        Self { tx }
    }

    /// Sends `cmd` in the next pipeline and waits for its answer. The caller bounds the wait.
    pub(super) async fn query(&self, cmd: Cmd) -> Answer {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request {
                cmd,
                reply: Some(reply),
            })
            .await
            .map_err(|_| "closed".to_owned())?;
        rx.await.map_err(|_| "dropped".to_owned())?
    }

    /// Queues `cmd` without waiting for it.
    pub(super) fn send(&self, cmd: Cmd) -> Result<(), Full> {
        self.tx
            .try_send(Request { cmd, reply: None })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => Full::Full,
                mpsc::error::TrySendError::Closed(_) => Full::Closed,
            })
    }
}

async fn run<O: Outcomes>(
    mut conn: ConnectionManager,
    timeout: Duration,
    mut rx: mpsc::Receiver<Request>,
    outcomes: Weak<O>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for r in &mut batch {
            pipe.add_command(std::mem::replace(&mut r.cmd, Cmd::new()));
        }
        let answers =
            match tokio::time::timeout(timeout, pipe.query_async::<Vec<Value>>(&mut conn)).await {
                Ok(Ok(values)) if values.len() == batch.len() => Ok(values),
                Ok(Ok(values)) => Err(format!(
                    "{} answers to {} commands",
                    values.len(),
                    batch.len()
                )),
                Ok(Err(e)) => Err(format!("{:?}", e.kind())),
                Err(_) => Err("timed out".to_owned()),
            };
        let Some(out) = outcomes.upgrade() else {
            return;
        };
        match answers {
            Ok(values) => {
                let mut refused = 0u64;
                let mut why = String::new();
                for (r, v) in batch.drain(..).zip(values) {
                    let answer = match v {
                        Value::ServerError(e) => Err(e.code().to_owned()),
                        v => Ok(v),
                    };
                    match (r.reply, answer) {
                        (Some(reply), answer) => {
                            let _ = reply.send(answer);
                        }
                        (None, Err(e)) => {
                            refused += 1;
                            why = e;
                        }
                        (None, Ok(_)) => {}
                    }
                }
                if refused > 0 {
                    out.unanswered(refused, &why);
                } else {
                    out.answered();
                }
            }
            Err(why) => {
                let mut unanswered = 0u64;
                for r in batch.drain(..) {
                    match r.reply {
                        Some(reply) => {
                            let _ = reply.send(Err(why.clone()));
                        }
                        None => unanswered += 1,
                    }
                }
                if unanswered > 0 {
                    out.unanswered(unanswered, &why);
                }
            }
        }
    }
}
