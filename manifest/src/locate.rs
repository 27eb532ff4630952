//! Where each key and value of a YAML document stands in its file.
//!
//! Serde gives positions only for the errors it raises itself; the semantic rules of `validate.rs` run on typed
//! values afterwards. This index, built from the parser's events, maps a path such as
//! `["spec", "services", "account", "port"]` back to `line:column`, so every error can point at its place.

use std::collections::HashMap;
use std::ops::Range;

use serde::Serialize;
use serde_saphyr::granit_parser::{Event, Parser};

/// A 1-based line and column in a file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Pos {
    pub line: u64,
    pub column: u64,
}

impl Pos {
    pub fn new(line: u64, column: u64) -> Pos {
        Pos { line, column }
    }
}

/// The place of one node: where its key is (for mapping values) and where its value is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Place {
    pub key: Option<Pos>,
    pub value: Pos,
    /// Byte range of the value's token in the source (for scalars: the whole token, quotes included).
    pub value_bytes: Range<usize>,
}

/// Places of every node of one document, by path. Sequence items use their index as the path segment.
#[derive(Clone, Debug, Default)]
pub struct Index {
    places: HashMap<Vec<String>, Place>,
}

enum Frame {
    Map {
        path: Vec<String>,
        key: Option<(String, Pos)>,
    },
    Seq {
        path: Vec<String>,
        next: usize,
    },
}

impl Index {
    /// Builds the index of the first document in `source`. A syntax error ends the index early: whatever was
    /// read before it is kept, since the loader reports the syntax error itself.
    pub fn build(source: &str) -> Index {
        let mut places = HashMap::new();
        let mut stack: Vec<Frame> = Vec::new();
        let mut root_seen = false;
        for item in Parser::new_from_str(source) {
            let Ok((event, span)) = item else { break };
            let pos = Pos::new(span.start.line() as u64, span.start.col() as u64 + 1);
            let bytes = span.start.byte_offset().unwrap_or(0)..span.end.byte_offset().unwrap_or(0);
            let opens = match &event {
                Event::MappingStart(..) => Some(true),
                Event::SequenceStart(..) => Some(false),
                Event::Scalar(..) | Event::Alias(..) => None,
                Event::MappingEnd | Event::SequenceEnd => {
                    stack.pop();
                    continue;
                }
                Event::DocumentEnd if root_seen => break,
                _ => continue,
            };
            // A scalar where a mapping expects a key is that key; anything else is a node with a path.
            if let Some(Frame::Map { key, .. }) = stack.last_mut()
                && key.is_none()
            {
                let name = match &event {
                    Event::Scalar(text, ..) => text.to_string(),
                    _ => "?".to_string(),
                };
                *key = Some((name, pos));
                if let Some(open_map) = opens {
                    // A complex key: its children are not addressable, but the stack must stay balanced.
                    stack.push(if open_map {
                        Frame::Map {
                            path: vec!["?".into()],
                            key: None,
                        }
                    } else {
                        Frame::Seq {
                            path: vec!["?".into()],
                            next: 0,
                        }
                    });
                }
                continue;
            }
            let (path, key_pos) = match stack.last_mut() {
                None => {
                    root_seen = true;
                    (Vec::new(), None)
                }
                Some(Frame::Map { path, key }) => {
                    let (name, key_pos) = key.take().unwrap_or_default();
                    let mut p = path.clone();
                    p.push(name);
                    (p, Some(key_pos))
                }
                Some(Frame::Seq { path, next }) => {
                    let mut p = path.clone();
                    p.push(next.to_string());
                    *next += 1;
                    (p, None)
                }
            };
            places.entry(path.clone()).or_insert(Place {
                key: key_pos,
                value: pos,
                value_bytes: bytes,
            });
            match opens {
                Some(true) => stack.push(Frame::Map { path, key: None }),
                Some(false) => stack.push(Frame::Seq { path, next: 0 }),
                None => {}
            }
        }
        Index { places }
    }

    /// The place of the node at `path`.
    pub fn get(&self, path: &[&str]) -> Option<&Place> {
        let key: Vec<String> = path.iter().map(|s| s.to_string()).collect();
        self.places.get(&key)
    }

    /// Where to point for a problem with the value at `path`: the value itself, or else the nearest ancestor
    /// that is present, or else the start of the document.
    pub fn value_pos(&self, path: &[&str]) -> Pos {
        self.nearest(path, |p| p.value)
    }

    /// Where to point for a problem with the key at `path` (e.g. an unknown name): the key, else as `value_pos`.
    pub fn key_pos(&self, path: &[&str]) -> Pos {
        self.nearest(path, |p| p.key.unwrap_or(p.value))
    }

    fn nearest(&self, path: &[&str], pick: impl Fn(&Place) -> Pos) -> Pos {
        (0..=path.len())
            .rev()
            .find_map(|n| self.get(&path[..n]).map(&pick))
            .unwrap_or(Pos::new(1, 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_keys_and_values_of_nested_maps_and_sequences() {
        let src = "a: 1\nspec:\n  services:\n    account:\n      port: 9001\n  list: [x, 'y']\n";
        let index = Index::build(src);
        assert_eq!(index.get(&["a"]).unwrap().value, Pos::new(1, 4));
        let port = index.get(&["spec", "services", "account", "port"]).unwrap();
        assert_eq!(port.key, Some(Pos::new(5, 7)));
        assert_eq!(port.value, Pos::new(5, 13));
        assert_eq!(&src[port.value_bytes.clone()], "9001");
        let y = index.get(&["spec", "list", "1"]).unwrap();
        assert_eq!(y.value, Pos::new(6, 13));
        assert_eq!(&src[y.value_bytes.clone()], "'y'");
    }

    #[test]
    fn missing_paths_fall_back_to_the_nearest_ancestor() {
        let index = Index::build("\n\nspec:\n  gateway: {}\n");
        assert_eq!(index.value_pos(&["spec", "gateway", "branch"]), Pos::new(4, 12));
        assert_eq!(index.value_pos(&["nothing"]), Pos::new(3, 1));
    }
}
