//! Frames between the reconciler and its agents, as JSON text messages over the agent's WebSocket; an agent's
//! report goes deflated, as a binary message, to a reconciler that says it reads those (see `deflated`).
//!
//! An agent opens with `Hello`; the reconciler answers `Welcome` or `Refused` (a version mismatch names both
//! versions). From then on the agent reports `ActualState` and streams `Progress` and `LogLine`; the reconciler
//! sends requests (`Ask`, each a type that implements `Request`: an action, a branch listing), each with a request id
//! that its `Answer` carries back. No I/O here: types, encoding and the version rule only.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

mod deflated;
mod request;

pub use deflated::{LAST, MORE, PIECE_BYTES, deflate, pieces};
pub use request::{ActionRequest, Answer, Ask, ListBranches, Request, read_answer};

/// The protocol version both sides announce. Frames change only with a new version: 2 replaced version 1's
/// `action`/`actionResult` and `listBranches`/`branches` frames with `ask` and `answer`.
pub const PROTOCOL_VERSION: u32 = 2;

/// The largest WebSocket frame an agent sends: a longer message (a busy node's report is a few MB) goes as
/// fragments of this size. The receiver's read buffer keeps the size of the largest frame it has read for as long
/// as the connection lives; a whole report in one frame kept 4.8 MB per agent in the reconciler.
pub const FRAGMENT_BYTES: usize = 64 << 10;

/// The byte ranges of the WebSocket frames a message of `len` bytes goes out as (RFC 6455 5.4: the first a text
/// frame, the others continuations, the last one final): one range up to `FRAGMENT_BYTES`, consecutive ranges of
/// that size after.
pub fn fragments(len: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    let count = len.div_ceil(FRAGMENT_BYTES).max(1);
    (0..count).map(move |i| i * FRAGMENT_BYTES..((i + 1) * FRAGMENT_BYTES).min(len))
}

/// A text message as the WebSocket frames an agent sends (`fragments`), each a slice of the same buffer.
#[cfg(feature = "ws")]
pub fn frames(text: String) -> impl Iterator<Item = tungstenite::Message> {
    use tungstenite::protocol::frame::Frame;
    use tungstenite::protocol::frame::coding::{Data, OpCode};
    let bytes = tungstenite::Bytes::from(text);
    let len = bytes.len();
    fragments(len).map(move |range| {
        let opcode = if range.start == 0 { Data::Text } else { Data::Continue };
        let last = range.end == len;
        tungstenite::Message::Frame(Frame::message(bytes.slice(range), OpCode::Data(opcode), last))
    })
}

/// `frame` as the WebSocket messages an agent sends: a report deflated (`deflate`) as binary messages, one a piece
/// (`deflated::pieces`), when the reconciler reads those (`readsDeflated` in its `Welcome`); anything else as one
/// text message, in fragments when long.
#[cfg(feature = "ws")]
pub fn agent_frames(frame: &AgentFrame, reads_deflated: bool) -> Vec<tungstenite::Message> {
    match frame {
        AgentFrame::ActualState(_) if reads_deflated => deflated::pieces(&deflate(frame))
            .map(|piece| tungstenite::Message::Binary(piece.into()))
            .collect(),
        _ => frames(encode(frame)).collect(),
    }
}

/// What an agent sends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum AgentFrame {
    Hello(Hello),
    ActualState(ActualState),
    /// The answer to an `Ask`, with its request id.
    Answer(Answer),
    Progress(Progress),
    LogLine(LogLine),
}

impl AgentFrame {
    /// Decodes one agent frame, as `decode` does; a report (megabytes from a busy node) is read straight into its
    /// `ActualState`. `decode` reads a frame of an internally tagged enum into a tree of serde's own first, which
    /// for a report of 10,000 containers is several times the size of its text.
    pub fn decode(text: &str) -> Result<AgentFrame, serde_json::Error> {
        AgentFrame::decode_after(text, &ActualState::default())
    }

    /// Decodes one agent frame, as `decode` does. A report's containers that are equal to one of `previous` (the
    /// report it replaces) with the same id are that container, shared, not a copy: a busy node reports 10,000
    /// containers again when one of them restarted, and the reconciler holds the last report while it reads the
    /// next, so without this every report was a second copy of all of them for a moment (megabytes that the
    /// allocator kept). A container sent exactly as the one before it would be written is not even read: reading
    /// it only to drop it made megabytes of garbage every few seconds, interleaved with what the report keeps.
    pub fn decode_after(text: &str, previous: &ActualState) -> Result<AgentFrame, serde_json::Error> {
        #[derive(Deserialize)]
        struct Tag<'a> {
            #[serde(rename = "type", borrow)]
            kind: Cow<'a, str>,
        }
        match serde_json::from_str::<Tag<'_>>(text) {
            Ok(tag) if tag.kind == "actualState" => {
                let mut de = serde_json::Deserializer::from_str(text);
                let frame = read_report(&mut de, previous)?;
                de.end().map(|()| frame)
            }
            _ => decode(text),
        }
    }
}

/// A report as it arrives: `ActualState` field for field (its attributes too), `type` aside, its containers read one
/// at a time as sent (`raw_containers`). Building the `ActualState` names every field, so a field added there does
/// not compile until it is added here.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Report {
    #[serde(deserialize_with = "raw_containers")]
    containers: Vec<Arc<Container>>,
    networks: Vec<String>,
    #[serde(deserialize_with = "worktrees")]
    worktrees: Arc<Vec<Worktree>>,
    #[serde(default, deserialize_with = "live_routes")]
    routes: RouteMaps,
    #[serde(default, deserialize_with = "default_routes")]
    route_defaults: RouteMaps,
    heads: Vec<BranchHead>,
}

/// A report read from `deserializer`, sharing what it can with `previous` (the report it replaces), as a frame: the
/// one way both text and deflated reports are read.
fn read_report<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
    previous: &ActualState,
) -> Result<AgentFrame, D::Error> {
    let _decoding = Decoding::start(previous);
    Report::deserialize(deserializer).map(|report| AgentFrame::ActualState(report.read()))
}

impl Report {
    fn read(self) -> ActualState {
        ActualState {
            containers: self.containers,
            networks: self.networks,
            worktrees: self.worktrees,
            routes: self.routes,
            route_defaults: self.route_defaults,
            heads: self.heads,
        }
    }
}

/// A report's containers, each the previous report's with its id when it was sent exactly as that one is written
/// (an agent writes what it reads as the reconciler does), else read (and still the previous one when equal,
/// `kept`). Each is taken as its text, one at a time: a list of millions of bad entries fails at the first, and
/// holds nothing else meanwhile. A container that cannot be read is named by its place in the list.
fn raw_containers<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<Arc<Container>>, D::Error> {
    struct Visit;
    impl<'de> serde::de::Visitor<'de> for Visit {
        type Value = Vec<Arc<Container>>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a list of containers")
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            #[derive(Deserialize)]
            struct Id<'a> {
                #[serde(borrow)]
                id: Cow<'a, str>,
            }
            let mut read = Vec::with_capacity(decoding(|d| d.previous.len()));
            // Owned, not borrowed from the text: a deflated report is read from a stream (`inflate_after`).
            while let Some(raw) = seq.next_element::<Box<serde_json::value::RawValue>>()? {
                let text = raw.get();
                let before = serde_json::from_str::<Id<'_>>(text)
                    .ok()
                    .and_then(|Id { id }| untried_with_id(&id))
                    .filter(|before| written_as(before, text));
                if let Some(before) = before {
                    read.push(before);
                    continue;
                }
                let container = serde_json::from_str::<Container>(text)
                    .map_err(|e| serde::de::Error::custom(format!("containers[{}]: {e}", read.len())))?;
                read.push(kept(container));
            }
            Ok(read)
        }
    }
    deserializer.deserialize_seq(Visit)
}

/// Whether `container`, written, is `text`: compared as it is written, so that the work stops at the first byte
/// that differs (a hostile report that sends one id a million times costs no more than reading it).
fn written_as(container: &Container, text: &str) -> bool {
    struct SameAs<'a>(&'a [u8]);
    impl std::io::Write for SameAs<'_> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            match self.0.strip_prefix(buf) {
                Some(rest) => {
                    self.0 = rest;
                    Ok(buf.len())
                }
                None => Err(std::io::Error::other("differs")),
            }
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut rest = SameAs(text.as_bytes());
    serde_json::to_writer(&mut rest, container).is_ok() && rest.0.is_empty()
}

thread_local! {
    /// While a report is decoded: what it may share (see `Decoding`). None outside a report, so that nothing
    /// collects values over a process's life.
    static DECODING: RefCell<Option<Shared>> = const { RefCell::new(None) };
}

/// What the report being decoded shares.
struct Shared {
    /// The label values and worktree fields read so far in it. A value many containers and worktrees carry (a
    /// commit, a branch, the installation, `true`, a sandbox's name) is kept once, not once each.
    values: HashSet<Arc<str>>,
    /// The containers of the report it replaces, by id.
    previous: Vec<Arc<Container>>,
    /// Whether each of `previous` was compared as written with a container of this report already: each is, once
    /// at most (a report never repeats an id, and a hostile one that does costs no more than the report before).
    tried: Vec<bool>,
    /// The worktrees of the report it replaces.
    worktrees_before: Arc<Vec<Worktree>>,
    /// The route maps of the report it replaces: `routes`, then `route_defaults`.
    routes_before: [RouteMaps; 2],
}

/// What `read` takes of the report being decoded (its default outside one): the last report's lists, to share
/// with it or to make room for as many entries (a report is mostly the one before, and its lists then take no room
/// they do not use, nor copies while they grow).
fn decoding<R: Default>(read: impl FnOnce(&Shared) -> R) -> R {
    DECODING.with(|d| d.borrow().as_ref().map(read).unwrap_or_default())
}

/// A report's worktrees: the last report's list itself when they are the same (10,000 worktrees are 640 KB, which
/// a report of one restarted container no longer copies), else a list as long as the last one.
fn worktrees<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Arc<Vec<Worktree>>, D::Error> {
    struct Visit;
    impl<'de> serde::de::Visitor<'de> for Visit {
        type Value = Arc<Vec<Worktree>>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a list of worktrees")
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let before = decoding(|d| d.worktrees_before.clone());
            // How many read so far are the last report's, in its order; the list is made at the first that is not.
            let mut same = 0;
            let mut read: Option<Vec<Worktree>> = None;
            while let Some(worktree) = seq.next_element::<Worktree>()? {
                match &mut read {
                    Some(read) => read.push(worktree),
                    None if before.get(same) == Some(&worktree) => same += 1,
                    None => {
                        let mut list = Vec::with_capacity(before.len().max(same + 1));
                        list.extend_from_slice(&before[..same]);
                        list.push(worktree);
                        read = Some(list);
                    }
                }
            }
            Ok(match read {
                Some(read) => Arc::new(read),
                None if same == before.len() => before,
                None => Arc::new(before[..same].to_vec()),
            })
        }
    }
    deserializer.deserialize_seq(Visit)
}

/// A report's `routes`: the last report's maps themselves when they are the same.
fn live_routes<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<RouteMaps, D::Error> {
    route_maps(deserializer, |d| d.routes_before[0].clone())
}

/// A report's `route_defaults`: the last report's maps themselves when they are the same.
fn default_routes<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<RouteMaps, D::Error> {
    route_maps(deserializer, |d| d.routes_before[1].clone())
}

/// A report's route maps by sandbox: `before` (the last report's) itself when they are the same, else a map made at
/// the first sandbox that differs. A gateway of 1,000 sandboxes reports 2,000 maps (0.8 MB held), which a report of
/// one restarted container no longer makes again for the moment it is read and compared. A sandbox named twice
/// keeps its last map, as a map does.
fn route_maps<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
    before: fn(&Shared) -> RouteMaps,
) -> Result<RouteMaps, D::Error> {
    struct Visit(fn(&Shared) -> RouteMaps);
    impl<'de> serde::de::Visitor<'de> for Visit {
        type Value = RouteMaps;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a map of sandbox names to routes")
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<RouteMaps, A::Error> {
            let before = decoding(self.0);
            // The last report's entries read so far, in its order; the map is made at the first that is not.
            let mut same = before.iter();
            let mut matched = 0;
            let first = |n: usize| -> BTreeMap<String, Routes> {
                before.iter().take(n).map(|(k, v)| (k.clone(), v.clone())).collect()
            };
            let mut read: Option<BTreeMap<String, Routes>> = None;
            while let Some((sandbox, routes)) = map.next_entry::<Text<'de>, Routes>()? {
                match &mut read {
                    Some(read) => {
                        read.insert(sandbox.0.into_owned(), routes);
                    }
                    None if same
                        .next()
                        .is_some_and(|(k, v)| k.as_str() == sandbox.as_ref() && *v == routes) =>
                    {
                        matched += 1
                    }
                    None => {
                        let mut made = first(matched);
                        made.insert(sandbox.0.into_owned(), routes);
                        read = Some(made);
                    }
                }
            }
            Ok(match read {
                Some(read) => RouteMaps::from(read),
                None if matched == before.len() => before,
                None => RouteMaps::from(first(matched)),
            })
        }
    }
    deserializer.deserialize_map(Visit(before))
}

/// Sharing is on while it lives (the decode of one report); off on every exit, a panic's included.
struct Decoding;

impl Decoding {
    fn start(previous: &ActualState) -> Decoding {
        let mut by_id = previous.containers.clone();
        by_id.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        DECODING.with(|d| {
            *d.borrow_mut() = Some(Shared {
                values: HashSet::new(),
                tried: vec![false; by_id.len()],
                previous: by_id,
                worktrees_before: previous.worktrees.clone(),
                routes_before: [previous.routes.clone(), previous.route_defaults.clone()],
            })
        });
        Decoding
    }
}

impl Drop for Decoding {
    fn drop(&mut self) {
        DECODING.with(|d| *d.borrow_mut() = None);
    }
}

/// The previous report's container with id `id` if no container of this report was compared as written with it
/// yet, while a report is decoded.
fn untried_with_id(id: &str) -> Option<Arc<Container>> {
    DECODING.with(|d| {
        let mut d = d.borrow_mut();
        let d = d.as_mut()?;
        let i = d.previous.binary_search_by(|p| p.id.as_str().cmp(id)).ok()?;
        (!std::mem::replace(&mut d.tried[i], true)).then(|| d.previous[i].clone())
    })
}

/// The previous report's container with id `id`, while a report is decoded.
fn previous_with_id(id: &str) -> Option<Arc<Container>> {
    DECODING.with(|d| {
        let d = d.borrow();
        let previous = d.as_ref().map_or(&[][..], |d| &d.previous[..]);
        let i = previous.binary_search_by(|p| p.id.as_str().cmp(id)).ok()?;
        Some(previous[i].clone())
    })
}

/// `container` as read in a report: the previous report's equal container of its id when there is one.
fn kept(container: Container) -> Arc<Container> {
    match previous_with_id(&container.id) {
        Some(before) if *before == container => before,
        _ => Arc::new(container),
    }
}

fn containers<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<Arc<Container>>, D::Error> {
    struct Visit;
    impl<'de> serde::de::Visitor<'de> for Visit {
        type Value = Vec<Arc<Container>>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a list of containers")
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut read = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
            while let Some(container) = seq.next_element()? {
                read.push(kept(container));
            }
            Ok(read)
        }
    }
    deserializer.deserialize_seq(Visit)
}

/// At most this many values are shared in one report, each at most `SHARED_TEXT_BYTES` long: past them a value is
/// its own, so that a hostile report of millions of distinct values costs no more than it did before sharing.
const SHARED_TEXTS: usize = 1 << 16;
const SHARED_TEXT_BYTES: usize = 256;

/// `value` as a label value or a worktree's field: the one already read in this report when there is one.
fn shared_text(value: &str) -> Arc<str> {
    DECODING.with(|d| match d.borrow_mut().as_mut().map(|d| &mut d.values) {
        Some(seen) if value.len() <= SHARED_TEXT_BYTES && seen.len() < SHARED_TEXTS => match seen.get(value) {
            Some(known) => known.clone(),
            None => {
                let new: Arc<str> = Arc::from(value);
                seen.insert(new.clone());
                new
            }
        },
        _ => Arc::from(value),
    })
}

/// What the reconciler sends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum ReconcilerFrame {
    /// The agent's Hello was accepted.
    Welcome {
        protocol_version: u32,
        /// The reconciler's installation: the agent labels what it creates with it (`sdp.installation`) and
        /// reports and touches only objects of this installation (or unlabeled ones, made before the label
        /// existed), so two installations on one Docker engine never prune each other's sandboxes.
        #[serde(default)]
        installation: String,
        /// The reconciler reads frames sent deflated, as binary messages (`deflate`): an agent sends its reports
        /// so. False from a release before them, which reads only text.
        #[serde(default)]
        reads_deflated: bool,
    },
    /// The agent's Hello was refused; the connection closes after this frame.
    Refused { reason: String },
    /// A request (see `Request`), answered by an `Answer` frame with the same request id.
    Ask(Ask),
    /// A push webhook named a repository: the agent that serves it (by service name, or by the last part of its
    /// clone's origin URL, `account` for `.../scm/cc/account.git`) fetches it now rather than at its next
    /// periodic fetch. No answer: the fetch shows in the agent's next report as moved branch heads.
    Fetch { repo: String },
}

/// The role an agent plays, from its config file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Role {
    /// Runs the Go microservices.
    Micro,
    /// Runs the PHP gateway and owns its config.php.
    Gateway,
}

/// The first frame of an agent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Hello {
    pub node: String,
    pub role: Role,
    pub protocol_version: u32,
    pub agent_version: String,
    /// The address other machines reach this node's published ports at (its configured advertised address).
    pub address: String,
    /// Repositories the agent serves, by service name (`gateway` for the gateway's).
    pub repos: Vec<String>,
    /// Runtime images present on the node, as `name:tag`.
    pub images: Vec<String>,
}

/// What is really on a node: only objects SDP manages.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActualState {
    /// Shared with the report before when equal (`AgentFrame::decode_after`).
    #[serde(deserialize_with = "containers")]
    pub containers: Vec<Arc<Container>>,
    /// Networks labelled `sdp.managed=true`, by name.
    pub networks: Vec<String>,
    /// Shared with the report before when equal (`AgentFrame::decode_after`).
    pub worktrees: Arc<Vec<Worktree>>,
    /// The gateway's live `<service>_url` map per sandbox, as read back from config.php. Shared with the report
    /// before when equal (`AgentFrame::decode_after`).
    #[serde(default, skip_serializing_if = "RouteMaps::is_empty")]
    pub routes: RouteMaps,
    /// Per sandbox, the OCP value of each `<service>_url` key: what the gateway branch's own config.php held
    /// before any patch. A route to `ocp` means this value. Shared with the report before when equal.
    #[serde(default, skip_serializing_if = "RouteMaps::is_empty")]
    pub route_defaults: RouteMaps,
    /// Heads of the remote branches that the desired state tracks.
    pub heads: Vec<BranchHead>,
}

/// A container labelled `sdp.managed=true`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    pub name: String,
    pub id: String,
    pub labels: Labels,
    pub state: ContainerState,
    /// Published host ports.
    pub ports: Vec<u16>,
    pub restart_count: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    /// The answer to the last probe of its `sdp.health-path`, when it has one and runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<Probe>,
}

/// A container's labels, by name. Kept as a list sorted by name rather than a `BTreeMap`: a report holds a
/// container for each of 10,000 services, each with six or seven labels, and a map gives each of them a node of
/// eleven slots; the names SDP sets (`labels::ALL`) are a byte each, not copied into every container (a label is
/// 32 bytes, not the 40 of a `Cow` name: 0.6 MB of 70,000), and the values within a report are shared
/// (`AgentFrame::decode`). Reads and writes as a JSON object, as a map does.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Labels(Vec<(LabelName, Arc<str>)>);

/// A label's name: one of `labels::ALL` by its place there, or a copy of one SDP does not set. 16 bytes: the
/// place goes where the copy's length would, and a null pointer tells them apart.
#[derive(Clone, Debug)]
enum LabelName {
    Known(u8),
    Other(Box<str>),
}

impl LabelName {
    fn new(name: &str) -> LabelName {
        match labels::ALL.iter().position(|known| *known == name) {
            Some(i) => LabelName::Known(i as u8),
            None => LabelName::Other(name.into()),
        }
    }
}

impl AsRef<str> for LabelName {
    fn as_ref(&self) -> &str {
        match self {
            LabelName::Known(i) => labels::ALL[usize::from(*i)],
            LabelName::Other(name) => name,
        }
    }
}

impl PartialEq for LabelName {
    fn eq(&self, other: &LabelName) -> bool {
        self.as_ref() == other.as_ref()
    }
}

impl Eq for LabelName {}

impl Labels {
    pub fn new() -> Labels {
        Labels::default()
    }

    fn find(&self, name: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(n, _)| n.as_ref().cmp(name))
    }

    /// The value of label `name`. A container has a handful of labels, most of them SDP's, of names of differing
    /// lengths: comparing for equality (the length first, the bytes only when it matches) finds one in fewer byte
    /// compares than a binary search, whose every step compares bytes. Past a few dozen labels (an image's own),
    /// the binary search.
    pub fn get(&self, name: &str) -> Option<&str> {
        if self.0.len() <= 16 {
            return self.0.iter().find(|(n, _)| n.as_ref() == name).map(|(_, v)| v.as_ref());
        }
        self.find(name).ok().map(|i| self.0[i].1.as_ref())
    }

    pub fn contains_key(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Sets a label; returns the value it replaces.
    pub fn insert(&mut self, name: impl AsRef<str>, value: impl AsRef<str>) -> Option<Arc<str>> {
        self.set(name.as_ref(), shared_text(value.as_ref()))
    }

    fn set(&mut self, name: &str, value: Arc<str>) -> Option<Arc<str>> {
        match self.find(name) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, value)),
            Err(i) => {
                self.0.insert(i, (LabelName::new(name), value));
                None
            }
        }
    }

    pub fn remove(&mut self, name: &str) -> Option<Arc<str>> {
        self.find(name).ok().map(|i| self.0.remove(i).1)
    }

    /// The labels in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_ref(), v.as_ref()))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A later value of a name wins, as in a map. Only kept values are shared (while a report is decoded).
impl<N: AsRef<str>, V: AsRef<str>> FromIterator<(N, V)> for Labels {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(iter: I) -> Labels {
        let kept = sdp_manifest::by_name_last_wins(iter.into_iter().collect(), |(name, _)| name.as_ref());
        Labels(
            kept.into_iter()
                .map(|(name, value)| (LabelName::new(name.as_ref()), shared_text(value.as_ref())))
                .collect(),
        )
    }
}

impl From<BTreeMap<String, String>> for Labels {
    fn from(map: BTreeMap<String, String>) -> Labels {
        map.into_iter().collect()
    }
}

impl<N: AsRef<str>, V: AsRef<str>, const K: usize> From<[(N, V); K]> for Labels {
    fn from(pairs: [(N, V); K]) -> Labels {
        pairs.into_iter().collect()
    }
}

impl std::ops::Index<&str> for Labels {
    type Output = str;

    fn index(&self, name: &str) -> &str {
        self.get(name).unwrap_or_else(|| panic!("no label {name}"))
    }
}

impl Serialize for Labels {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for Labels {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Labels, D::Error> {
        text_map(deserializer, "a map of label names to values")
    }
}

/// A gateway's route maps by sandbox (`ActualState::routes`, `route_defaults`): a map, which a report shares with
/// the one before when they are equal (`route_maps`). Reads as the map; changing it copies the map first if the
/// report before holds it too.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct RouteMaps(Arc<BTreeMap<String, Routes>>);

impl RouteMaps {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether both are one map (a report's shared with the one before), not only equal.
    pub fn is_shared_with(&self, other: &RouteMaps) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl std::ops::Deref for RouteMaps {
    type Target = BTreeMap<String, Routes>;

    fn deref(&self) -> &BTreeMap<String, Routes> {
        &self.0
    }
}

impl std::ops::DerefMut for RouteMaps {
    fn deref_mut(&mut self) -> &mut BTreeMap<String, Routes> {
        Arc::make_mut(&mut self.0)
    }
}

impl<S: Into<String>, const K: usize> From<[(S, Routes); K]> for RouteMaps {
    fn from(pairs: [(S, Routes); K]) -> RouteMaps {
        pairs.into_iter().collect()
    }
}

impl<'a> IntoIterator for &'a RouteMaps {
    type Item = (&'a String, &'a Routes);
    type IntoIter = std::collections::btree_map::Iter<'a, String, Routes>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl From<BTreeMap<String, Routes>> for RouteMaps {
    fn from(map: BTreeMap<String, Routes>) -> RouteMaps {
        RouteMaps(Arc::new(map))
    }
}

impl<S: Into<String>> FromIterator<(S, Routes)> for RouteMaps {
    fn from_iter<I: IntoIterator<Item = (S, Routes)>>(iter: I) -> RouteMaps {
        iter.into_iter()
            .map(|(k, v)| (k.into(), v))
            .collect::<BTreeMap<_, _>>()
            .into()
    }
}

impl<'de> Deserialize<'de> for RouteMaps {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<RouteMaps, D::Error> {
        BTreeMap::deserialize(deserializer).map(RouteMaps::from)
    }
}

/// A gateway's `<service>_url` map, by service: what its config.php holds (`ActualState::routes`) or what the
/// gateway branch's own holds (`route_defaults`). A list sorted by service, its names and URLs shared within a
/// report (`AgentFrame::decode`): 1,000 sandboxes report two maps each of the same ten services, whose OCP URLs
/// are the same in every sandbox, so a map is mostly a list of pointers to one copy. Reads and writes as a JSON
/// object, as a map does; a service named twice keeps its last URL.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Routes(Vec<(Arc<str>, Arc<str>)>);

impl Routes {
    pub fn new() -> Routes {
        Routes::default()
    }

    fn find(&self, service: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(s, _)| s.as_ref().cmp(service))
    }

    /// The URL of `service`.
    pub fn get(&self, service: &str) -> Option<&str> {
        self.find(service).ok().map(|i| self.0[i].1.as_ref())
    }

    pub fn contains_key(&self, service: &str) -> bool {
        self.find(service).is_ok()
    }

    /// Sets the URL of `service`; returns the one it replaces.
    pub fn insert(&mut self, service: impl AsRef<str>, url: impl AsRef<str>) -> Option<Arc<str>> {
        let url = shared_text(url.as_ref());
        match self.find(service.as_ref()) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, url)),
            Err(i) => {
                self.0.insert(i, (shared_text(service.as_ref()), url));
                None
            }
        }
    }

    /// The routes in service order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(s, u)| (s.as_ref(), u.as_ref()))
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(s, _)| s.as_ref())
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// As the API and the pages show it.
    pub fn to_map(&self) -> BTreeMap<String, String> {
        self.iter().map(|(s, u)| (s.to_string(), u.to_string())).collect()
    }
}

impl<S: AsRef<str>, U: AsRef<str>> FromIterator<(S, U)> for Routes {
    fn from_iter<I: IntoIterator<Item = (S, U)>>(iter: I) -> Routes {
        let mut routes = Routes::new();
        routes.extend(iter);
        routes
    }
}

/// Sorted once at the end, not kept sorted entry by entry: a hostile report's million routes in reverse order
/// cost a sort, not a million shifts of the list.
impl<S: AsRef<str>, U: AsRef<str>> Extend<(S, U)> for Routes {
    fn extend<I: IntoIterator<Item = (S, U)>>(&mut self, iter: I) {
        let mut all = std::mem::take(&mut self.0);
        all.extend(
            iter.into_iter()
                .map(|(service, url)| (shared_text(service.as_ref()), shared_text(url.as_ref()))),
        );
        let mut kept = sdp_manifest::by_name_last_wins(all, |(service, _)| service.as_ref());
        kept.shrink_to_fit();
        self.0 = kept;
    }
}

impl From<BTreeMap<String, String>> for Routes {
    fn from(map: BTreeMap<String, String>) -> Routes {
        map.into_iter().collect()
    }
}

impl<S: AsRef<str>, U: AsRef<str>, const K: usize> From<[(S, U); K]> for Routes {
    fn from(pairs: [(S, U); K]) -> Routes {
        pairs.into_iter().collect()
    }
}

impl Serialize for Routes {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for Routes {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Routes, D::Error> {
        text_map(deserializer, "a map of service names to URLs")
    }
}

/// A JSON object of strings read into `T` (labels, routes), whose `FromIterator` sorts the entries by name once and
/// keeps a name's last value, as a map does. Compacted so while it is read, whenever the list has doubled: an object
/// that repeats a few names millions of times (a hostile report, up to a frame's 32 MiB) holds those few entries,
/// not millions.
fn text_map<'de, D, T>(deserializer: D, expecting: &'static str) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: FromIterator<(Text<'de>, Text<'de>)>,
{
    struct Visit<T>(&'static str, std::marker::PhantomData<T>);
    impl<'de, T: FromIterator<(Text<'de>, Text<'de>)>> serde::de::Visitor<'de> for Visit<T> {
        type Value = T;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str(self.0)
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<T, A::Error> {
            let mut read = Vec::with_capacity(map.size_hint().unwrap_or(0).min(64));
            let mut compact_at = 1024;
            while let Some(entry) = map.next_entry::<Text<'de>, Text<'de>>()? {
                read.push(entry);
                if read.len() >= compact_at {
                    read = sdp_manifest::by_name_last_wins(read, |(name, _)| name.as_ref());
                    compact_at = read.len().saturating_mul(2).max(1024);
                }
            }
            Ok(read.into_iter().collect())
        }
    }
    deserializer.deserialize_map(Visit(expecting, std::marker::PhantomData))
}

/// A string read from the text itself when it holds no escapes, copied only when it does.
struct Text<'a>(Cow<'a, str>);

impl AsRef<str> for Text<'_> {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Text<'de>, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Text<'de>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }

            fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v.to_string())))
            }

            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(Visit)
    }
}

/// One HTTP probe of a container's health path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Probe {
    pub ok: bool,
    /// `HTTP 200`, `HTTP 503`, `connection refused`, `no answer within 2 s`…
    pub detail: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ContainerState {
    Created,
    Running,
    Restarting,
    Paused,
    Exited,
    Dead,
    /// A state this version does not know (a newer Docker): kept, never guessed.
    #[serde(other)]
    Unknown,
}

/// A worktree of one service (or the gateway) of one sandbox. Its fields are shared with the other worktrees and
/// containers of the report that carry the same text (`AgentFrame::decode`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Worktree {
    #[serde(deserialize_with = "shared")]
    pub sandbox: Arc<str>,
    #[serde(deserialize_with = "shared")]
    pub service: Arc<str>,
    #[serde(deserialize_with = "shared")]
    pub branch: Arc<str>,
    #[serde(deserialize_with = "shared")]
    pub commit: Arc<str>,
}

fn shared<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Arc<str>, D::Error> {
    Text::deserialize(deserializer).map(|text| shared_text(&text.0))
}

/// Where a remote branch points.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BranchHead {
    pub repo: String,
    pub branch: String,
    pub commit: String,
}

/// What the reconciler asks an agent to do. Agents decide nothing: each action says exactly what to make true.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum Action {
    EnsureNetwork {
        sandbox: String,
    },
    DeployService(Box<Deploy>),
    DeployGateway(Box<Deploy>),
    /// Set the gateway's `<service>_url` entries of one sandbox; services not listed go back to their OCP value.
    SetRoutes {
        sandbox: String,
        routes: BTreeMap<String, String>,
    },
    Stop {
        container: String,
    },
    RemoveContainer {
        container: String,
    },
    RemoveNetwork {
        sandbox: String,
    },
    RemoveWorktree {
        sandbox: String,
        service: String,
    },
}

/// Everything an agent needs to run one container of a sandbox.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Deploy {
    pub sandbox: String,
    /// The service name, or `gateway`.
    pub service: String,
    pub branch: String,
    /// The exact commit to check out, when the reconciler knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    pub container: String,
    pub host_port: u16,
    pub env: BTreeMap<String, String>,
    /// Secret variables as file paths on the node: the agent reads the values at deploy time and sends them
    /// nowhere.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secret_files: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    pub labels: BTreeMap<String, String>,
    /// How to build a Go service (micro): absent means `go build .` with no tags or linker flags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<GoBuild>,
}

/// The package, tags and linker flags of a Go build, as validated in the manifest (the agent checks them again).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GoBuild {
    /// `.` or `./cmd/<name>`.
    pub package: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ldflags: Option<String>,
}

/// `go build .`: the repository root, no tags, no linker flags.
impl Default for GoBuild {
    fn default() -> GoBuild {
        GoBuild {
            package: ".".into(),
            tags: Vec::new(),
            ldflags: None,
        }
    }
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Micro => "micro",
            Role::Gateway => "gateway",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Labels every object SDP creates carries; only objects with `sdp.managed=true` are ever removed.
pub mod timing;

pub mod labels {
    pub const MANAGED: &str = "sdp.managed";
    pub const SANDBOX: &str = "sdp.sandbox";
    pub const SERVICE: &str = "sdp.service";
    pub const COMMIT: &str = "sdp.commit";
    pub const SPEC_HASH: &str = "sdp.spec-hash";
    /// The HTTP path the agent probes on the container's published port (`healthPath` of the manifest).
    pub const HEALTH_PATH: &str = "sdp.health-path";
    /// The installation (reconciler) that owns the object.
    pub const INSTALLATION: &str = "sdp.installation";
    /// Every label SDP sets.
    pub const ALL: [&str; 7] = [MANAGED, SANDBOX, SERVICE, COMMIT, SPEC_HASH, HEALTH_PATH, INSTALLATION];
}

/// The service name of a sandbox's gateway in names, labels, worktrees and repos.
pub const GATEWAY: &str = "gateway";

/// `sandbox-{sandbox}-{service}`: a container's name on its VM.
pub fn container_name(sandbox: &str, service: &str) -> String {
    format!("sandbox-{sandbox}-{service}")
}

/// `sandbox-{sandbox}`: a sandbox's Docker network on each VM.
pub fn network_name(sandbox: &str) -> String {
    format!("sandbox-{sandbox}")
}

/// A stage of a deployment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Stage {
    Fetch,
    Checkout,
    Build,
    Composer,
    Start,
    Routes,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum StageState {
    Started,
    Succeeded,
    Failed,
    Skipped,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    pub deployment_id: String,
    pub stage: Stage,
    pub state: StageState,
    /// Time spent in the stage so far, in milliseconds.
    pub elapsed_ms: u64,
}

/// One line of output: of a build (with a deployment id) or of a running container.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogLine {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// Per-source sequence number, so a reader sees gaps.
    pub seq: u64,
    pub line: String,
    /// Lines dropped under pressure just before this one: counted, never silently lost.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dropped_before: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Two sides that speak different protocol versions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionMismatch {
    pub ours: u32,
    pub theirs: u32,
}

impl fmt::Display for VersionMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "protocol version mismatch: this side speaks version {}, the other side version {}; \
             run the same SDP release on the reconciler and every agent",
            self.ours, self.theirs
        )
    }
}

impl std::error::Error for VersionMismatch {}

/// The version rule, the same on both sides: exact match.
pub fn check_version(theirs: u32) -> Result<(), VersionMismatch> {
    if theirs == PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(VersionMismatch {
            ours: PROTOCOL_VERSION,
            theirs,
        })
    }
}

/// Unix seconds as `2026-11-25T10:00:00Z` (UTC), for stamps and pages; no time zone data needed.
pub fn rfc3339(secs: u64) -> String {
    let (days, rest) = ((secs / 86400) as i64, secs % 86400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// Encodes a frame as one WebSocket text message.
pub fn encode<T: Serialize>(frame: &T) -> String {
    // Frames hold only strings, numbers and maps with string keys: serialising cannot fail.
    serde_json::to_string(frame).unwrap_or_default()
}

/// Decodes one WebSocket text message.
pub fn decode<'a, T: Deserialize<'a>>(text: &'a str) -> Result<T, serde_json::Error> {
    serde_json::from_str(text)
}

/// The longest log line that travels, in bytes, the marker of a cut included. An agent cuts the lines of its
/// containers and builds to it before they are queued (so that its memory is bounded too), and the reconciler cuts
/// again whatever arrives longer.
pub const MAX_LOG_LINE: usize = 16 * 1024;

/// Room kept at the end of a cut line for its marker: ` [sdp: 18446744073709551615 more bytes cut]` is 43 bytes.
const CUT_MARKER_ROOM: usize = 64;

/// Cuts `line` on a character boundary so that, with the marker that says how many bytes went, it holds at most
/// `MAX_LOG_LINE` bytes. `cut_before` bytes of the line went before it got here (an agent reading a container's
/// output keeps no more than the limit); a line within the limit with nothing cut is left as it is.
pub fn cut_line(line: &mut String, cut_before: usize) {
    if line.len() <= MAX_LOG_LINE && cut_before == 0 {
        return;
    }
    let mut end = line.len().min(MAX_LOG_LINE - CUT_MARKER_ROOM);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    let cut = cut_before + (line.len() - end);
    line.truncate(end);
    line.push_str(&format!(" [sdp: {cut} more bytes cut]"));
}

/// Takes anything that looks like a password in a URL (`scheme://user:secret@host`) out of a message, such as
/// git's, before it reaches a log, an event or an answer.
pub fn scrub(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for word in message.split_inclusive(char::is_whitespace) {
        match (word.find("://"), word.find('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                out.push_str(&word[..scheme + 3]);
                out.push_str("***");
                out.push_str(&word[at..]);
            }
            _ => out.push_str(word),
        }
    }
    out.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragments_cover_a_message_once_in_order_none_longer_than_the_limit() {
        let f = FRAGMENT_BYTES;
        for len in [0, 1, f - 1, f, f + 1, 3 * f, 3 * f + 5] {
            let ranges: Vec<_> = fragments(len).collect();
            assert!(!ranges.is_empty(), "an empty message is still one frame");
            assert_eq!(ranges[0].start, 0);
            assert_eq!(ranges.last().unwrap().end, len, "{len}");
            for pair in ranges.windows(2) {
                assert_eq!(pair[0].end, pair[1].start, "{len}: {ranges:?}");
            }
            assert!(
                ranges.iter().all(|r| r.len() <= f && (!r.is_empty() || len == 0)),
                "{len}: {ranges:?}"
            );
            assert_eq!(ranges.len(), len.div_ceil(f).max(1));
        }
    }

    #[test]
    fn a_long_line_is_cut_on_a_character_boundary_and_says_how_much_went() {
        let mut short = "x".repeat(MAX_LOG_LINE);
        cut_line(&mut short, 0);
        assert_eq!(short.len(), MAX_LOG_LINE, "a line at the limit is kept whole");

        // A 3-byte character straddles the cut: it goes whole.
        let mut long = format!(
            "{}{}",
            "x".repeat(MAX_LOG_LINE - CUT_MARKER_ROOM - 1),
            "€".repeat(10_000)
        );
        let total = long.len();
        cut_line(&mut long, 0);
        assert!(long.len() <= MAX_LOG_LINE, "{} bytes", long.len());
        let kept = MAX_LOG_LINE - CUT_MARKER_ROOM - 1;
        assert_eq!(
            long,
            format!("{} [sdp: {} more bytes cut]", "x".repeat(kept), total - kept)
        );

        // Cut before, by an agent: the count adds up, and a line cut once is not cut again.
        let mut agent = "y".repeat(MAX_LOG_LINE);
        cut_line(&mut agent, 5000);
        let once = agent.clone();
        assert!(
            once.ends_with(&format!(" [sdp: {} more bytes cut]", 5000 + CUT_MARKER_ROOM)),
            "{once:.40}"
        );
        cut_line(&mut agent, 0);
        assert_eq!(agent, once);
        let mut small = "z".to_string();
        cut_line(&mut small, 7);
        assert_eq!(small, "z [sdp: 7 more bytes cut]");
    }

    #[test]
    fn a_report_keeps_a_label_value_many_containers_carry_once() {
        let container = |name: &str, commit: &str| Container {
            name: name.into(),
            id: format!("{name}-id"),
            labels: [
                (labels::COMMIT, commit),
                (labels::MANAGED, "true"),
                ("with\\escape", "a\\b"),
            ]
            .into(),
            state: ContainerState::Running,
            ports: vec![],
            restart_count: 0,
            exit_code: None,
            probe: None,
        };
        let report = AgentFrame::ActualState(ActualState {
            containers: vec![
                container("a", "c1").into(),
                container("b", "c1").into(),
                container("c", "c2").into(),
            ],
            worktrees: vec![Worktree {
                sandbox: "s".into(),
                service: "a".into(),
                branch: "b".into(),
                commit: "c1".into(),
            }]
            .into(),
            ..ActualState::default()
        });
        let text = encode(&report);
        let Ok(AgentFrame::ActualState(read)) = AgentFrame::decode(&text) else {
            panic!("{text}")
        };
        assert_eq!(AgentFrame::ActualState(read.clone()), report, "read as written");
        let value = |c: usize, name: &str| {
            read.containers[c]
                .labels
                .0
                .iter()
                .find(|(n, _)| n.as_ref() == name)
                .unwrap()
                .1
                .clone()
        };
        assert!(Arc::ptr_eq(&value(0, labels::COMMIT), &value(1, labels::COMMIT)));
        assert!(!Arc::ptr_eq(&value(0, labels::COMMIT), &value(2, labels::COMMIT)));
        assert!(Arc::ptr_eq(&value(0, labels::MANAGED), &value(2, labels::MANAGED)));
        assert!(
            Arc::ptr_eq(&read.worktrees[0].commit, &value(0, labels::COMMIT)),
            "a worktree's commit too"
        );
        assert_eq!(
            &*value(2, "with\\escape"),
            "a\\b",
            "an escaped value is read as written"
        );
        // Outside a report's decode nothing is kept: each value is its own.
        let one: Labels = serde_json::from_str(r#"{"sdp.commit": "c1"}"#).unwrap();
        let two: Labels = serde_json::from_str(r#"{"sdp.commit": "c1"}"#).unwrap();
        assert!(!Arc::ptr_eq(&one.0[0].1, &two.0[0].1));
        DECODING.with(|v| assert!(v.borrow().is_none()));
    }

    #[test]
    fn a_report_shares_its_worktrees_with_the_one_before_when_they_are_the_same() {
        let worktree = |i: usize| Worktree {
            sandbox: format!("sb-{i}").into(),
            service: "account".into(),
            branch: "main".into(),
            commit: "c0ffee".into(),
        };
        let before = ActualState {
            worktrees: Arc::new((0..5).map(worktree).collect()),
            ..ActualState::default()
        };
        let read = |state: &ActualState| {
            let text = encode(&AgentFrame::ActualState(state.clone()));
            match AgentFrame::decode_after(&text, &before).unwrap() {
                AgentFrame::ActualState(read) => read,
                other => panic!("{other:?}"),
            }
        };
        assert!(Arc::ptr_eq(&read(&before).worktrees, &before.worktrees));
        // One changed, one fewer, one more, none: each read as sent, in a list of its own.
        let mut changed: Vec<Worktree> = (0..5).map(worktree).collect();
        changed[2].branch = "feature/x".into();
        for now in [
            changed,
            (0..4).map(worktree).collect(),
            (0..6).map(worktree).collect(),
            vec![],
        ] {
            let state = ActualState {
                worktrees: Arc::new(now),
                ..ActualState::default()
            };
            let read = read(&state);
            assert_eq!(read.worktrees, state.worktrees);
            assert!(!Arc::ptr_eq(&read.worktrees, &before.worktrees));
        }
    }

    #[test]
    fn a_report_shares_its_route_maps_with_the_one_before_when_they_are_the_same() {
        let maps = |n: usize, url: &str| -> RouteMaps {
            (0..n)
                .map(|i| {
                    (
                        format!("sb-{i}"),
                        Routes::from([("account", url), ("billing", "http://ocp")]),
                    )
                })
                .collect()
        };
        let before = ActualState {
            routes: maps(5, "http://10.0.0.2:9001"),
            route_defaults: maps(5, "http://ocp"),
            ..ActualState::default()
        };
        let read_text = |text: &str| match AgentFrame::decode_after(text, &before).unwrap() {
            AgentFrame::ActualState(read) => read,
            other => panic!("{other:?}"),
        };
        let read = |state: &ActualState| read_text(&encode(&AgentFrame::ActualState(state.clone())));
        let same = read(&before);
        assert!(same.routes.is_shared_with(&before.routes));
        assert!(same.route_defaults.is_shared_with(&before.route_defaults));
        // One changed, one fewer, one more, none: each read as sent, in a map of its own; the other map still shared.
        let mut changed = maps(5, "http://10.0.0.2:9001");
        changed.get_mut("sb-2").unwrap().insert("account", "http://ocp");
        for now in [
            changed,
            maps(4, "http://10.0.0.2:9001"),
            maps(6, "http://10.0.0.2:9001"),
            RouteMaps::default(),
        ] {
            let state = ActualState {
                routes: now,
                ..before.clone()
            };
            let read = read(&state);
            assert_eq!(read.routes, state.routes);
            assert!(!read.routes.is_shared_with(&before.routes));
            assert!(read.route_defaults.is_shared_with(&before.route_defaults));
        }
        // A sandbox named twice keeps its last map, as a map does, whether the first was the last report's or not.
        for first in ["http://10.0.0.2:9001", "http://elsewhere"] {
            let text = format!(
                r#"{{"type":"actualState","containers":[],"networks":[],"worktrees":[],"heads":[],"routes":{{
                "sb-0":{{"account":"{first}","billing":"http://ocp"}},"sb-0":{{"account":"http://last"}}}}}}"#
            );
            let read = read_text(&text);
            assert_eq!(read.routes.len(), 1);
            assert_eq!(read.routes["sb-0"], Routes::from([("account", "http://last")]));
        }
    }

    #[test]
    fn a_report_shares_the_containers_it_has_in_common_with_the_one_before() {
        let container = |id: &str, restarts: u32| Container {
            name: format!("sdp-{id}"),
            id: id.into(),
            labels: [(labels::MANAGED, "true")].into(),
            state: ContainerState::Running,
            ports: vec![8080],
            restart_count: restarts,
            exit_code: None,
            probe: None,
        };
        let report = |containers: Vec<Container>| ActualState {
            containers: containers.into_iter().map(Arc::new).collect(),
            ..ActualState::default()
        };
        let read = |text: &str, previous: &ActualState| match AgentFrame::decode_after(text, previous) {
            Ok(AgentFrame::ActualState(read)) => read,
            other => panic!("not a report: {other:?}"),
        };
        let before = read(
            &encode(&AgentFrame::ActualState(report(vec![
                container("a", 0),
                container("b", 0),
                container("c", 0),
            ]))),
            &ActualState::default(),
        );
        // b restarted, d is new, c is gone; the order changed.
        let sent = report(vec![container("d", 0), container("b", 1), container("a", 0)]);
        let after = read(&encode(&AgentFrame::ActualState(sent.clone())), &before);
        assert_eq!(after, sent, "read as written");
        assert!(
            Arc::ptr_eq(&after.containers[2], &before.containers[0]),
            "a, unchanged, is the one before"
        );
        assert!(
            !Arc::ptr_eq(&after.containers[1], &before.containers[1]),
            "b changed: read anew"
        );
        assert_eq!(after.containers[1].restart_count, 1);
        // A container equal in all but its id is not taken for another: the id is part of what is compared.
        let renamed = report(vec![Container {
            id: "z".into(),
            ..container("a", 0)
        }]);
        let read_renamed = read(&encode(&AgentFrame::ActualState(renamed.clone())), &before);
        assert_eq!(read_renamed, renamed);
        assert!(!Arc::ptr_eq(&read_renamed.containers[0], &before.containers[0]));
        // Written otherwise than the reconciler writes it (spaced, its keys in another order), an equal container
        // is read, and still the one before.
        let spaced = r#"{"type": "actualState", "containers": [ {"labels": {"sdp.managed": "true"}, "id": "a", "name": "sdp-a",
                "state": "running", "ports": [8080], "restartCount": 0} ], "networks": [], "worktrees": [], "heads": []}"#;
        let read_spaced = read(spaced, &before);
        assert_eq!(read_spaced, report(vec![container("a", 0)]));
        assert!(Arc::ptr_eq(&read_spaced.containers[0], &before.containers[0]));
        // Sent as the one before but with a field of the wrong type: read, and refused, naming its place.
        let text = encode(&AgentFrame::ActualState(report(vec![
            container("b", 0),
            container("a", 0),
        ])))
        .replace(r#""restartCount":0}]"#, r#""restartCount":"zero"}]"#);
        let error = AgentFrame::decode_after(&text, &before).unwrap_err().to_string();
        assert!(
            error.starts_with("containers[1]: invalid type: string \"zero\""),
            "{error}"
        );
        // Nothing is kept past a decode.
        DECODING.with(|d| assert!(d.borrow().is_none()));
    }

    #[test]
    fn a_container_is_taken_for_the_one_before_only_when_sent_exactly_as_it_is_written() {
        let big = Container {
            name: "sdp-big".into(),
            id: "a".into(),
            labels: [("wide", "x".repeat(100_000))].into(),
            state: ContainerState::Running,
            ports: vec![],
            restart_count: 0,
            exit_code: None,
            probe: None,
        };
        let written = serde_json::to_string(&big).unwrap();
        assert!(written_as(&big, &written));
        assert!(!written_as(&big, &written[..written.len() - 1]), "a prefix is not it");
        assert!(!written_as(&big, &format!("{written} ")), "nor is more");
        assert!(!written_as(&big, r#"{"name":"sdp-big","id":"a"}"#));
        // The same id many times, each small: every one is read for what it is, none taken for the big one.
        let before = ActualState {
            containers: vec![Arc::new(big)],
            ..ActualState::default()
        };
        let small = r#"{"name":"n","id":"a","labels":{},"state":"running","ports":[],"restartCount":0}"#;
        let text = format!(
            r#"{{"type":"actualState","containers":[{}],"networks":[],"worktrees":[],"heads":[]}}"#,
            vec![small; 1000].join(",")
        );
        let Ok(AgentFrame::ActualState(read)) = AgentFrame::decode_after(&text, &before) else {
            panic!("not a report")
        };
        assert_eq!(read.containers.len(), 1000);
        assert!(read.containers.iter().all(|c| c.name == "n" && c.labels.is_empty()));
        // Each container of the report before is compared as written once at most: a second container with its
        // id is read, even when it is the same.
        let twice = format!(
            r#"{{"type":"actualState","containers":[{written},{written}],"networks":[],"worktrees":[],"heads":[]}}"#
        );
        let Ok(AgentFrame::ActualState(read)) = AgentFrame::decode_after(&twice, &before) else {
            panic!("not a report")
        };
        assert!(Arc::ptr_eq(&read.containers[0], &before.containers[0]));
        assert_eq!(read.containers[1], before.containers[0]);
        // Read and found equal, it is still the one before (`kept`).
        assert!(Arc::ptr_eq(&read.containers[1], &before.containers[0]));
    }

    #[test]
    fn routes_read_and_write_as_a_map_does_and_share_their_text_within_a_report() {
        let ocp = |s: usize| format!("https://svc{s}.ocp.example.internal");
        let map: BTreeMap<String, String> = (0..12).map(|s| (format!("svc{s}"), ocp(s))).collect();
        let report = AgentFrame::ActualState(ActualState {
            routes: [("a", map.clone()), ("b", map.clone())]
                .into_iter()
                .map(|(sb, m)| (sb.to_string(), Routes::from(m)))
                .collect(),
            route_defaults: [("a".to_string(), Routes::from(map.clone()))].into(),
            ..ActualState::default()
        });
        let text = encode(&report);
        assert!(
            text.contains(&serde_json::to_string(&map).unwrap()),
            "written as a map: {text}"
        );
        let Ok(AgentFrame::ActualState(read)) = AgentFrame::decode(&text) else {
            panic!("{text}")
        };
        assert_eq!(AgentFrame::ActualState(read.clone()), report, "read as written");
        let (a, b) = (&read.routes["a"], &read.routes["b"]);
        assert_eq!(a.to_map(), map);
        assert_eq!(a.get("svc10"), Some(ocp(10).as_str()));
        assert_eq!((a.get("svc"), a.contains_key("svc1"), a.len()), (None, true, 12));
        // Equal URLs of two sandboxes, and of a sandbox's live map and its defaults, are one copy.
        assert!(Arc::ptr_eq(&a.0[3].1, &b.0[3].1) && Arc::ptr_eq(&a.0[3].0, &b.0[3].0));
        assert!(Arc::ptr_eq(&a.0[3].1, &read.route_defaults["a"].0[3].1));

        // Any order, a service twice: sorted, the last URL wins, as in a map.
        let read: Routes = serde_json::from_str(r#"{"z":"1","b":"2","z":"3","a":"4"}"#).unwrap();
        assert_eq!(read.iter().collect::<Vec<_>>(), [("a", "4"), ("b", "2"), ("z", "3")]);
        let mut more = read.clone();
        more.extend([("b", "5"), ("c", "6")]);
        assert_eq!(more.insert("a", "7").as_deref(), Some("4"));
        assert_eq!(more.keys().collect::<Vec<_>>(), ["a", "b", "c", "z"]);
        assert_eq!((more.get("a"), more.get("b")), (Some("7"), Some("5")));
        assert!(
            serde_json::from_str::<Routes>(r#"{"a":1}"#).is_err(),
            "a URL is a string"
        );

        // A few names repeated many times (a hostile report): each once, with its last value, in labels too.
        let repeated: String = (0..50_000).map(|i| format!(r#""s{}":"u{i}","#, i % 3)).collect();
        let text = format!("{{{}\"z\":\"end\"}}", repeated);
        let read: Routes = serde_json::from_str(&text).unwrap();
        assert_eq!(
            read.iter().collect::<Vec<_>>(),
            [("s0", "u49998"), ("s1", "u49999"), ("s2", "u49997"), ("z", "end")]
        );
        let labels: Labels = serde_json::from_str(&text).unwrap();
        assert_eq!(labels.iter().collect::<Vec<_>>(), read.iter().collect::<Vec<_>>());
    }

    #[test]
    fn labels_read_in_any_order_keep_the_last_value_of_a_name_given_twice() {
        let read: Labels =
            serde_json::from_str(r#"{"z": "1", "b": "2", "a": "3", "b": "4", "sdp.commit": "c"}"#).unwrap();
        let pairs: Vec<(&str, &str)> = read.iter().collect();
        assert_eq!(pairs, [("a", "3"), ("b", "4"), ("sdp.commit", "c"), ("z", "1")]);
        // Names in reverse order, thousands of them: sorted once.
        let many = (0..5000)
            .rev()
            .map(|i| format!("\"l{i:05}\": \"{i}\""))
            .collect::<Vec<_>>()
            .join(",");
        let read: Labels = serde_json::from_str(&format!("{{{many}}}")).unwrap();
        assert_eq!(read.len(), 5000);
        assert_eq!((read.get("l00000"), read.get("l04999")), (Some("0"), Some("4999")));
        let names: Vec<&str> = read.iter().map(|(n, _)| n).collect();
        assert!(names.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn a_report_of_more_distinct_values_than_are_shared_is_read_whole() {
        let container = |name: &str, labels: Labels| Container {
            name: name.into(),
            id: name.into(),
            labels,
            state: ContainerState::Running,
            ports: vec![],
            restart_count: 0,
            exit_code: None,
            probe: None,
        };
        let crowd: Labels = (0..SHARED_TEXTS + 10)
            .map(|i| (format!("l{i}"), format!("v{i}")))
            .collect();
        let long = "x".repeat(SHARED_TEXT_BYTES + 1);
        let report = AgentFrame::ActualState(ActualState {
            containers: vec![
                container("a", [(labels::COMMIT, long.as_str())].into()).into(),
                container("b", [(labels::COMMIT, long.as_str())].into()).into(),
                container("crowd", crowd).into(),
                container("c", [(labels::COMMIT, "late")].into()).into(),
                container("d", [(labels::COMMIT, "late")].into()).into(),
            ],
            ..ActualState::default()
        });
        let Ok(AgentFrame::ActualState(read)) = AgentFrame::decode(&encode(&report)) else {
            panic!("unreadable")
        };
        assert_eq!(AgentFrame::ActualState(read.clone()), report, "read as written");
        let commit = |c: usize| read.containers[c].labels.0[0].1.clone();
        assert!(
            !Arc::ptr_eq(&commit(0), &commit(1)),
            "a value over the length is its own"
        );
        assert!(
            !Arc::ptr_eq(&commit(3), &commit(4)),
            "past the count, a value is its own"
        );
    }

    #[test]
    fn labels_are_found_as_in_a_map_whatever_their_number() {
        // A few (found by equality) and many (an image's own labels too: found by binary search).
        for count in [0, 1, 7, 16, 17, 40] {
            let map: BTreeMap<String, String> = (0..count)
                .map(|i| (format!("l{i:02}.{}", "x".repeat(i % 5)), i.to_string()))
                .collect();
            let labels = Labels::from(map.clone());
            for (name, value) in &map {
                assert_eq!(labels.get(name), Some(value.as_str()), "{name} of {count}");
                assert!(labels.contains_key(name));
            }
            for absent in ["", "l", "l00", "zz", "l99.x"] {
                assert_eq!(
                    labels.get(absent),
                    map.get(absent).map(String::as_str),
                    "{absent} of {count}"
                );
            }
        }
    }

    #[test]
    fn labels_read_and_write_as_a_map_does() {
        let map: BTreeMap<String, String> = [
            ("sdp.sandbox", "a"),
            ("sdp.managed", "true"),
            ("team", "cc"),
            ("sdp.commit", "0123abc"),
        ]
        .into_iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
        let labels = Labels::from(map.clone());
        assert_eq!(
            serde_json::to_string(&labels).unwrap(),
            serde_json::to_string(&map).unwrap()
        );
        let read: Labels = serde_json::from_str(&serde_json::to_string(&map).unwrap()).unwrap();
        assert_eq!(read, labels);
        assert_eq!(read.get("sdp.sandbox"), Some("a"));
        assert_eq!(read.get("team"), Some("cc"));
        assert_eq!(read.get("sdp.service"), None);
        assert!(read.contains_key(labels::MANAGED) && !read.contains_key("sdp"));
        let names: Vec<&str> = read.iter().map(|(n, _)| n).collect();
        assert_eq!(names, map.keys().map(String::as_str).collect::<Vec<_>>());
        // A label is two words of name (SDP's own by their place in `labels::ALL`) and two of shared value.
        assert_eq!(std::mem::size_of::<(LabelName, Arc<str>)>(), 32);
        assert!(matches!(read.0[0].0, LabelName::Known(_)) && matches!(read.0[3].0, LabelName::Other(_)));
        // A name twice keeps its last value, as a map does.
        let twice: Labels = serde_json::from_str(r#"{"b":"1","a":"2","b":"3"}"#).unwrap();
        assert_eq!(twice, Labels::from([("a", "2"), ("b", "3")]));
        // And so do labels built from a list (the agent builds them from Docker's).
        assert_eq!(Labels::from([("b", "1"), ("a", "2"), ("b", "3")]), twice);
        let mut changed = read.clone();
        assert_eq!(changed.insert("team", "dd").as_deref(), Some("cc"));
        assert_eq!(changed.insert(labels::SERVICE, "account"), None);
        assert_eq!(&changed["sdp.service"], "account");
        assert_eq!(changed.remove("team"), Some("dd".into()));
        assert_eq!(changed.len(), 4);
    }

    fn deploy() -> Deploy {
        Deploy {
            sandbox: "qa-login-error".into(),
            service: "account".into(),
            branch: "feature/login-error".into(),
            commit: Some("0123abc".into()),
            container: "sandbox-qa-login-error-account".into(),
            host_port: 9001,
            env: [("LOG_LEVEL".to_string(), "debug".to_string())].into(),
            secret_files: [("DB_PASSWORD".to_string(), "/etc/sdp/secrets/db".to_string())].into(),
            files: BTreeMap::new(),
            cpus: Some(0.5),
            memory_bytes: Some(512 << 20),
            labels: [("sdp.managed".to_string(), "true".to_string())].into(),
            build: Some(GoBuild {
                package: "./cmd/account".into(),
                tags: vec!["netgo".into()],
                ldflags: Some("-s -w -X main.version=1.2".into()),
            }),
        }
    }

    #[test]
    fn every_frame_survives_encoding() {
        let agent = [
            AgentFrame::Hello(Hello {
                node: "micro-92".into(),
                role: Role::Micro,
                protocol_version: PROTOCOL_VERSION,
                agent_version: "0.1.0".into(),
                address: "172.18.136.92".into(),
                repos: vec!["account".into()],
                images: vec!["alpine:3.20".into()],
            }),
            AgentFrame::ActualState(ActualState {
                containers: vec![Arc::new(Container {
                    name: "sandbox-a-account".into(),
                    id: "f00".into(),
                    labels: [("sdp.sandbox", "a"), ("sdp.managed", "true"), ("team", "cc")].into(),
                    state: ContainerState::Running,
                    ports: vec![9001],
                    restart_count: 2,
                    exit_code: None,
                    probe: None,
                })],
                networks: vec!["sandbox-a".into()],
                worktrees: vec![].into(),
                routes: [(
                    "a".to_string(),
                    [("account".to_string(), "http://x:9001".to_string())].into(),
                )]
                .into(),
                route_defaults: RouteMaps::default(),
                heads: vec![],
            }),
            AgentFrame::Answer(Answer::new::<ActionRequest>(
                7,
                Err("image alpine:3.20 is not loaded".into()),
            )),
            AgentFrame::Progress(Progress {
                deployment_id: "d1".into(),
                stage: Stage::Build,
                state: StageState::Succeeded,
                elapsed_ms: 1200,
            }),
            AgentFrame::LogLine(LogLine {
                deployment_id: None,
                container: Some("c".into()),
                seq: 9,
                line: "hello".into(),
                dropped_before: 3,
            }),
        ];
        for frame in agent {
            assert_eq!(decode::<AgentFrame>(&encode(&frame)).unwrap(), frame);
            assert_eq!(AgentFrame::decode(&encode(&frame)).unwrap(), frame);
        }
        let actions = [
            Action::EnsureNetwork { sandbox: "a".into() },
            Action::DeployService(Box::new(deploy())),
            Action::DeployGateway(Box::new(deploy())),
            Action::SetRoutes {
                sandbox: "a".into(),
                routes: BTreeMap::new(),
            },
            Action::Stop { container: "c".into() },
            Action::RemoveContainer { container: "c".into() },
            Action::RemoveNetwork { sandbox: "a".into() },
            Action::RemoveWorktree {
                sandbox: "a".into(),
                service: "s".into(),
            },
        ];
        for (i, action) in actions.into_iter().enumerate() {
            let frame = ReconcilerFrame::Ask(Ask::new(
                i as u64,
                &ActionRequest {
                    deployment_id: None,
                    action,
                },
            ));
            assert_eq!(decode::<ReconcilerFrame>(&encode(&frame)).unwrap(), frame);
        }
    }

    #[test]
    fn the_wire_format_is_tagged_and_camel_cased() {
        let text = encode(&ReconcilerFrame::Welcome {
            protocol_version: 1,
            installation: "0a1b2c3d4e5f6071".into(),
            reads_deflated: true,
        });
        assert_eq!(
            text,
            r#"{"type":"welcome","protocolVersion":1,"installation":"0a1b2c3d4e5f6071","readsDeflated":true}"#
        );
        // An older reconciler's Welcome says nothing of deflated frames: the agent sends it text.
        let older = decode::<ReconcilerFrame>(r#"{"type":"welcome","protocolVersion":2,"installation":"i"}"#);
        assert!(matches!(
            older,
            Ok(ReconcilerFrame::Welcome {
                reads_deflated: false,
                ..
            })
        ));
        let remove = encode(&Action::RemoveWorktree {
            sandbox: "a".into(),
            service: "s".into(),
        });
        assert_eq!(remove, r#"{"kind":"removeWorktree","sandbox":"a","service":"s"}"#);
        let unknown: AgentFrame = decode(
            r#"{"type":"actualState","containers":[{"name":"n","id":"i","labels":{},"state":"removing","ports":[],"restartCount":0}],"networks":[],"worktrees":[],"heads":[]}"#,
        )
        .unwrap();
        let AgentFrame::ActualState(state) = unknown else {
            panic!("not an ActualState")
        };
        assert_eq!(state.containers[0].state, ContainerState::Unknown);
    }

    #[test]
    fn times_are_written_in_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_610_096), "2026-11-25T12:34:56Z");
    }

    #[test]
    fn a_version_mismatch_names_both_versions() {
        assert!(check_version(PROTOCOL_VERSION).is_ok());
        let err = check_version(PROTOCOL_VERSION + 1).unwrap_err().to_string();
        assert!(err.contains(&format!("version {PROTOCOL_VERSION}")), "{err}");
        assert!(err.contains(&format!("version {}", PROTOCOL_VERSION + 1)), "{err}");
    }
}
