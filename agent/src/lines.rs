//! Output of a container or a build, cut into log lines for the reconciler. A line holds at most
//! `sdp_protocol::MAX_LOG_LINE` bytes: what a program writes past it before its newline is counted, not kept, so
//! a container that prints megabytes without a newline costs the agent 16 KiB, and the line that goes out says how
//! many bytes were cut. Bytes that are not UTF-8 are shown as U+FFFD instead of ending the stream.

use sdp_protocol::{MAX_LOG_LINE, cut_line};

/// The line being read from one stream.
#[derive(Default)]
pub struct Lines {
    partial: Vec<u8>,
    /// Bytes of the current line past the limit, dropped.
    cut: usize,
}

impl Lines {
    /// Reads `bytes`, calling `line` for each line they end.
    pub fn push(&mut self, mut bytes: &[u8], mut line: impl FnMut(String)) {
        loop {
            let (part, end) = match bytes.iter().position(|&b| b == b'\n') {
                Some(i) => (&bytes[..i], Some(i)),
                None => (bytes, None),
            };
            let room = MAX_LOG_LINE.saturating_sub(self.partial.len()).min(part.len());
            self.partial.extend_from_slice(&part[..room]);
            self.cut += part.len() - room;
            match end {
                Some(i) => {
                    line(self.take());
                    bytes = &bytes[i + 1..];
                }
                None => return,
            }
        }
    }

    /// The last line of a stream that ended without a newline.
    pub fn finish(mut self) -> Option<String> {
        (!self.partial.is_empty() || self.cut > 0).then(|| self.take())
    }

    fn take(&mut self) -> String {
        if self.partial.last() == Some(&b'\r') && self.cut == 0 {
            self.partial.pop();
        }
        let mut text = String::from_utf8_lossy(&self.partial).into_owned();
        cut_line(&mut text, std::mem::take(&mut self.cut));
        self.partial.clear();
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(chunks: &[&[u8]]) -> Vec<String> {
        let mut lines = Lines::default();
        let mut out = Vec::new();
        for chunk in chunks {
            lines.push(chunk, |l| out.push(l));
        }
        out.extend(lines.finish());
        out
    }

    #[test]
    fn lines_split_across_chunks_come_out_whole() {
        assert_eq!(
            read(&[b"one\ntw", b"o\r\n", b"", b"\nthree"]),
            ["one", "two", "", "three"]
        );
        assert_eq!(
            read(&[b"a\xffb\n"]),
            ["a\u{fffd}b"],
            "bytes that are not UTF-8 do not end the stream"
        );
        assert!(read(&[]).is_empty());
    }

    #[test]
    fn a_line_without_a_newline_is_kept_to_the_limit_and_the_rest_counted() {
        let mut lines = Lines::default();
        let mut out = Vec::new();
        // 10 MB without a newline, in 64 KiB chunks as Docker sends them: the agent never holds more than the limit.
        let chunk = vec![b'y'; 64 * 1024];
        for _ in 0..160 {
            lines.push(&chunk, |l| out.push(l));
            assert!(lines.partial.len() <= MAX_LOG_LINE);
        }
        assert!(out.is_empty(), "no line has ended yet");
        lines.push(b"\nnext\n", |l| out.push(l));
        assert_eq!(out.len(), 2);
        assert!(out[0].len() <= MAX_LOG_LINE, "{} bytes", out[0].len());
        let kept = out[0].bytes().take_while(|&b| b == b'y').count();
        let said: usize = out[0]
            .rsplit_once("[sdp: ")
            .and_then(|(_, rest)| rest.strip_suffix(" more bytes cut]"))
            .and_then(|n| n.parse().ok())
            .expect("the cut is said");
        assert_eq!(kept + said, 160 * 64 * 1024, "every byte is kept or counted");
        assert_eq!(out[1], "next", "the line after it is whole");

        let last = read(&[&vec![b'z'; MAX_LOG_LINE + 10]]);
        assert_eq!(last.len(), 1);
        assert!(last[0].len() <= MAX_LOG_LINE && last[0].ends_with(" more bytes cut]"));
    }
}
