//! Whatever arrives on a WebSocket, decoding it never panics: random text, and every cut of real frames of both
//! directions (what the hub and the agent each decode first); random bytes and every cut of real frames, deflated,
//! as binary messages (what the hub reads as a deflated frame).

use std::io::Write;

use proptest::prelude::*;
use sdp_protocol::{ActualState, AgentFrame, ReconcilerFrame, decode};

const FRAMES: [&str; 5] = [
    r#"{"type":"hello","node":"micro-92","role":"micro","protocolVersion":1,"agentVersion":"0.1.0","address":"172.18.136.92","repos":["account"],"images":["alpine:3.20"]}"#,
    r#"{"type":"actualState","containers":[{"name":"sandbox-a-account","id":"abc","labels":{"sdp.managed":"true"},"state":"running","ports":[9001],"restartCount":0}],"networks":["sandbox-a"],"worktrees":[],"heads":[]}"#,
    r#"{"type":"ask","requestId":7,"kind":"action","body":{"deploymentId":"3","action":{"kind":"deployService","sandbox":"a","service":"account","branch":"main","container":"sandbox-a-account","hostPort":9001,"env":{},"labels":{},"build":{"package":"./cmd/account","tags":["netgo"]}}}}"#,
    r#"{"type":"welcome","protocolVersion":2,"installation":"0a1b2c3d4e5f6071"}"#,
    r#"{"type":"answer","requestId":7,"result":{"ok":[{"repo":"account","branch":"main","commit":"0123abc"}]}}"#,
];

fn deflated(text: &str) -> Vec<u8> {
    let mut out = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
    out.write_all(text.as_bytes()).unwrap();
    out.finish().unwrap()
}

fn inflate(bytes: &[u8]) -> Option<AgentFrame> {
    AgentFrame::inflate_after(bytes, &ActualState::default(), 1 << 20).ok()
}

proptest! {
    #[test]
    fn random_bytes_never_panic_as_a_deflated_frame(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let _ = inflate(&bytes);
    }

    #[test]
    fn every_cut_of_a_real_frame_deflated_never_panics(
        which in 0..FRAMES.len(),
        cut in 0usize..400,
        junk in any::<String>(),
        bytes in 0usize..200,
    ) {
        let frame = FRAMES[which];
        let text = format!("{}{junk}", &frame[..cut.min(frame.len())]);
        let _ = inflate(&deflated(&text));
        // And the deflated stream cut short.
        let whole = deflated(frame);
        prop_assert_eq!(inflate(&whole[..bytes.min(whole.len())]).is_some(), bytes >= whole.len() && which != 2 && which != 3);
    }

    #[test]
    fn random_text_never_panics(text in any::<String>()) {
        let _ = decode::<AgentFrame>(&text);
        let _ = AgentFrame::decode(&text);
        let _ = decode::<ReconcilerFrame>(&text);
    }

    #[test]
    fn every_cut_of_a_real_frame_never_panics(which in 0..FRAMES.len(), cut in 0usize..400, junk in any::<String>()) {
        let frame = FRAMES[which];
        let cut = cut.min(frame.len());
        let text = format!("{}{junk}", &frame[..cut]);
        let _ = decode::<AgentFrame>(&text);
        // The hub's own way decodes what `decode` does, and fails where it fails.
        prop_assert_eq!(AgentFrame::decode(&text).ok(), decode::<AgentFrame>(&text).ok());
        let _ = decode::<ReconcilerFrame>(&text);
    }
}

#[test]
fn the_real_frames_decode() {
    assert!(decode::<AgentFrame>(FRAMES[0]).is_ok());
    assert!(decode::<AgentFrame>(FRAMES[1]).is_ok());
    assert!(decode::<ReconcilerFrame>(FRAMES[2]).is_ok());
    assert!(decode::<ReconcilerFrame>(FRAMES[3]).is_ok());
    assert!(decode::<AgentFrame>(FRAMES[4]).is_ok());
    assert_eq!(
        AgentFrame::decode(FRAMES[1]).unwrap(),
        decode::<AgentFrame>(FRAMES[1]).unwrap()
    );
    // The agent's frames, deflated, read as their text does.
    for text in [FRAMES[0], FRAMES[1], FRAMES[4]] {
        assert_eq!(inflate(&deflated(text)), Some(decode::<AgentFrame>(text).unwrap()));
    }
}
