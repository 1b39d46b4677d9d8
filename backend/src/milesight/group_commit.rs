//! Group commit for webhook events. Each request hands its events to a writer task and waits;
//! the writer stores everything that queued up meanwhile in one transaction and answers each
//! request after the commit. One commit (one fsync) then serves many requests, so durable
//! ingest keeps up with HTTP instead of with the disk. An idle writer commits a lone request
//! at once: batching comes from load, never from a timer.
//!
//! The group size adapts to load: a small group (under `SMALL_GROUP_EVENTS`) starts its commit
//! only while fewer than `SMALL_COMMITS` small groups are committing, and takes the requests
//! that queued while it waited. Each commit has a fixed cost (statements, a flush), so under a
//! stream of 1-event requests fewer, larger commits cost the database a quarter less CPU a
//! request; large groups (many events a request) gain nothing from waiting and use every writer.

use std::sync::Arc;

use tokio::sync::{Mutex, Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::offline::OfflinePolicy;
use crate::storage::ingest::{IncomingEvent, IngestRequest, InsertOutcome, ingest};
use crate::storage::{Db, StorageError, StorageResult, UtcTime};

/// Requests waiting for a writer beyond this make new requests wait to enqueue (backpressure
/// that shows as latency, never as lost events).
const QUEUE_REQUESTS: usize = 4096;
/// A group stops taking requests at this many events, so one transaction stays short.
const GROUP_MAX_EVENTS: usize = 2000;
/// Groups under this many events are small: they wait for a turn (see the module comment).
const SMALL_GROUP_EVENTS: usize = 200;
/// Small groups committing at once. Measured with 64 senders of 1-event requests on
/// PostgreSQL (docs/benchmarks.md): 2 of 4 writers gave 15 requests a commit instead of 9 and
/// about a quarter more requests a second.
const SMALL_COMMITS: usize = 2;

struct Pending {
    request: IngestRequest,
    reply: oneshot::Sender<StorageResult<InsertOutcome>>,
}

/// The queue in front of the writers; cheap to share.
pub struct GroupCommit {
    queue: mpsc::Sender<Pending>,
    /// Tells the writers to commit what is queued and stop (shutdown).
    stop: CancellationToken,
}

impl GroupCommit {
    /// Starts `writers` writers on `tasks` (the process's shutdown tracker, so shutdown waits
    /// for them); while some commit, the next group gathers. `policy` sets the devices'
    /// offline deadlines; `commit_sizes` observes the number of requests in each commit.
    pub fn start(
        db: Db,
        policy: OfflinePolicy,
        writers: usize,
        commit_sizes: prometheus::Histogram,
        tasks: &TaskTracker,
    ) -> GroupCommit {
        let (queue, receiver) = mpsc::channel(QUEUE_REQUESTS);
        let receiver = Arc::new(Mutex::new(receiver));
        let small_commits = Arc::new(Semaphore::new(SMALL_COMMITS));
        let stop = CancellationToken::new();
        for _ in 0..writers {
            tasks.spawn(write_groups(
                db.clone(),
                policy,
                receiver.clone(),
                small_commits.clone(),
                commit_sizes.clone(),
                stop.clone(),
            ));
        }
        GroupCommit { queue, stop }
    }

    /// Stops the writers once everything queued is committed and answered (shutdown, after the
    /// HTTP server stopped taking requests); the tracker they run on says when they are done.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Stores one request's events; returns once they are committed (or were not).
    pub async fn store(
        &self,
        source_id: i64,
        received_at: UtcTime,
        events: Vec<IncomingEvent>,
    ) -> StorageResult<InsertOutcome> {
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            request: IngestRequest::new(source_id, received_at, events),
            reply,
        };
        let stopped = || StorageError::Unavailable("the webhook writer has stopped".into());
        self.queue.send(pending).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

async fn write_groups(
    db: Db,
    policy: OfflinePolicy,
    receiver: Arc<Mutex<mpsc::Receiver<Pending>>>,
    small_commits: Arc<Semaphore>,
    commit_sizes: prometheus::Histogram,
    stop: CancellationToken,
) {
    loop {
        let (group, _turn) = {
            let mut receiver = receiver.lock().await;
            // Once stopping, take only what is already queued: every acknowledged request is
            // committed, and then the writer ends.
            let first = tokio::select! {
                biased;
                first = receiver.recv() => first,
                () = stop.cancelled() => receiver.try_recv().ok(),
            };
            let Some(first) = first else {
                return;
            };
            let mut events = first.request.events.len();
            let mut group = vec![first];
            take_queued(&mut group, &mut events, &mut receiver);
            // A small group waits for a turn, then takes what queued meanwhile (the receiver
            // stays locked: the other writers would find nothing to take anyway).
            let mut turn = None;
            if events < SMALL_GROUP_EVENTS {
                turn = small_commits.clone().acquire_owned().await.ok();
                take_queued(&mut group, &mut events, &mut receiver);
            }
            (group, turn)
        };
        commit_sizes.observe(group.len() as f64);
        commit(&db, policy, group).await;
    }
}

/// Adds the requests already queued to `group`, up to `GROUP_MAX_EVENTS` events in all.
fn take_queued(group: &mut Vec<Pending>, events: &mut usize, receiver: &mut mpsc::Receiver<Pending>) {
    while *events < GROUP_MAX_EVENTS {
        let Ok(next) = receiver.try_recv() else { break };
        *events += next.request.events.len();
        group.push(next);
    }
}

/// Commits a group and answers its requests. If the group fails for a reason other than the
/// database being unavailable, each request is retried alone, so one bad request cannot fail
/// the others.
async fn commit(db: &Db, policy: OfflinePolicy, group: Vec<Pending>) {
    let requests: Vec<IngestRequest> = group.iter().map(|p| p.request.clone()).collect();
    match ingest(db, policy, &requests).await {
        Ok(outcomes) => {
            for (pending, outcome) in group.into_iter().zip(outcomes) {
                let _ = pending.reply.send(Ok(outcome));
            }
        }
        Err(err) if err.is_unavailable() || group.len() == 1 => {
            let message = match &err {
                StorageError::Unavailable(reason) => reason.clone(),
                other => other.to_string(),
            };
            let mut err = Some(err);
            for pending in group {
                let this = err
                    .take()
                    .unwrap_or_else(|| StorageError::Unavailable(message.clone()));
                let _ = pending.reply.send(Err(this));
            }
        }
        Err(err) => {
            tracing::warn!(error = %err, requests = group.len(), "a webhook group failed; storing its requests one by one");
            for pending in group {
                let result = ingest(db, policy, std::slice::from_ref(&pending.request))
                    .await
                    .map(|mut outcomes| outcomes.pop().unwrap_or_default());
                let _ = pending.reply.send(result);
            }
        }
    }
}
