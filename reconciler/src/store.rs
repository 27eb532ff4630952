//! What the reconciler keeps across restarts, in one redb file under the data dir: port allocations, the last
//! applied spec hash per container, the deployments (the audit trail), a bounded event log, and when each sandbox
//! was last active. Deployment logs are append-only files beside it, each with an index of line offsets so that a
//! tail is read from the end, not scanned.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::desired::Allocations;

/// Single values (allocations, activity), as JSON by name.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// Last applied spec hash, by container name.
const APPLIED: TableDefinition<&str, &str> = TableDefinition::new("applied");
/// Deployments as JSON, by id (increasing).
const DEPLOYMENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("deployments");
/// Events as JSON, by sequence number; the oldest go past `MAX_EVENTS`.
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");

/// Login sessions as JSON (`user`, `expiresMs`), by the SHA-256 of their token: a copy of the store (a backup)
/// gives no one a session.
const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");

/// How many events are kept.
pub const MAX_EVENTS: u64 = 10_000;

/// How a deployment ended, or that it has not yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum DeploymentState {
    Running,
    Succeeded,
    Failed,
}

/// One stage of a deployment as the agent reported it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StageRecord {
    pub stage: sdp_protocol::Stage,
    pub state: sdp_protocol::StageState,
    pub elapsed_ms: u64,
}

/// One deploy of one container: the audit trail.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Deployment {
    pub id: u64,
    pub sandbox: String,
    pub service: String,
    /// The repository, by the service name the agents know it under.
    pub repo: String,
    pub branch: String,
    /// The service commit, once known (the reconciler's, or the one the agent checked out).
    pub commit: Option<String>,
    pub config_commit: String,
    pub config_author: String,
    pub environments: Vec<String>,
    /// What the plan found (`branch moved to …`, `spec changed`, `container missing`…).
    pub reason: String,
    /// Why the pass that deployed ran: `config commit`, `agent report` (a push seen by the agent, or drift),
    /// `resync`, `retry after backoff`… (merged when several came together). Empty in records from before.
    #[serde(default)]
    pub trigger: String,
    /// Unix milliseconds.
    pub started_ms: u64,
    pub ended_ms: Option<u64>,
    pub state: DeploymentState,
    pub stages: Vec<StageRecord>,
    pub error: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredSession {
    user: String,
    expires_ms: u64,
}

/// Something that happened, for the sandbox page and `sdp get`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub seq: u64,
    pub at_ms: u64,
    pub sandbox: Option<String>,
    pub message: String,
}

/// The store. Cheap to clone; every method is a short transaction.
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
    logs: PathBuf,
    max_events: u64,
}

impl Store {
    /// Opens (or creates) the store under `data`.
    pub fn open(data: &Path) -> Result<Store> {
        fs::create_dir_all(data).with_context(|| format!("cannot create the data dir {}", data.display()))?;
        let logs = data.join("logs");
        fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
        let path = data.join("sdp.redb");
        let db = Database::create(&path).with_context(|| {
            format!(
                "cannot open {}: is another `sdp serve` using this data dir?",
                path.display()
            )
        })?;
        let txn = db.begin_write()?;
        txn.open_table(META)?;
        txn.open_table(APPLIED)?;
        txn.open_table(DEPLOYMENTS)?;
        txn.open_table(EVENTS)?;
        txn.open_table(SESSIONS)?;
        txn.commit()?;
        Ok(Store {
            db: Arc::new(db),
            logs,
            max_events: MAX_EVENTS,
        })
    }

    /// The same store keeping at most `max` events (tests use a small bound).
    pub fn with_event_limit(mut self, max: u64) -> Store {
        self.max_events = max.max(1);
        self
    }

    fn get_meta<T: for<'de> Deserialize<'de> + Default>(&self, key: &str) -> Result<T> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(META)?;
        Ok(match table.get(key)? {
            Some(v) => serde_json::from_slice(v.value()).with_context(|| format!("stored {key} is unreadable"))?,
            None => T::default(),
        })
    }

    fn put_meta<T: Serialize>(&self, key: &str, value: &T) -> Result<()> {
        let bytes = serde_json::to_vec(value)?;
        let txn = self.db.begin_write()?;
        txn.open_table(META)?.insert(key, bytes.as_slice())?;
        txn.commit()?;
        Ok(())
    }

    /// The login sessions that have not expired by `now_ms`: (token hash, user, expiry in unix ms).
    pub fn sessions(&self, now_ms: u64) -> Result<Vec<(String, String, u64)>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(SESSIONS)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (hash, value) = entry?;
            let s: StoredSession = serde_json::from_slice(value.value())?;
            if s.expires_ms > now_ms {
                out.push((hash.value().to_string(), s.user, s.expires_ms));
            }
        }
        Ok(out)
    }

    /// Keeps a session (and drops the expired ones).
    pub fn put_session(&self, hash: &str, user: &str, expires_ms: u64, now_ms: u64) -> Result<()> {
        let bytes = serde_json::to_vec(&StoredSession {
            user: user.to_string(),
            expires_ms,
        })?;
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(SESSIONS)?;
            table.retain(|_, v| serde_json::from_slice::<StoredSession>(v).is_ok_and(|s| s.expires_ms > now_ms))?;
            table.insert(hash, bytes.as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }

    pub fn remove_session(&self, hash: &str) -> Result<()> {
        let txn = self.db.begin_write()?;
        txn.open_table(SESSIONS)?.remove(hash)?;
        txn.commit()?;
        Ok(())
    }

    /// This installation's id, made once from the kernel's randomness and kept: the agents label what they create
    /// with it, so a second installation on the same Docker engine (a demo, another team's) is somebody else.
    pub fn installation(&self) -> Result<String> {
        let id: String = self.get_meta("installation")?;
        if !id.is_empty() {
            return Ok(id);
        }
        use std::io::Read;
        let mut bytes = [0u8; 8];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut bytes))
            .context("cannot read /dev/urandom")?;
        let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        self.put_meta("installation", &id)?;
        Ok(id)
    }

    pub fn allocations(&self) -> Result<Allocations> {
        let stored: Vec<(String, String, u16)> = self.get_meta("allocations")?;
        Ok(Allocations {
            ports: stored.into_iter().map(|(sb, svc, p)| ((sb, svc), p)).collect(),
        })
    }

    pub fn set_allocations(&self, a: &Allocations) -> Result<()> {
        let flat: Vec<(&str, &str, u16)> = a
            .ports
            .iter()
            .map(|((sb, svc), p)| (sb.as_str(), svc.as_str(), *p))
            .collect();
        self.put_meta("allocations", &flat)
    }

    /// When each sandbox last changed in git or was deployed (unix seconds).
    pub fn activity(&self) -> Result<BTreeMap<String, u64>> {
        self.get_meta("activity")
    }

    pub fn set_activity(&self, activity: &BTreeMap<String, u64>) -> Result<()> {
        self.put_meta("activity", activity)
    }

    pub fn set_applied(&self, container: &str, spec_hash: &str) -> Result<()> {
        let txn = self.db.begin_write()?;
        txn.open_table(APPLIED)?.insert(container, spec_hash)?;
        txn.commit()?;
        Ok(())
    }

    pub fn applied(&self, container: &str) -> Result<Option<String>> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(APPLIED)?.get(container)?.map(|v| v.value().to_string()))
    }

    /// Records a new deployment and gives it the next id.
    pub fn start_deployment(&self, mut d: Deployment) -> Result<Deployment> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(DEPLOYMENTS)?;
            let next = table.last()?.map(|(k, _)| k.value() + 1).unwrap_or(1);
            d.id = next;
            table.insert(next, serde_json::to_vec(&d)?.as_slice())?;
        }
        txn.commit()?;
        Ok(d)
    }

    /// Changes a deployment in one transaction.
    pub fn update_deployment(&self, id: u64, change: impl FnOnce(&mut Deployment)) -> Result<Option<Deployment>> {
        let txn = self.db.begin_write()?;
        let out = {
            let mut table = txn.open_table(DEPLOYMENTS)?;
            let current: Option<Deployment> = match table.get(id)? {
                Some(v) => Some(serde_json::from_slice(v.value())?),
                None => None,
            };
            match current {
                Some(mut d) => {
                    change(&mut d);
                    table.insert(id, serde_json::to_vec(&d)?.as_slice())?;
                    Some(d)
                }
                None => None,
            }
        };
        txn.commit()?;
        Ok(out)
    }

    pub fn deployment(&self, id: u64) -> Result<Option<Deployment>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(DEPLOYMENTS)?;
        Ok(match table.get(id)? {
            Some(v) => Some(serde_json::from_slice(v.value())?),
            None => None,
        })
    }

    /// The newest deployments first, filtered, at most `limit`.
    pub fn deployments(&self, filter: impl Fn(&Deployment) -> bool, limit: usize) -> Result<Vec<Deployment>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(DEPLOYMENTS)?;
        let mut out = Vec::new();
        for row in table.iter()?.rev() {
            let (_, v) = row?;
            let d: Deployment = serde_json::from_slice(v.value())?;
            if filter(&d) {
                out.push(d);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Deployments a killed reconciler left running: they failed, and say why.
    pub fn fail_unfinished(&self, now_ms: u64) -> Result<usize> {
        let running: Vec<u64> = self
            .deployments(|d| d.state == DeploymentState::Running, usize::MAX)?
            .iter()
            .map(|d| d.id)
            .collect();
        for id in &running {
            self.update_deployment(*id, |d| {
                d.state = DeploymentState::Failed;
                d.ended_ms = Some(now_ms);
                d.error = Some("the reconciler stopped during this deployment; it is retried".into());
            })?;
        }
        Ok(running.len())
    }

    /// Appends an event, dropping the oldest beyond the limit (`MAX_EVENTS` by default).
    pub fn event(&self, at_ms: u64, sandbox: Option<&str>, message: String) -> Result<Event> {
        let txn = self.db.begin_write()?;
        let event = {
            let mut table = txn.open_table(EVENTS)?;
            let seq = table.last()?.map(|(k, _)| k.value() + 1).unwrap_or(1);
            let event = Event {
                seq,
                at_ms,
                sandbox: sandbox.map(str::to_string),
                message,
            };
            table.insert(seq, serde_json::to_vec(&event)?.as_slice())?;
            while table.len()? > self.max_events {
                table.pop_first()?;
            }
            event
        };
        txn.commit()?;
        Ok(event)
    }

    /// The newest events first, of one sandbox or of all.
    pub fn events(&self, sandbox: Option<&str>, limit: usize) -> Result<Vec<Event>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(EVENTS)?;
        let mut out = Vec::new();
        for row in table.iter()?.rev() {
            let (_, v) = row?;
            let e: Event = serde_json::from_slice(v.value())?;
            if sandbox.is_none() || e.sandbox.as_deref() == sandbox {
                out.push(e);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// The log of one deployment.
    pub fn log(&self, deployment: u64) -> DeploymentLog {
        DeploymentLog {
            text: self.logs.join(format!("{deployment}.log")),
            index: self.logs.join(format!("{deployment}.idx")),
        }
    }
}

/// A deployment's log: `N.log` holds the lines, `N.idx` the byte offset of each line as 8 little-endian bytes,
/// so line `k` is found with one seek.
pub struct DeploymentLog {
    text: PathBuf,
    index: PathBuf,
}

impl DeploymentLog {
    /// Appends lines (each without its newline).
    pub fn append(&self, lines: &[String]) -> Result<()> {
        let mut writer = self.writer()?;
        for line in lines {
            writer.append(line)?;
        }
        Ok(())
    }

    /// Opens the log for appending line by line, with its files kept open (two writes a line).
    pub fn writer(&self) -> Result<LogWriter> {
        let text = OpenOptions::new().create(true).append(true).open(&self.text)?;
        let index = OpenOptions::new().create(true).append(true).open(&self.index)?;
        let offset = text.metadata()?.len();
        let lines = index.metadata()?.len() / 8;
        Ok(LogWriter {
            text,
            index,
            offset,
            lines,
        })
    }

    /// How many lines there are.
    pub fn len(&self) -> u64 {
        fs::metadata(&self.index).map(|m| m.len() / 8).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Lines `from..` (0-based), at most `max`: what an SSE reader resumes with.
    pub fn read_from(&self, from: u64, max: usize) -> Result<Vec<String>> {
        let count = self.len();
        if from >= count {
            return Ok(Vec::new());
        }
        let mut index = File::open(&self.index)?;
        index.seek(SeekFrom::Start(from * 8))?;
        let mut first = [0u8; 8];
        index.read_exact(&mut first)?;
        let start = u64::from_le_bytes(first);
        let mut text = File::open(&self.text)?;
        text.seek(SeekFrom::Start(start))?;
        let wanted = (count - from).min(max as u64) as usize;
        let mut out = Vec::with_capacity(wanted);
        let mut reader = std::io::BufReader::new(text);
        let mut line = String::new();
        while out.len() < wanted {
            line.clear();
            if std::io::BufRead::read_line(&mut reader, &mut line)? == 0 {
                break;
            }
            out.push(line.trim_end_matches('\n').to_string());
        }
        Ok(out)
    }

    /// The last `n` lines, read from the end.
    pub fn tail(&self, n: u64) -> Result<Vec<String>> {
        let count = self.len();
        self.read_from(count.saturating_sub(n), n as usize)
    }
}

/// A deployment log held open for appending.
pub struct LogWriter {
    text: File,
    index: File,
    offset: u64,
    lines: u64,
}

impl LogWriter {
    /// Appends one line (newlines in it become spaces) and says its number (0-based).
    pub fn append(&mut self, line: &str) -> Result<u64> {
        let clean = line.replace(['\n', '\r'], " ");
        let mut bytes = Vec::with_capacity(clean.len() + 1);
        bytes.extend_from_slice(clean.as_bytes());
        bytes.push(b'\n');
        // The index entry is written after the text, so a reader never finds an offset without its line.
        self.text.write_all(&bytes)?;
        self.index.write_all(&self.offset.to_le_bytes())?;
        self.offset += bytes.len() as u64;
        self.lines += 1;
        Ok(self.lines - 1)
    }
}
