//! Frames to the reconciler, in one queue, in order. Reports, progress and results must arrive: they wait for
//! room. Log lines never wait: they may fill only part of the queue (`LOG_LINES` lines and `LOG_BYTES` bytes at
//! once), so a chatty container or a slow reconciler costs the agent a bounded amount of memory and never keeps a
//! report from its room. A line that does not fit is dropped and counted; the count goes out with the next line
//! that fits, or as a line of its own (`[sdp: 1234 lines dropped under pressure]`) once the queue has drained.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

use sdp_protocol::{ActualState, AgentFrame, LogLine};
use tokio::sync::{Mutex, mpsc};

/// Frames the queue holds at most.
const QUEUE: usize = 1024;
/// Log lines the queue holds at most: the rest of it stays free for the frames that must arrive.
const LOG_LINES: usize = 512;
/// Bytes of log lines the queue holds at most (each line is cut to `MAX_LOG_LINE`, 16 KiB, before it queues).
const LOG_BYTES: usize = 1 << 20;

/// The sending side, cloned into every task that reports.
#[derive(Clone)]
pub struct Outbox {
    tx: mpsc::Sender<AgentFrame>,
    shared: Arc<Shared>,
    /// The last report sent and when, so that an unchanged node is not reported again, whoever scanned it, but
    /// every `REPORT_AGAIN_AFTER`.
    last_report: Arc<Mutex<Option<(ActualState, std::time::Instant)>>>,
}

/// The receiving side, read by the connection's writer.
pub struct Queue {
    rx: mpsc::Receiver<AgentFrame>,
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    /// Log lines, and their bytes, in the queue now.
    log_lines: AtomicUsize,
    log_bytes: AtomicUsize,
    /// Lines dropped and not yet said, and where the last of them came from (its deployment, its container).
    dropped: AtomicU64,
    dropped_from: std::sync::Mutex<(Option<String>, Option<String>)>,
    seq: AtomicU64,
}

impl Outbox {
    pub fn new() -> (Outbox, Queue) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let shared = Arc::new(Shared::default());
        let outbox = Outbox {
            tx,
            shared: shared.clone(),
            last_report: Arc::default(),
        };
        (outbox, Queue { rx, shared })
    }

    /// Frames that must arrive (reports, progress, results): waits for room.
    pub async fn send(&self, frame: AgentFrame) {
        let _ = self.tx.send(frame).await;
    }

    /// Takes a report with `scan` and sends it unless it is the one sent last, less than `REPORT_AGAIN_AFTER` ago;
    /// gives back what `scan` found (`None`: nothing to send). The lock is held from the scan to the send, so
    /// reports leave in the order they were taken: two actions that end side by side each scan, and the scan of the
    /// first, taken while the second's container was created but not yet started, once left after the second's own
    /// report and just before its result, and the reconciler redeployed the container it had just started.
    pub async fn report<F>(&self, scan: F) -> Option<ActualState>
    where
        F: Future<Output = Option<ActualState>>,
    {
        let mut last = self.last_report.lock().await;
        let state = scan.await?;
        let due = last
            .as_ref()
            .is_none_or(|(sent, at)| sent != &state || at.elapsed() >= sdp_protocol::timing::REPORT_AGAIN_AFTER);
        if due {
            *last = Some((state.clone(), std::time::Instant::now()));
            let _ = self.tx.send(AgentFrame::ActualState(state.clone())).await;
        }
        Some(state)
    }

    /// A log line, cut to `MAX_LOG_LINE`: never waits; when its share of the queue is full the line is dropped
    /// and counted.
    pub fn log(&self, deployment_id: Option<String>, container: Option<String>, mut line: String) {
        let shared = &self.shared;
        sdp_protocol::cut_line(&mut line, 0);
        let size = line.len();
        let lines = shared.log_lines.fetch_add(1, Relaxed) + 1;
        let bytes = shared.log_bytes.fetch_add(size, Relaxed) + size;
        if lines > LOG_LINES || bytes > LOG_BYTES {
            shared.unqueued(size);
            shared.drop_line(deployment_id, container);
            return;
        }
        let dropped_before = shared.dropped.swap(0, Relaxed);
        let frame = AgentFrame::LogLine(LogLine {
            deployment_id: deployment_id.clone(),
            container: container.clone(),
            seq: shared.seq.fetch_add(1, Relaxed) + 1,
            line,
            dropped_before,
        });
        if self.tx.try_send(frame).is_err() {
            // The queue is full of frames that must arrive, or closed.
            shared.unqueued(size);
            shared.dropped.fetch_add(dropped_before, Relaxed);
            shared.drop_line(deployment_id, container);
        }
    }
}

impl Shared {
    fn unqueued(&self, size: usize) {
        self.log_lines.fetch_sub(1, Relaxed);
        self.log_bytes.fetch_sub(size, Relaxed);
    }

    fn drop_line(&self, deployment_id: Option<String>, container: Option<String>) {
        *self.dropped_from.lock().unwrap_or_else(|e| e.into_inner()) = (deployment_id, container);
        self.dropped.fetch_add(1, Relaxed);
    }
}

impl Queue {
    /// The next frame to send; `None` once every `Outbox` is gone. When the queue has drained and lines were
    /// dropped since the last that went, a line saying how many comes first.
    pub async fn next(&mut self) -> Option<AgentFrame> {
        if self.rx.is_empty() {
            let dropped = self.shared.dropped.swap(0, Relaxed);
            if dropped > 0 {
                let (deployment_id, container) = self
                    .shared
                    .dropped_from
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                return Some(AgentFrame::LogLine(LogLine {
                    deployment_id,
                    container,
                    seq: self.shared.seq.fetch_add(1, Relaxed) + 1,
                    line: format!("[sdp: {dropped} lines dropped under pressure]"),
                    dropped_before: 0,
                }));
            }
        }
        let frame = self.rx.recv().await?;
        if let AgentFrame::LogLine(l) = &frame {
            self.shared.unqueued(l.line.len());
        }
        Some(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sdp_protocol::MAX_LOG_LINE;

    fn lines(frames: &[AgentFrame]) -> Vec<&LogLine> {
        frames
            .iter()
            .filter_map(|f| match f {
                AgentFrame::LogLine(l) => Some(l),
                _ => None,
            })
            .collect()
    }

    /// Takes what the queue holds now, as the writer would send it.
    async fn drain(queue: &mut Queue) -> Vec<AgentFrame> {
        let mut out = Vec::new();
        while !queue.rx.is_empty() || queue.shared.dropped.load(Relaxed) > 0 {
            out.push(queue.next().await.expect("an outbox is alive"));
        }
        out
    }

    #[tokio::test]
    async fn a_burst_larger_than_the_queue_is_dropped_and_counted_and_reports_still_get_through() {
        let (outbox, mut queue) = Outbox::new();
        let burst = 10_000;
        for i in 0..burst {
            outbox.log(None, Some("sandbox-box-chatty".into()), format!("line {i}"));
        }
        assert_eq!(queue.rx.len(), LOG_LINES, "log lines take no more than their share");
        // Nobody reads the queue (a slow reconciler), and the state must still go out.
        tokio::time::timeout(std::time::Duration::from_secs(10), async {
            for _ in 0..QUEUE - LOG_LINES {
                outbox.send(AgentFrame::ActualState(ActualState::default())).await;
            }
        })
        .await
        .expect("reports never wait behind log lines");

        let frames = drain(&mut queue).await;
        let logs = lines(&frames);
        assert_eq!(
            logs.len(),
            LOG_LINES + 1,
            "the lines that fit, and one that counts the rest"
        );
        assert_eq!(logs[0].line, "line 0");
        let last = logs.last().unwrap();
        assert_eq!(
            last.line,
            format!("[sdp: {} lines dropped under pressure]", burst - LOG_LINES)
        );
        assert_eq!(
            last.container.as_deref(),
            Some("sandbox-box-chatty"),
            "said where the lines were"
        );
        assert!(queue.shared.log_lines.load(Relaxed) == 0 && queue.shared.log_bytes.load(Relaxed) == 0);

        // Room again: the next line goes, with nothing left to count.
        outbox.log(None, Some("sandbox-box-chatty".into()), "after".into());
        let after = drain(&mut queue).await;
        assert_eq!(lines(&after)[0].line, "after");
        assert_eq!(lines(&after)[0].dropped_before, 0);
    }

    fn state(network: &str) -> ActualState {
        ActualState {
            networks: vec![network.to_string()],
            ..ActualState::default()
        }
    }

    #[tokio::test]
    async fn reports_leave_in_the_order_they_were_taken_even_when_an_older_scan_ends_later() {
        let (outbox, mut queue) = Outbox::new();
        let (scanning, scan_started) = tokio::sync::oneshot::channel::<()>();
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        // The first action's scan: it sees the node as it was, and ends late.
        let first = {
            let outbox = outbox.clone();
            tokio::spawn(async move {
                outbox
                    .report(async {
                        let _ = scanning.send(());
                        let _ = released.await;
                        Some(state("before the second action's start"))
                    })
                    .await
            })
        };
        scan_started.await.expect("the first scan started");
        // The second action ends and scans while the first scan runs.
        let second = {
            let outbox = outbox.clone();
            tokio::spawn(async move { outbox.report(async { Some(state("after")) }).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let _ = release.send(());
        first.await.unwrap();
        second.await.unwrap();
        let sent: Vec<String> = drain(&mut queue)
            .await
            .into_iter()
            .filter_map(|f| match f {
                AgentFrame::ActualState(s) => Some(s.networks[0].clone()),
                _ => None,
            })
            .collect();
        assert_eq!(
            sent,
            ["before the second action's start", "after"],
            "the last report is the newest"
        );

        // An unchanged node is not reported again, and a scan that found nothing sends nothing.
        assert!(outbox.report(async { Some(state("after")) }).await.is_some());
        assert!(outbox.report(async { None }).await.is_none());
        assert!(queue.rx.is_empty());
    }

    #[tokio::test]
    async fn long_lines_are_cut_and_their_bytes_bound_the_queue() {
        let (outbox, mut queue) = Outbox::new();
        for _ in 0..200 {
            outbox.log(Some("7".into()), None, "x".repeat(1 << 20));
        }
        let queued = queue.rx.len();
        assert!(
            queued * MAX_LOG_LINE <= LOG_BYTES && queued < 200,
            "{queued} lines queued"
        );
        // A line that fits goes with the count of those dropped before it.
        while queue.rx.len() > 1 {
            queue.next().await;
        }
        outbox.log(Some("7".into()), None, "short".into());
        let frames = drain(&mut queue).await;
        let logs = lines(&frames);
        assert!(logs.iter().all(|l| l.line.len() <= MAX_LOG_LINE));
        let short = logs.iter().find(|l| l.line == "short").expect("the short line fits");
        assert_eq!(short.dropped_before, 200 - queued as u64);
    }
}
