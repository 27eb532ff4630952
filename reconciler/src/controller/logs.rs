//! The live log fan-out: lines from the agents go into a deployment's log file or a container's recent lines,
//! and to every live reader (SSE streams of the API and the dashboard). Progress of a deployment goes into its
//! record, and wakes the live pages so that stages move as they happen.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use tokio::sync::broadcast;

use super::Controller;

/// How many lines of each container's output are kept in memory.
pub const CONTAINER_LOG_LINES: usize = 1000;

/// A log line as the API streams it: of a deployment (with its line number) or of a container.
#[derive(Clone, Debug)]
pub enum LiveLog {
    Deployment { id: u64, line_no: u64, line: String },
    Container { name: String, seq: u64, line: String },
}

pub struct Logs {
    live: broadcast::Sender<LiveLog>,
    /// Recent lines of each container, for `sdp logs SANDBOX/SERVICE`.
    pub container_logs: Mutex<HashMap<String, VecDeque<(u64, String)>>>,
    /// Deployment logs held open while lines come in.
    writers: Mutex<HashMap<u64, crate::store::LogWriter>>,
}

impl Default for Logs {
    fn default() -> Logs {
        Logs {
            live: broadcast::channel(4096).0,
            container_logs: Mutex::default(),
            writers: Mutex::default(),
        }
    }
}

impl Logs {
    /// Forgets the recent output of every container no report of `actual` has: a removed container's lines go with it.
    pub fn forget_all_but(&self, actual: &crate::plan::Actual) {
        let mut all = self.container_logs.lock().unwrap_or_else(|e| e.into_inner());
        if all.is_empty() {
            // Nothing to forget: no set of every container's name (11,000 of them on a busy node) is made.
            return;
        }
        let live: std::collections::BTreeSet<&str> = [sdp_protocol::Role::Micro, sdp_protocol::Role::Gateway]
            .iter()
            .flat_map(|r| actual.of(*r).containers.iter().map(|c| c.name.as_str()))
            .collect();
        all.retain(|name, _| live.contains(name.as_str()));
    }

    /// Every line from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<LiveLog> {
        self.live.subscribe()
    }
}

impl Controller {
    /// Progress of a deployment, from an agent.
    pub fn progress(&self, p: sdp_protocol::Progress) {
        let Ok(id) = p.deployment_id.parse::<u64>() else { return };
        let updated = self
            .store
            .update_deployment(id, |d| match d.stages.iter_mut().find(|s| s.stage == p.stage) {
                Some(s) => {
                    s.state = p.state;
                    s.elapsed_ms = p.elapsed_ms;
                }
                None => d.stages.push(crate::store::StageRecord {
                    stage: p.stage,
                    state: p.state,
                    elapsed_ms: p.elapsed_ms,
                }),
            });
        match updated {
            // The deployment and sandbox pages show the stages: they refresh on this.
            Ok(_) => self.changes.send_modify(|n| *n += 1),
            Err(e) => tracing::error!("cannot record the progress of deployment {id}: {e:#}"),
        }
    }

    /// A log line from an agent: into the deployment's log file, or the container's recent lines; and to every
    /// live reader.
    pub fn log(&self, l: sdp_protocol::LogLine) {
        let logs = &self.logs;
        let mut line = l.line;
        if l.dropped_before > 0 {
            line = format!(
                "[sdp: {} lines dropped under pressure before this one] {line}",
                l.dropped_before
            );
        }
        if let Some(id) = l.deployment_id.and_then(|d| d.parse::<u64>().ok()) {
            let written = {
                let mut writers = logs.writers.lock().unwrap_or_else(|e| e.into_inner());
                if !writers.contains_key(&id) {
                    // A few deployments write at once; older handles are closed rather than kept forever.
                    if writers.len() >= 32 {
                        writers.clear();
                    }
                    match self.store.log(id).writer() {
                        Ok(w) => {
                            writers.insert(id, w);
                        }
                        Err(e) => tracing::error!("cannot open the log of deployment {id}: {e:#}"),
                    }
                }
                writers.get_mut(&id).map(|w| w.append(&line))
            };
            let line_no = match written {
                Some(Ok(n)) => n,
                Some(Err(e)) => {
                    tracing::error!("cannot write the log of deployment {id}: {e:#}");
                    return;
                }
                None => return,
            };
            let _ = logs.live.send(LiveLog::Deployment { id, line_no, line });
        } else if let Some(name) = l.container {
            {
                let mut all = logs.container_logs.lock().unwrap_or_else(|e| e.into_inner());
                let lines = all.entry(name.clone()).or_default();
                lines.push_back((l.seq, line.clone()));
                while lines.len() > CONTAINER_LOG_LINES {
                    lines.pop_front();
                }
            }
            let _ = logs.live.send(LiveLog::Container { name, seq: l.seq, line });
        }
    }
}
