//! A problem found in a manifest: what is wrong, where, and what to do about it.

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

use crate::Kind;
use crate::locate::Pos;

/// One problem, located at `file:line:column`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub file: PathBuf,
    pub line: u64,
    pub column: u64,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// The object the problem belongs to, when its kind and name could be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object: Option<ObjectRef>,
}

/// A kind and a name: enough to say which object a problem or a change is about.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ObjectRef {
    pub kind: Kind,
    pub name: String,
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind, self.name)
    }
}

impl Problem {
    pub fn new(file: impl Into<PathBuf>, pos: Pos, message: impl Into<String>) -> Problem {
        Problem {
            file: file.into(),
            line: pos.line,
            column: pos.column,
            message: message.into(),
            hint: None,
            object: None,
        }
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Problem {
        self.hint = Some(hint.into());
        self
    }

    pub fn about(mut self, object: Option<ObjectRef>) -> Problem {
        self.object = object;
        self
    }

    pub fn pos(&self) -> Pos {
        Pos::new(self.line, self.column)
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.message
        )?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}
