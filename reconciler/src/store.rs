//! What the reconciler keeps across restarts, in one redb file under the data dir: port allocations, the last
//! applied spec hash per container, the deployments (the audit trail), a bounded event log, and when each sandbox
//! was last active. Deployment logs are append-only files beside it, each with an index of line offsets so that a
//! tail is read from the end, not scanned.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Once};

use anyhow::{Context, Result};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::desired::{Allocations, Leaving};

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
    /// The redb file, for messages about what in it cannot be read.
    path: PathBuf,
    logs: PathBuf,
    max_events: u64,
}

impl Store {
    /// Opens (or creates) the store under `data`. A store that cannot be opened is never changed to make it open:
    /// the error says whether another process holds it, it is damaged (and how to restore it), or it may not be read.
    pub fn open(data: &Path) -> Result<Store> {
        fs::create_dir_all(data).map_err(|e| cannot_use(data, data, "create the data dir", e))?;
        let logs = data.join("logs");
        fs::create_dir_all(&logs).map_err(|e| cannot_use(data, &logs, "create", e))?;
        let path = data.join("sdp.redb");
        let db = open_db(&path).map_err(|failure| failure.explain(&path, data))?;
        Ok(Store {
            db: Arc::new(db),
            path,
            logs,
            max_events: MAX_EVENTS,
        })
    }

    /// The same store keeping at most `max` events (tests use a small bound).
    pub fn with_event_limit(mut self, max: u64) -> Store {
        self.max_events = max.max(1);
        self
    }

    /// A stored value, or an error that names it (`what`: table and key) and the file. Only a damaged file holds
    /// bytes that are not the JSON this code wrote.
    fn decode<T: for<'de> Deserialize<'de>>(&self, bytes: &[u8], what: impl std::fmt::Display) -> Result<T> {
        serde_json::from_slice(bytes).with_context(|| {
            format!(
                "{what} in {} is unreadable: the file is damaged; restore it from a backup as deploy/RUNBOOK.md says \
                 under \"A damaged store\"",
                self.path.display()
            )
        })
    }

    /// A value of a list (deployments, events, sessions) that cannot be read is left out and logged, not an error:
    /// one damaged record must not take the history, the dashboard or the start of the reconciler with it.
    fn decode_or_skip<T: for<'de> Deserialize<'de>>(&self, bytes: &[u8], what: impl std::fmt::Display) -> Option<T> {
        self.decode(bytes, what)
            .map_err(|e| tracing::warn!("left out: {e:#}"))
            .ok()
    }

    /// A single value by name. One that cannot be read is an error, not its default: a default would silently move
    /// every sandbox's ports (allocations) or disown every container (installation).
    fn get_meta<T: for<'de> Deserialize<'de> + Default>(&self, key: &str) -> Result<T> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(META)?;
        Ok(match table.get(key)? {
            Some(v) => self.decode(v.value(), format_args!("{key} (table meta)"))?,
            None => T::default(),
        })
    }

    fn put_meta<T: Serialize>(&self, key: &str, value: &T) -> Result<()> {
        self.put_metas(&[(key, serde_json::to_vec(value)?)])
    }

    /// Values (as JSON) by key, in one transaction: all of them are written, or none.
    fn put_metas(&self, values: &[(&str, Vec<u8>)]) -> Result<()> {
        let txn = self.db.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            for (key, bytes) in values {
                meta.insert(*key, bytes.as_slice())?;
            }
        }
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
            // A session that cannot be read only means its user logs in again.
            let Some(s) = self.decode_or_skip::<StoredSession>(value.value(), "a session (table sessions)") else {
                continue;
            };
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
        let leaving: Vec<(String, String, u16, u64)> = self.get_meta("leaving ports")?;
        Ok(Allocations {
            ports: stored.into_iter().map(|(sb, svc, p)| ((sb, svc), p)).collect(),
            leaving: leaving
                .into_iter()
                .map(|(sandbox, service, port, since)| {
                    (
                        port,
                        Leaving {
                            sandbox,
                            service,
                            since,
                        },
                    )
                })
                .collect(),
        })
    }

    /// The ports given out and the ports leaving, in one transaction: a port is never lost between the two.
    pub fn set_allocations(&self, a: &Allocations) -> Result<()> {
        let flat: Vec<(&str, &str, u16)> = a
            .ports
            .iter()
            .map(|((sb, svc), p)| (sb.as_str(), svc.as_str(), *p))
            .collect();
        let leaving: Vec<(&str, &str, u16, u64)> = a
            .leaving
            .iter()
            .map(|(p, who)| (who.sandbox.as_str(), who.service.as_str(), *p, who.since))
            .collect();
        self.put_metas(&[
            ("allocations", serde_json::to_vec(&flat)?),
            ("leaving ports", serde_json::to_vec(&leaving)?),
        ])
    }

    /// When each sandbox last changed in git or was deployed (unix seconds).
    pub fn activity(&self) -> Result<BTreeMap<String, u64>> {
        self.get_meta("activity")
    }

    pub fn set_activity(&self, activity: &BTreeMap<String, u64>) -> Result<()> {
        self.put_meta("activity", activity)
    }

    /// The branches of each repository a SandboxSet needs, as last listed.
    pub fn branches(&self) -> Result<crate::sets::Branches> {
        self.get_meta("branches")
    }

    pub fn set_branches(&self, branches: &crate::sets::Branches) -> Result<()> {
        self.put_meta("branches", branches)
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
                Some(v) => Some(self.decode(v.value(), format_args!("deployment {id} (table deployments)"))?),
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
            Some(v) => Some(self.decode(v.value(), format_args!("deployment {id} (table deployments)"))?),
            None => None,
        })
    }

    /// The newest deployments first, filtered, at most `limit`.
    pub fn deployments(&self, filter: impl Fn(&Deployment) -> bool, limit: usize) -> Result<Vec<Deployment>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(DEPLOYMENTS)?;
        let mut out = Vec::new();
        for row in table.iter()?.rev() {
            let (id, v) = row?;
            let what = format_args!("deployment {} (table deployments)", id.value());
            let Some(d) = self.decode_or_skip::<Deployment>(v.value(), what) else {
                continue;
            };
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
            let (seq, v) = row?;
            let Some(e) = self.decode_or_skip::<Event>(v.value(), format_args!("event {} (table events)", seq.value()))
            else {
                continue;
            };
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

/// Why the redb file could not be opened: redb's error, or the message of a panic inside redb (it asserts on some
/// damage, a truncated file among them, instead of returning an error).
enum OpenFailure {
    Redb(redb::Error),
    Panicked(String),
}

impl<E: Into<redb::Error>> From<E> for OpenFailure {
    fn from(e: E) -> OpenFailure {
        OpenFailure::Redb(e.into())
    }
}

impl OpenFailure {
    /// The message an operator acts on, for the file at `path` in the data dir `data`.
    fn explain(self, path: &Path, data: &Path) -> anyhow::Error {
        let shown = path.display();
        let detail = match self {
            OpenFailure::Redb(redb::Error::DatabaseAlreadyOpen) => {
                return anyhow::anyhow!(
                    "cannot open {shown}: another process has it open. Is another `sdp serve` using this data dir? \
                     `fuser -v {shown}` shows which"
                );
            }
            OpenFailure::Redb(redb::Error::Io(e)) => match e.kind() {
                ErrorKind::UnexpectedEof => format!("it ends too early, as a truncated file does ({e})"),
                // redb's answer to a file that does not start with its magic number.
                ErrorKind::InvalidData => "it is not a redb database file".to_string(),
                _ => return cannot_use(data, path, "open", e),
            },
            OpenFailure::Redb(redb::Error::UpgradeRequired(version)) => {
                return anyhow::anyhow!(
                    "cannot open {shown}: it is in redb's file format {version}, which this sdp no longer reads. Run \
                     the sdp that wrote it, or restore a backup made by this one (deploy/RUNBOOK.md, \
                     \"Backup and restore\")"
                );
            }
            OpenFailure::Redb(redb::Error::Corrupted(why)) => format!("redb: {why}"),
            OpenFailure::Redb(redb::Error::RepairAborted) => "redb could not repair it".to_string(),
            OpenFailure::Redb(e) => return anyhow::anyhow!("cannot open {shown}: {e}"),
            OpenFailure::Panicked(why) => format!("redb: {why}"),
        };
        anyhow::anyhow!(
            "{shown} is damaged ({detail}); sdp has left it as it is. Restore the data dir from a backup as \
             deploy/RUNBOOK.md says under \"A damaged store\": stop sdp-reconciler, move {shown} and {logs} aside \
             (`mv {shown} {shown}.damaged`), untar the newest backup into {data}, start. Without a backup, moving \
             them aside is enough: sdp starts with an empty store (the desired state comes back from git; history \
             and unpinned ports do not)",
            logs = data.join("logs").display(),
            data = data.display()
        )
    }
}

/// An I/O error on the data dir, with what to do when it is about permissions.
fn cannot_use(data: &Path, path: &Path, doing: &str, e: std::io::Error) -> anyhow::Error {
    let shown = path.display();
    match e.kind() {
        ErrorKind::PermissionDenied => anyhow::anyhow!(
            "cannot {doing} {shown}: permission denied. The reconciler runs as user sdp and owns its data dir: \
             `sudo chown -R sdp:sdp {}`",
            data.display()
        ),
        ErrorKind::ReadOnlyFilesystem => {
            anyhow::anyhow!("cannot {doing} {shown}: the file system is read-only (`findmnt -T {shown}`)")
        }
        _ => anyhow::anyhow!("cannot {doing} {shown}: {e}"),
    }
}

/// Opens the redb file, creating it and its tables when needed, and reads every table through once, so that damage
/// is found now, with a clear message, rather than in the middle of a request. A file that is there is first opened
/// read-only: a damaged one is never written to. Only a file left by an unclean shutdown is opened for writing
/// before it is checked, because redb repairs it on open (that is what its repair is for).
/// redb's cache of the file's pages (its default is 1 GiB): every transaction here is short and the kernel's
/// page cache holds the file besides, so a few MB keep the reconciler's memory bounded as the history grows.
const CACHE_BYTES: usize = 4 << 20;

fn open_db(path: &Path) -> Result<Database, OpenFailure> {
    let exists = match fs::metadata(path) {
        Ok(m) => m.len() > 0, // redb initialises an empty file, as it creates a missing one
        Err(e) if e.kind() == ErrorKind::NotFound => false,
        Err(e) => return Err(redb::Error::Io(e).into()),
    };
    if exists {
        match without_panic(|| read_through(&redb::ReadOnlyDatabase::open(path)?)) {
            Ok(_) => {}
            Err(OpenFailure::Redb(redb::Error::RepairAborted)) => tracing::warn!(
                "{} was not closed cleanly (the reconciler was killed, or the machine lost power): redb repairs it",
                path.display()
            ),
            Err(failure) => return Err(failure),
        }
    }
    without_panic(|| {
        let db = Database::builder().set_cache_size(CACHE_BYTES).create(path)?;
        if !read_through(&db)? {
            let txn = db.begin_write()?;
            txn.open_table(META)?;
            txn.open_table(APPLIED)?;
            txn.open_table(DEPLOYMENTS)?;
            txn.open_table(EVENTS)?;
            txn.open_table(SESSIONS)?;
            txn.commit()?;
        }
        Ok(db)
    })
}

/// Reads every row of every table; says whether all tables are there (a new file has none).
fn read_through(db: &impl ReadableDatabase) -> Result<bool, OpenFailure> {
    fn table<K: redb::Key + 'static, V: redb::Value + 'static>(
        txn: &redb::ReadTransaction,
        def: TableDefinition<K, V>,
    ) -> Result<bool, OpenFailure> {
        match txn.open_table(def) {
            Ok(table) => {
                for row in table.iter()? {
                    row?;
                }
                Ok(true)
            }
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
    let txn = db.begin_read()?;
    let all = [
        table(&txn, META)?,
        table(&txn, APPLIED)?,
        table(&txn, DEPLOYMENTS)?,
        table(&txn, EVENTS)?,
        table(&txn, SESSIONS)?,
    ];
    Ok(all.iter().all(|&there| there))
}

thread_local! {
    /// Set while redb works on a file that may be damaged: its panics are caught and reported, not printed.
    static QUIET_PANICS: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f`, turning a panic into `OpenFailure::Panicked` without the panic's own message on stderr (the error that
/// follows says it better).
fn without_panic<T>(f: impl FnOnce() -> Result<T, OpenFailure>) -> Result<T, OpenFailure> {
    static HOOK: Once = Once::new();
    // A panic hook cannot be set while the thread panics (that panics again, and aborts): a store opened from a
    // destructor during a failing test's unwinding (the e2e harness's cleanup) once aborted it before its cleanup, and
    // its containers and networks leaked.
    if std::thread::panicking() {
        return f();
    }
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET_PANICS.with(Cell::get) {
                previous(info);
            }
        }));
    });
    QUIET_PANICS.with(|q| q.set(true));
    let result = std::panic::catch_unwind(AssertUnwindSafe(f));
    QUIET_PANICS.with(|q| q.set(false));
    result.unwrap_or_else(|panic| {
        let why = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "it panicked".to_string());
        Err(OpenFailure::Panicked(why))
    })
}

/// A deployment's log: `N.log` holds the lines, `N.idx` the byte offset of each line as 8 little-endian bytes,
/// so line `k` is found with one seek. The text is the truth and the index is made from it: a crash or a full disk
/// can leave a line without its index entry, part of a line, or part of an entry, and `writer` mends that before
/// anything is appended; readers read only what the index covers, and check it against the text.
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

    /// Opens the log for appending line by line, with its files kept open (two writes a line). A torn end left by
    /// a crash or a full disk is mended first, so that new lines do not land after garbage.
    pub fn writer(&self) -> Result<LogWriter> {
        let (offset, lines) = self.mend()?;
        let open = |path: &Path| {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("cannot open {}", path.display()))
        };
        Ok(LogWriter {
            text: open(&self.text)?,
            index: open(&self.index)?,
            log: DeploymentLog {
                text: self.text.clone(),
                index: self.index.clone(),
            },
            offset,
            lines,
            torn: false,
        })
    }

    /// Makes the text end with a whole line and the index hold one entry per line, and says the text's length and
    /// its number of lines. When the last entry points at the start of the text's last line, which ends the text,
    /// both agree already (a cheap check, the usual case); otherwise the part line at the end is cut off and the
    /// index is made again from the text (a whole line that lost its entry keeps its place).
    fn mend(&self) -> Result<(u64, u64)> {
        let text_len = file_len(&self.text)?;
        let index_len = file_len(&self.index)?;
        if index_len % 8 == 0 && self.last_line_ends_text(index_len / 8, text_len)? {
            return Ok((text_len, index_len / 8));
        }
        let mut text = fs::read(&self.text).with_context(|| format!("cannot read {}", self.text.display()))?;
        let whole = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let cut = text.len() - whole;
        text.truncate(whole);
        let mut index = Vec::with_capacity(text.len() / 32 * 8);
        let mut start = 0u64;
        for (i, &b) in text.iter().enumerate() {
            if b == b'\n' {
                index.extend_from_slice(&start.to_le_bytes());
                start = i as u64 + 1;
            }
        }
        let lines = index.len() as u64 / 8;
        // The new index replaces the old whole (a reader sees one or the other), then the text loses its part line.
        let fresh = self.index.with_extension("idx.new");
        fs::write(&fresh, &index).with_context(|| format!("cannot write {}", fresh.display()))?;
        fs::rename(&fresh, &self.index).with_context(|| format!("cannot replace {}", self.index.display()))?;
        if cut > 0 {
            OpenOptions::new()
                .write(true)
                .open(&self.text)
                .and_then(|f| f.set_len(whole as u64))
                .with_context(|| format!("cannot cut the torn end of {}", self.text.display()))?;
        }
        tracing::warn!(
            "{} had a torn end (the reconciler stopped, or the disk was full, while writing it): {lines} whole \
             lines kept, {cut} bytes of a part line cut off, its index made again",
            self.text.display()
        );
        Ok((whole as u64, lines))
    }

    /// Does the index's last entry (of `lines`) start the text's last line, and that line end the text?
    fn last_line_ends_text(&self, lines: u64, text_len: u64) -> Result<bool> {
        if lines == 0 {
            return Ok(text_len == 0);
        }
        let last = self.offsets(lines - 1, 1)?[0];
        // A line longer than this is not one an agent sends: the index is wrong, or the text has more after it.
        if last >= text_len || text_len - last > 1 << 20 {
            return Ok(false);
        }
        let mut text = File::open(&self.text)?;
        let from = last.saturating_sub(1);
        text.seek(SeekFrom::Start(from))?;
        let mut tail = Vec::new();
        text.read_to_end(&mut tail)?;
        let (before, line) = if last == 0 {
            (true, &tail[..])
        } else {
            (tail.first() == Some(&b'\n'), &tail[1..])
        };
        Ok(before && line.iter().position(|&b| b == b'\n') == Some(line.len() - 1))
    }

    /// `count` index entries from line `from`.
    fn offsets(&self, from: u64, count: u64) -> Result<Vec<u64>> {
        let mut index = File::open(&self.index)?;
        index.seek(SeekFrom::Start(from * 8))?;
        let mut raw = vec![0u8; count as usize * 8];
        index.read_exact(&mut raw)?;
        Ok(raw
            .chunks_exact(8)
            .map(|c| {
                let mut entry = [0u8; 8];
                entry.copy_from_slice(c);
                u64::from_le_bytes(entry)
            })
            .collect())
    }

    /// How many lines there are.
    pub fn len(&self) -> u64 {
        fs::metadata(&self.index).map(|m| m.len() / 8).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Lines `from..` (0-based), at most `max`: what an SSE reader resumes with. Each line starts where its index
    /// entry says; one that does not is an error naming the file, never a wrong line.
    pub fn read_from(&self, from: u64, max: usize) -> Result<Vec<String>> {
        let count = self.len();
        if from >= count || max == 0 {
            return Ok(Vec::new());
        }
        let wanted = (count - from).min(max as u64);
        let offsets = self.offsets(from, wanted)?;
        // From the byte before the first line, which must end the line before it.
        let mut text = File::open(&self.text)?;
        text.seek(SeekFrom::Start(offsets[0].saturating_sub(1)))?;
        let mut reader = std::io::BufReader::new(text);
        let mut line = Vec::new();
        let mut starts_a_line = true;
        if offsets[0] > 0 {
            std::io::Read::by_ref(&mut reader).take(1).read_to_end(&mut line)?;
            starts_a_line = line == b"\n";
        }
        let mut out = Vec::with_capacity(offsets.len());
        let mut at = offsets[0];
        for (k, &offset) in offsets.iter().enumerate() {
            line.clear();
            let read = std::io::BufRead::read_until(&mut reader, b'\n', &mut line)? as u64;
            if !starts_a_line || offset != at || line.last() != Some(&b'\n') {
                anyhow::bail!(
                    "{} does not match its index {} at line {}: the log is damaged (it is mended when the \
                     deployment writes to it again)",
                    self.text.display(),
                    self.index.display(),
                    from + k as u64
                );
            }
            at += read;
            line.pop();
            out.push(String::from_utf8_lossy(&line).into_owned());
        }
        Ok(out)
    }

    /// The last `n` lines, read from the end.
    pub fn tail(&self, n: u64) -> Result<Vec<String>> {
        let count = self.len();
        self.read_from(count.saturating_sub(n), n as usize)
    }
}

/// The length of a file that may not be there yet.
fn file_len(path: &Path) -> Result<u64> {
    match fs::metadata(path) {
        Ok(m) => Ok(m.len()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// A deployment log held open for appending.
pub struct LogWriter {
    text: File,
    index: File,
    log: DeploymentLog,
    offset: u64,
    lines: u64,
    /// A write failed and could not be taken back: the files are mended before the next line.
    torn: bool,
}

impl LogWriter {
    /// Appends one line (newlines in it become spaces) and says its number (0-based). A line that cannot be
    /// written whole (a full disk) is taken back out of both files, so the next line is not misplaced.
    pub fn append(&mut self, line: &str) -> Result<u64> {
        if self.torn {
            // Mending may replace the index file: the fresh writer holds the new one.
            *self = self.log.writer()?;
        }
        let clean = line.replace(['\n', '\r'], " ");
        let mut bytes = Vec::with_capacity(clean.len() + 1);
        bytes.extend_from_slice(clean.as_bytes());
        bytes.push(b'\n');
        // The index entry is written after the text, so a reader never finds an offset without its line.
        let written = self
            .text
            .write_all(&bytes)
            .and_then(|()| self.index.write_all(&self.offset.to_le_bytes()));
        if let Err(e) = written {
            let undone = self
                .index
                .set_len(self.lines * 8)
                .and_then(|()| self.text.set_len(self.offset));
            self.torn = undone.is_err();
            return Err(e).with_context(|| format!("cannot write {}", self.log.text.display()));
        }
        self.offset += bytes.len() as u64;
        self.lines += 1;
        Ok(self.lines - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The tests run as root, which no file mode stops: the permission answer is checked on the error itself.
    #[test]
    fn permission_denied_says_who_must_own_the_data_dir_and_is_not_damage() {
        let data = Path::new("/var/lib/sdp");
        let path = data.join("sdp.redb");
        let denied = || std::io::Error::from(ErrorKind::PermissionDenied);
        let err = OpenFailure::Redb(redb::Error::Io(denied()))
            .explain(&path, data)
            .to_string();
        assert!(
            err.contains("cannot open /var/lib/sdp/sdp.redb: permission denied"),
            "{err}"
        );
        assert!(err.contains("sudo chown -R sdp:sdp /var/lib/sdp"), "{err}");
        assert!(!err.contains("damaged") && !err.contains("another"), "{err}");
        let err = cannot_use(data, data, "create the data dir", denied()).to_string();
        assert!(
            err.contains("cannot create the data dir /var/lib/sdp: permission denied"),
            "{err}"
        );
    }
}
