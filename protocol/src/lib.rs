//! Frames between the reconciler and its agents (Hello, ActualState, Action, ActionResult, Progress, LogLine).
//!
//! Only the version lives here so far; the frames come with the reconciler core (issue 3).

/// The protocol version both sides announce; a mismatch is refused with both versions named.
pub const PROTOCOL_VERSION: u32 = 1;
