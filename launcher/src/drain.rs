//! What the termination sequence shares with the accept loop and every connection: whether
//! connections should go away now, and how many are still open.

use std::sync::Arc;

use tokio::sync::watch;

/// A handle on the drain state; clones share it.
#[derive(Clone, Debug)]
pub struct Drain {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    closing: watch::Sender<bool>,
    open: watch::Sender<usize>,
}

impl Default for Drain {
    fn default() -> Self {
        Self {
            inner: Arc::new(Inner {
                closing: watch::Sender::new(false),
                open: watch::Sender::new(0),
            }),
        }
    }
}

impl Drain {
    /// Stops accepting connections and asks every open one to go away.
    pub fn close(&self) {
        self.inner.closing.send_replace(true);
    }

    /// How many accepted connections are still open.
    pub fn open_connections(&self) -> usize {
        *self.inner.open.borrow()
    }

    /// Resolves once no connection is open.
    pub async fn all_closed(&self) {
        let mut open = self.inner.open.subscribe();
        let _ = open.wait_for(|n| *n == 0).await;
    }

    /// A signal that resolves once [`Drain::close`] was called.
    pub fn closing(&self) -> Closing {
        Closing(self.inner.closing.subscribe())
    }

    /// Counts a connection as open until the returned guard is dropped.
    pub fn track(&self) -> Tracked {
        self.inner.open.send_modify(|n| *n += 1);
        Tracked(self.clone())
    }
}

/// Waits for [`Drain::close`].
#[derive(Debug)]
pub struct Closing(watch::Receiver<bool>);

impl Closing {
    /// Resolves once connections should go away (at once if they already should).
    pub async fn wait(&mut self) {
        // The sender lives as long as any Drain handle, including the one in this
        // connection's guard, so an error here cannot happen while anyone cares.
        let _ = self.0.wait_for(|closing| *closing).await;
    }
}

/// An open connection, counted until dropped.
#[derive(Debug)]
pub struct Tracked(Drain);

impl Drop for Tracked {
    fn drop(&mut self) {
        self.0.inner.open.send_modify(|n| *n = n.saturating_sub(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn counts_connections_and_signals_closing() {
        let drain = Drain::default();
        let mut closing = drain.closing();
        let a = drain.track();
        let b = drain.track();
        assert_eq!(drain.open_connections(), 2);
        let waiter = tokio::spawn({
            let drain = drain.clone();
            async move { drain.all_closed().await }
        });
        drain.close();
        closing.wait().await;
        // Late subscribers see it too.
        drain.closing().wait().await;
        drop(a);
        assert!(!waiter.is_finished());
        drop(b);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("all closed")
            .expect("task");
        assert_eq!(drain.open_connections(), 0);
    }
}
