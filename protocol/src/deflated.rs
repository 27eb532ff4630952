//! Frames sent deflated: an agent's report as binary WebSocket messages holding its JSON compressed (RFC 1951) in
//! pieces (`pieces`), read by the reconciler as the pieces come and inflate.
//!
//! A busy node's report is 4.8 MB of JSON text for 10,000 containers, and a text message is held whole while it is
//! read: for that moment the reconciler held the report's text, the report it replaces and the new one. Deflated,
//! the same report is a few hundred KB to 1 MB, and neither it nor its text is ever held whole: the pieces go into
//! the inflating stream as they come.
//! The reconciler says in its `Welcome` that it reads such frames (`readsDeflated`); an agent sends text to one that
//! does not say so (an older release).

use std::io::{BufRead, BufReader, Read, Write};

use flate2::Compression;
use flate2::bufread::DeflateDecoder;
use flate2::write::DeflateEncoder;
use serde::Deserialize;
use serde::de::value::MapAccessDeserializer;

use crate::{ActualState, AgentFrame, Answer, Hello, LogLine, Progress, Text, read_report};

/// `frame` as JSON, deflated: the body of the binary message an agent sends.
pub fn deflate(frame: &AgentFrame) -> Vec<u8> {
    // Level 1. A report of 10,000 containers with seven labels each (3.9 MB of text), measured on a release build:
    // level 1 gives 470 KB in 11 ms, level 6 (the default) 296 KB in 58 ms, level 9 280 KB in 113 ms. The
    // reconciler holds the message for the 40 ms it takes to read, whatever the level.
    // serde_json writes a few bytes at a time: the buffer hands the encoder blocks.
    let mut out = std::io::BufWriter::with_capacity(32 << 10, DeflateEncoder::new(Vec::new(), Compression::fast()));
    // Neither serialising a frame (see `encode`) nor writing into memory can fail.
    let _ = serde_json::to_writer(&mut out, frame);
    let _ = out.flush();
    out.into_inner()
        .ok()
        .and_then(|encoder| encoder.finish().ok())
        .unwrap_or_default()
}

/// A deflated frame goes as binary messages of at most `PIECE_BYTES` of it, each after one byte: `MORE` when pieces
/// of the same frame follow, `LAST` on its last. The receiver reads each piece as it comes, so that it never holds
/// the whole message either (a WebSocket message sent in fragments is put together whole before it is handed on).
pub const PIECE_BYTES: usize = crate::FRAGMENT_BYTES;
pub const MORE: u8 = 1;
pub const LAST: u8 = 0;

/// The binary messages that carry `deflated`, as `PIECE_BYTES` says: cut where a text message's fragments are.
pub fn pieces(deflated: &[u8]) -> impl Iterator<Item = Vec<u8>> + '_ {
    crate::fragments(deflated.len()).map(move |range| {
        let mut message = Vec::with_capacity(1 + range.len());
        message.push(if range.end == deflated.len() { LAST } else { MORE });
        message.extend_from_slice(&deflated[range]);
        message
    })
}

impl AgentFrame {
    /// Decodes one agent frame sent deflated (`deflate`), as `decode_after` decodes text, while it inflates: the
    /// text is never held whole. It may inflate to `max_text` bytes, the longest text message the receiver takes; a
    /// frame longer than that is refused there, having held no more than what was read of it (a small message can
    /// inflate to gigabytes). Its JSON object begins with its `type`, as every frame is written.
    pub fn inflate_after(
        deflated: &[u8],
        previous: &ActualState,
        max_text: usize,
    ) -> Result<AgentFrame, serde_json::Error> {
        AgentFrame::inflate_from(deflated, previous, || max_text)
    }

    /// `inflate_after` from a stream of the deflated frame (its pieces as they come), which may inflate to
    /// `max_text()` bytes, asked again as it inflates (a limit that grows with what has come so far).
    pub fn inflate_from(
        deflated: impl BufRead,
        previous: &ActualState,
        max_text: impl FnMut() -> usize,
    ) -> Result<AgentFrame, serde_json::Error> {
        let text = Capped {
            inner: DeflateDecoder::new(deflated),
            read: 0,
            max: max_text,
        };
        let mut de = serde_json::Deserializer::from_reader(BufReader::with_capacity(32 << 10, text));
        let frame = serde::Deserializer::deserialize_map(&mut de, TypeFirst(previous))?;
        de.end()?;
        Ok(frame)
    }
}

/// A reader that fails, saying so, past `max()` bytes.
struct Capped<R, M> {
    inner: R,
    read: usize,
    max: M,
}

impl<R: Read, M: FnMut() -> usize> Read for Capped<R, M> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read = self.read.saturating_add(n);
        let max = (self.max)();
        if self.read > max {
            return Err(std::io::Error::other(format!(
                "the deflated frame inflates to more than {max} bytes, the most it may"
            )));
        }
        Ok(n)
    }
}

/// An `AgentFrame` read in one pass: its `type` first, then the rest of the object as that variant. Serde's own
/// reading of a tagged enum collects the whole object first, for a report several times the size of its text.
struct TypeFirst<'p>(&'p ActualState);

impl<'de> serde::de::Visitor<'de> for TypeFirst<'_> {
    type Value = AgentFrame;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an agent frame, its \"type\" first")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<AgentFrame, A::Error> {
        use serde::de::Error;
        if map.next_key::<Text<'_>>()?.as_ref().map(AsRef::as_ref) != Some("type") {
            return Err(A::Error::custom(
                "a deflated frame's object must begin with its \"type\"",
            ));
        }
        let kind = map.next_value::<Text<'_>>()?;
        let rest = MapAccessDeserializer::new(Rest(map));
        match kind.as_ref() {
            "actualState" => read_report(rest, self.0),
            "hello" => Hello::deserialize(rest).map(AgentFrame::Hello),
            "answer" => Answer::deserialize(rest).map(AgentFrame::Answer),
            "progress" => Progress::deserialize(rest).map(AgentFrame::Progress),
            "logLine" => LogLine::deserialize(rest).map(AgentFrame::LogLine),
            other => Err(A::Error::unknown_variant(
                other,
                &["hello", "actualState", "answer", "progress", "logLine"],
            )),
        }
    }
}

/// The rest of a frame's object after its `type`: a second `type` is an error, as it is when text is read.
struct Rest<A>(A);

impl<'de, A: serde::de::MapAccess<'de>> serde::de::MapAccess<'de> for Rest<A> {
    type Error = A::Error;

    fn next_key_seed<K: serde::de::DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, A::Error> {
        use serde::de::{Error, IntoDeserializer};
        let Some(key) = self.0.next_key::<Text<'de>>()? else {
            return Ok(None);
        };
        if key.as_ref() == "type" {
            return Err(A::Error::duplicate_field("type"));
        }
        seed.deserialize(key.0.into_deserializer()).map(Some)
    }

    fn next_value_seed<V: serde::de::DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        self.0.next_value_seed(seed)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{Container, ContainerState, Labels, Routes, Worktree, encode};

    fn report(n: usize) -> ActualState {
        ActualState {
            containers: (0..n)
                .map(|i| {
                    Arc::new(Container {
                        name: format!("sandbox-sb-{i:04}-account"),
                        id: format!("{i:064x}"),
                        labels: Labels::from([("sdp.sandbox", format!("sb-{i:04}").as_str())]),
                        state: ContainerState::Running,
                        ports: vec![30_000 + i as u16],
                        restart_count: 0,
                        exit_code: None,
                        probe: None,
                    })
                })
                .collect(),
            networks: vec!["sdp-sb-0000".into()],
            worktrees: vec![Worktree {
                sandbox: "sb-0000".into(),
                service: "account".into(),
                branch: "feature/é".into(),
                commit: "c".repeat(40).into(),
            }]
            .into(),
            routes: [(
                "sb-0000".to_string(),
                Routes::from([("account", "http://10.0.0.2:30000")]),
            )]
            .into(),
            ..ActualState::default()
        }
    }

    fn deflated_text(text: &str) -> Vec<u8> {
        let mut out = DeflateEncoder::new(Vec::new(), Compression::fast());
        out.write_all(text.as_bytes()).unwrap();
        out.finish().unwrap()
    }

    #[test]
    fn a_deflated_report_reads_as_its_text_does_and_shares_the_previous_reports_containers() {
        let before = report(300);
        let mut now = before.clone();
        Arc::make_mut(&mut now.containers[7]).restart_count = 1;
        let frame = AgentFrame::ActualState(now.clone());
        let deflated = deflate(&frame);
        let text = encode(&frame);
        assert!(
            deflated.len() * 5 < text.len(),
            "{} of {} bytes",
            deflated.len(),
            text.len()
        );
        let read = AgentFrame::inflate_after(&deflated, &before, 1 << 20).unwrap();
        assert_eq!(read, AgentFrame::decode(&text).unwrap());
        assert_eq!(read, frame);
        let AgentFrame::ActualState(read) = read else {
            unreachable!()
        };
        assert!(Arc::ptr_eq(&read.containers[0], &before.containers[0]));
        assert!(!Arc::ptr_eq(&read.containers[7], &before.containers[7]));
        assert_eq!(read.containers[7].restart_count, 1);
    }

    #[test]
    fn pieces_carry_the_deflated_frame_in_order_and_say_which_is_last() {
        for len in [0, 1, PIECE_BYTES - 1, PIECE_BYTES, PIECE_BYTES + 1, 3 * PIECE_BYTES + 7] {
            let deflated: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let pieces: Vec<Vec<u8>> = pieces(&deflated).collect();
            assert_eq!(pieces.len(), len.div_ceil(PIECE_BYTES).max(1), "{len}");
            let (last, more) = pieces.split_last().unwrap();
            assert_eq!(last[0], LAST, "{len}");
            assert!(more.iter().all(|p| p[0] == MORE && p.len() == 1 + PIECE_BYTES), "{len}");
            let joined: Vec<u8> = pieces.iter().flat_map(|p| p[1..].iter().copied()).collect();
            assert_eq!(joined, deflated, "{len}");
        }
    }

    #[test]
    fn every_kind_of_frame_reads_deflated() {
        let frames = [
            AgentFrame::Hello(Hello {
                node: "vm1".into(),
                role: crate::Role::Micro,
                protocol_version: crate::PROTOCOL_VERSION,
                agent_version: "1".into(),
                address: "10.0.0.2".into(),
                repos: vec!["account".into()],
                images: vec![],
            }),
            AgentFrame::Answer(Answer::new::<crate::ActionRequest>(7, Err("no space left".into()))),
            AgentFrame::LogLine(LogLine {
                deployment_id: Some("d1".into()),
                container: None,
                seq: 3,
                line: "\"quoted\" \u{1b}[2J".into(),
                dropped_before: 0,
            }),
        ];
        for frame in frames {
            let read = AgentFrame::inflate_after(&deflate(&frame), &ActualState::default(), 1 << 20);
            assert_eq!(read.unwrap(), frame);
        }
    }

    #[test]
    fn a_frame_that_inflates_past_the_limit_is_refused_saying_so() {
        // 64 MiB of spaces inside a report deflate to about 64 KiB.
        let bomb = format!("{{\"type\":\"actualState\",\"networks\":[{}]}}", " ".repeat(64 << 20));
        let deflated = deflated_text(&bomb);
        assert!(deflated.len() < 1 << 20, "{}", deflated.len());
        let err = AgentFrame::inflate_after(&deflated, &ActualState::default(), 32 << 20)
            .unwrap_err()
            .to_string();
        assert!(err.contains("inflates to more than 33554432 bytes"), "{err}");
        // The same frame within a limit that holds it is read (the spaces are whitespace).
        let small = deflated_text(r#"{"type":"actualState","containers":[],"networks":[],"worktrees":[],"heads":[]}"#);
        assert!(AgentFrame::inflate_after(&small, &ActualState::default(), 100).is_ok());
        let err = AgentFrame::inflate_after(&small, &ActualState::default(), 50)
            .unwrap_err()
            .to_string();
        assert!(err.contains("more than 50 bytes"), "{err}");
    }

    #[test]
    fn bad_deflated_frames_are_clear_errors() {
        let cases = [
            (
                deflated_text(r#"{"networks":[],"type":"actualState"}"#),
                "must begin with its \"type\"",
            ),
            (
                deflated_text(r#"{"type":"shell","cmd":"rm"}"#),
                "unknown variant `shell`",
            ),
            (
                deflated_text(r#"{"type":"actualState","type":"hello","containers":[]}"#),
                "duplicate field `type`",
            ),
            (
                deflated_text(r#"{"type":"actualState","containers":[{"id":1}]}"#),
                "containers[0]",
            ),
            (deflated_text(r#"["type"]"#), "its \"type\" first"),
            (
                deflated_text(r#"{"type":"logLine","seq":1,"line":"x","droppedBefore":0} trailing"#),
                "trailing characters",
            ),
            (b"not deflate at all".to_vec(), "corrupt deflate stream"),
        ];
        for (deflated, says) in cases {
            let err = AgentFrame::inflate_after(&deflated, &ActualState::default(), 1 << 20)
                .unwrap_err()
                .to_string();
            assert!(err.contains(says), "{says}: {err}");
        }
    }
}
