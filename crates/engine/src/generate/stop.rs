//! Stop strings: text that might be the start of one is held back, so nothing past a stop
//! string is ever streamed.

/// Holds back text that might be the start of a stop string, so nothing past one is streamed.
pub struct StopMatcher {
    stops: Vec<String>,
    text: String,
    emitted: usize,
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> Self {
        Self {
            stops,
            text: String::new(),
            emitted: 0,
        }
    }

    /// Adds text; returns (text safe to emit, whether a stop string was hit).
    pub fn push(&mut self, piece: &str) -> (String, bool) {
        self.text.push_str(piece);
        if self.stops.is_empty() {
            let out = self.text[self.emitted..].to_string();
            self.emitted = self.text.len();
            return (out, false);
        }
        let max_stop = self.stops.iter().map(|s| s.len()).max().unwrap_or(0);
        let from = floor_char(&self.text, self.emitted.saturating_sub(max_stop));
        let hit = self
            .stops
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| self.text[from..].find(s.as_str()).map(|i| from + i))
            .min();
        if let Some(at) = hit {
            let out = self.text[self.emitted..at.max(self.emitted)].to_string();
            self.text.truncate(at);
            self.emitted = self.text.len();
            return (out, true);
        }
        // Longest suffix that is a proper prefix of a stop string stays pending.
        let mut hold = 0;
        for s in &self.stops {
            for k in (1..s.len()).rev() {
                if k <= self.text.len() - self.emitted
                    && s.is_char_boundary(k)
                    && self.text.ends_with(&s[..k])
                {
                    hold = hold.max(k);
                    break;
                }
            }
        }
        let end = self.text.len() - hold;
        let out = self.text[self.emitted..end].to_string();
        self.emitted = end;
        (out, false)
    }

    /// Releases any text still held back (at the end of generation).
    pub fn flush(&mut self) -> String {
        let out = self.text[self.emitted..].to_string();
        self.emitted = self.text.len();
        out
    }
}

fn floor_char(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::StopMatcher;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut m = StopMatcher {
            stops: stops.iter().map(|s| s.to_string()).collect(),
            text: String::new(),
            emitted: 0,
        };
        let mut out = String::new();
        for p in pieces {
            let (o, hit) = m.push(p);
            out.push_str(&o);
            if hit {
                return (out, true);
            }
        }
        out.push_str(&m.flush());
        (out, false)
    }

    #[test]
    fn stop_string_split_across_pieces_is_cut() {
        assert_eq!(
            run(&["\nUser:"], &["Hello", "\nUs", "er:", " more"]),
            ("Hello".into(), true)
        );
    }

    #[test]
    fn partial_match_is_released_when_it_diverges() {
        assert_eq!(run(&["STOP"], &["ST", "OP?"]), ("".into(), true));
        assert_eq!(run(&["STOP"], &["ST", "ART"]), ("START".into(), false));
    }

    #[test]
    fn multibyte_text_near_stops_is_safe() {
        assert_eq!(
            run(&["é!"], &["café", " ok é", "!"]),
            ("café ok ".into(), true)
        );
    }
}
