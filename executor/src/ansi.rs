//! Strip ANSI escape sequences (CSI, OSC, two-byte escapes) from terminal
//! output, statefully so sequences split across chunks are still removed.

/// Streaming ANSI stripper.
#[derive(Debug, Default, Clone)]
pub struct AnsiStripper {
    state: State,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    #[default]
    Text,
    /// Saw ESC.
    Esc,
    /// Inside `ESC [` ... final byte 0x40..=0x7e.
    Csi,
    /// Inside `ESC ]` ... BEL or `ESC \`.
    Osc,
    /// Saw ESC inside an OSC (maybe the ST terminator).
    OscEsc,
    /// `ESC (`-style: skip one more byte.
    Charset,
}

impl AnsiStripper {
    /// Strip `input`, appending the text to `out`.
    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>) {
        for &b in input {
            self.state = match (self.state, b) {
                (State::Text, 0x1b) => State::Esc,
                (State::Text, 0x9b) => State::Csi,
                (State::Text, b'\r') => State::Text, // drop bare CRs (progress bars)
                (State::Text, b) => {
                    out.push(b);
                    State::Text
                }
                (State::Esc, b'[') => State::Csi,
                (State::Esc, b']') => State::Osc,
                (State::Esc, b'(' | b')' | b'*' | b'+' | b'#' | b'%') => State::Charset,
                (State::Esc, _) => State::Text,
                (State::Charset, _) => State::Text,
                (State::Csi, 0x40..=0x7e) => State::Text,
                (State::Csi, _) => State::Csi,
                (State::Osc, 0x07) => State::Text,
                (State::Osc, 0x1b) => State::OscEsc,
                (State::Osc, _) => State::Osc,
                (State::OscEsc, b'\\') => State::Text,
                (State::OscEsc, _) => State::Osc,
            };
        }
    }
}

/// Strip a whole buffer.
pub fn strip(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    AnsiStripper::default().push(input, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_colors_titles_and_split_sequences() {
        assert_eq!(strip(b"\x1b[1;31mred\x1b[0m plain"), b"red plain");
        assert_eq!(strip(b"\x1b]0;title\x07after"), b"after");
        assert_eq!(strip(b"a\r\nb"), b"a\nb");
        let mut s = AnsiStripper::default();
        let mut out = Vec::new();
        s.push(b"x\x1b[3", &mut out);
        s.push(b"2my", &mut out);
        assert_eq!(out, b"xy");
    }
}
