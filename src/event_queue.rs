//! Kubernetes Events, recorded beside the reconciles instead of inside them: a reconcile
//! that changed a plugin's status hands its Events over and moves on, so after a bulk apply
//! the work queue drains at the pace of the status writes, not of the status writes plus
//! two to four Event writes each.
//!
//! One reconcile's Events stay in order (they are one job, recorded one after another); jobs
//! run a few at a time; a full queue makes the reconcile wait (nothing is dropped). The
//! worker ends once every sender is gone, after recording what was queued: reconciles that
//! finish during a graceful shutdown still get their Events (the API client is fenced, so
//! nothing is written once the lease is lost).

use std::future::Future;

use futures::StreamExt;
use futures::future::BoxFuture;
use tokio::sync::mpsc;

/// Events of one reconcile, recorded in order by the [`EventQueue`]'s worker.
pub type Job = BoxFuture<'static, ()>;

/// Jobs waiting to be recorded before a reconcile handing over more has to wait.
pub const CAPACITY: usize = 1024;
/// Jobs recorded at once.
pub const CONCURRENCY: usize = 8;

/// The sending side; cheap to clone.
#[derive(Clone)]
pub struct EventQueue {
    tx: mpsc::Sender<Job>,
}

impl EventQueue {
    /// A queue of `capacity` jobs and the worker that records them, `concurrency` at once,
    /// until every sender is gone.
    pub fn new(
        capacity: usize,
        concurrency: usize,
    ) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let (tx, mut rx) = mpsc::channel::<Job>(capacity.max(1));
        let jobs = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
        let worker = jobs.for_each_concurrent(concurrency.max(1), |job| job);
        (Self { tx }, worker)
    }

    /// Hands `job` to the worker, waiting while the queue is full. Returns false when the
    /// worker has stopped (shutting down): the job is dropped.
    pub async fn push(&self, job: Job) -> bool {
        self.tx.send(job).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use futures::FutureExt;

    #[tokio::test]
    async fn jobs_keep_their_inner_order_and_run_a_bounded_number_at_once() {
        let (queue, worker) = EventQueue::new(16, 3);
        let worker = tokio::spawn(worker);
        let log = Arc::new(Mutex::new(Vec::new()));
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        for job in 0..10 {
            let (log, running, most) = (log.clone(), running.clone(), most.clone());
            let pushed = queue
                .push(
                    async move {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        for step in 0..3 {
                            tokio::time::sleep(Duration::from_millis(2)).await;
                            log.lock().expect("log").push((job, step));
                        }
                        running.fetch_sub(1, Ordering::SeqCst);
                    }
                    .boxed(),
                )
                .await;
            assert!(pushed);
        }
        drop(queue);
        worker.await.expect("worker ends when every sender is gone");
        let log = log.lock().expect("log").clone();
        assert_eq!(log.len(), 30, "every event of every job is recorded");
        for job in 0..10 {
            let steps: Vec<i32> = log
                .iter()
                .filter(|(j, _)| *j == job)
                .map(|(_, s)| *s)
                .collect();
            assert_eq!(steps, vec![0, 1, 2], "job {job} kept its order");
        }
        let most = most.load(Ordering::SeqCst);
        assert!(
            (2..=3).contains(&most),
            "jobs ran side by side, never more than 3 at once: {most}"
        );
    }

    #[tokio::test]
    async fn a_full_queue_makes_the_sender_wait_and_a_stopped_worker_refuses() {
        let (queue, worker) = EventQueue::new(1, 1);
        let (release, gate) = tokio::sync::oneshot::channel::<()>();
        let worker = tokio::spawn(worker);
        // The first job blocks the only slot of the worker; the second fills the queue.
        assert!(
            queue
                .push(async move { gate.await.unwrap_or(()) }.boxed())
                .await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(queue.push(async {}.boxed()).await);
        let third = queue.push(async {}.boxed());
        tokio::pin!(third);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut third)
                .await
                .is_err(),
            "a full queue holds the sender back instead of dropping the job"
        );
        let _ = release.send(());
        assert!(third.await, "room again once the worker moves on");
        worker.abort();
        assert!(worker.await.is_err_and(|e| e.is_cancelled()));
        assert!(
            !queue.push(async {}.boxed()).await,
            "once the worker is gone, jobs are refused"
        );
    }
}
