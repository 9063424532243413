//! The drain sequence after the shutdown token fired: readiness off (so a load balancer
//! stops sending), in-flight requests finish within their grace, the integrity trail gets its
//! final checkpoint, senders deliver what is
//! queued until `shutdown.drain_timeout` and are then stopped, and the queue is closed with
//! its cursors persisted. What was not delivered stays on disk for the next start.

use std::time::Duration;

use tokio_util::task::TaskTracker;

use crate::admin::Readiness;
use crate::queue::Queue;
use crate::sender::StopSignals;

/// Everything the drain waits for.
#[derive(Debug)]
pub struct Drain {
    /// Cleared first.
    pub ready: Readiness,
    /// The webhook connections (already told to close).
    pub connections: TaskTracker,
    /// How long requests in flight may take to finish.
    pub request_grace: Duration,
    /// The destination senders.
    pub senders: TaskTracker,
    /// Their drain and stop signals.
    pub signals: StopSignals,
    /// How long senders may keep delivering.
    pub drain_timeout: Duration,
    /// Whether the integrity trail closes with a final checkpoint before the senders drain.
    pub final_checkpoint: bool,
    /// Closed last.
    pub queue: Queue,
}

impl Drain {
    /// Runs the sequence.
    pub async fn run(self) {
        self.ready.set(false);
        tracing::info!("shutting down: finishing in-flight requests");
        self.connections.close();
        if tokio::time::timeout(self.request_grace, self.connections.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "some requests did not finish in time; their batches were not acknowledged"
            );
        }
        if self.final_checkpoint
            && let Err(e) = self
                .queue
                .append(vec![bytes::Bytes::from_static(crate::integrity::FINAL)])
                .await
        {
            tracing::warn!(error = %e, "cannot store the integrity trail's final checkpoint");
        }
        tracing::info!(timeout = ?self.drain_timeout, "draining destinations");
        self.signals.drain.cancel();
        if tokio::time::timeout(self.drain_timeout, self.senders.wait())
            .await
            .is_err()
        {
            self.signals.stop.cancel();
            self.senders.wait().await;
        }
        self.queue.close().await;
    }
}
