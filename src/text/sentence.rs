//! Splits streamed LLM text into pieces worth speaking.
//!
//! Latency decides the first piece: it goes to TTS as soon as a clause is
//! complete (a comma, colon or semicolon after a few words, or a few words
//! followed by a conjunction such as "because", or more words followed by a
//! preposition such as "from"), because Piper needs only
//! ~60 ms for a clause, its time grows with the text, and the caller hears
//! the clause while the LLM is still writing. Later pieces are whole
//! sentences, which sound more natural.

/// Words a first clause needs before a comma may end it.
const MIN_CLAUSE_WORDS: usize = 3;

/// Words that open a new clause, and how many words a first clause needs
/// before one of them may end it: a conjunction is a natural place for a
/// short pause, a preposition an acceptable one in a longer clause.
const BREAK_WORDS: [(&[&str], usize); 2] = [
    (
        &[
            "and", "but", "because", "so", "which", "when", "where", "while", "if", "or", "since",
            "although", "unless", "until", "that",
        ],
        4,
    ),
    (
        &[
            "from", "of", "in", "to", "with", "for", "about", "on", "at", "by", "into", "through",
        ],
        6,
    ),
];

const ABBREVIATIONS: [&str; 8] = ["mr.", "mrs.", "ms.", "dr.", "st.", "e.g.", "i.e.", "vs."];

#[derive(Debug, Default)]
pub(crate) struct SentenceAggregator {
    buf: String,
    /// Clauses may end the first piece only.
    first_done: bool,
}

impl SentenceAggregator {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Adds streamed text; returns the pieces it completed.
    pub(crate) fn push(&mut self, text: &str) -> Vec<String> {
        self.buf.push_str(text);
        let mut out = Vec::new();
        while let Some(end) = self.boundary() {
            let piece: String = self.buf.drain(..end).collect();
            let piece = piece.trim().to_string();
            // Stray punctuation ("..", a closing quote) has nothing to say.
            if piece.chars().any(char::is_alphanumeric) {
                self.first_done = true;
                out.push(piece);
            }
        }
        out
    }

    /// The rest, at the end of the stream.
    pub(crate) fn flush(&mut self) -> Option<String> {
        let rest = std::mem::take(&mut self.buf).trim().to_string();
        (!rest.is_empty()).then(|| {
            self.first_done = true;
            rest
        })
    }

    /// Byte index just after the first boundary followed by whitespace.
    fn boundary(&self) -> Option<usize> {
        let punctuation = self.punctuation_boundary();
        if self.first_done {
            return punctuation;
        }
        match (punctuation, self.break_word_boundary()) {
            (Some(p), Some(c)) => Some(p.min(c)),
            (p, c) => p.or(c),
        }
    }

    /// Before a complete break word (followed by whitespace) that comes
    /// after enough words.
    fn break_word_boundary(&self) -> Option<usize> {
        let mut words = 0;
        let mut start = None;
        for (i, c) in self.buf.char_indices() {
            if c.is_whitespace() {
                if let Some(st) = start.take() {
                    let word = self.buf[st..i].to_lowercase();
                    if BREAK_WORDS
                        .iter()
                        .any(|(list, min)| words >= *min && list.contains(&word.as_str()))
                    {
                        return Some(st);
                    }
                    words += 1;
                }
            } else if start.is_none() {
                start = Some(i);
            }
        }
        None
    }

    fn punctuation_boundary(&self) -> Option<usize> {
        let b = self.buf.as_bytes();
        for (i, &c) in b.iter().enumerate() {
            // Punctuation that ends the text so far after a letter ends the
            // piece now, a token before the space that would confirm it
            // (after a digit it may be "1,000" or "3.5" in the making).
            let ends_word = match b.get(i + 1) {
                Some(n) => n.is_ascii_whitespace(),
                None => i > 0 && b[i - 1].is_ascii_alphabetic(),
            };
            if !ends_word {
                continue;
            }
            match c {
                b'.' | b'!' | b'?' => {
                    if c == b'.' && self.is_abbreviation(i) {
                        continue;
                    }
                    return Some(i + 1);
                }
                b'\n' => return Some(i + 1),
                b',' | b';' | b':'
                    if !self.first_done
                        && self.buf[..i].split_whitespace().count() >= MIN_CLAUSE_WORDS =>
                {
                    return Some(i + 1);
                }
                _ => {}
            }
        }
        None
    }

    /// A known abbreviation, or an initial ("J.", "U.S.").
    fn is_abbreviation(&self, dot: usize) -> bool {
        let word = self.buf[..=dot]
            .rsplit(char::is_whitespace)
            .next()
            .unwrap_or("")
            .to_lowercase();
        let last = word[..word.len() - 1].rsplit('.').next().unwrap_or("");
        ABBREVIATIONS.contains(&word.as_str()) || last.chars().count() == 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(chunks: &[&str]) -> Vec<String> {
        let mut a = SentenceAggregator::new();
        let mut out: Vec<String> = chunks.iter().flat_map(|c| a.push(c)).collect();
        out.extend(a.flush());
        out
    }

    #[test]
    fn first_clause_then_sentences() {
        let out = run(&[
            "Well, plants",
            " drink water through their roots, like",
            " straws. Then",
            " the water climbs up, all the way. Neat!",
        ]);
        assert_eq!(
            out,
            [
                "Well, plants drink water through their roots,",
                "like straws.",
                "Then the water climbs up, all the way.",
                "Neat!"
            ]
        );
    }

    #[test]
    fn a_piece_ends_with_its_punctuation_token_not_the_next_one() {
        let mut a = SentenceAggregator::new();
        let mut out = Vec::new();
        for t in ["The", " sky", " is", " blue", "."] {
            out.extend(a.push(t));
        }
        assert_eq!(out, ["The sky is blue."]);
        // Numbers, abbreviations and initials wait for what follows.
        for t in ["It is 1", ",", "000 miles, Mr", ".", " J", "."] {
            assert!(a.push(t).is_empty(), "{t:?}");
        }
        assert_eq!(
            a.push(" Smith said so. ").concat(),
            "It is 1,000 miles, Mr. J. Smith said so."
        );
        assert_eq!(run(&["Well", ".", "..", " Yes."]), ["Well.", "Yes."]);
    }

    #[test]
    fn abbreviations_and_decimals_do_not_split() {
        let out = run(&["Mr. Smith paid 3.50 dollars. ", "Done"]);
        assert_eq!(out, ["Mr. Smith paid 3.50 dollars.", "Done"]);
    }

    #[test]
    fn a_long_first_clause_breaks_before_a_conjunction() {
        let out = run(&[
            "The sky",
            " is blue because",
            " sunlight scatters, and that",
            " is all. It is blue and bright.",
        ]);
        assert_eq!(
            out,
            [
                "The sky is blue",
                "because sunlight scatters, and that is all.",
                "It is blue and bright."
            ]
        );
        assert_eq!(
            run(&["The Moon is about 239,000 miles away from Earth. Wow."]),
            [
                "The Moon is about 239,000 miles away",
                "from Earth.",
                "Wow."
            ]
        );
        // Too few words before it, or only the start of a longer word.
        assert_eq!(
            run(&["Rain and sun make rainbows."]),
            ["Rain and sun make rainbows."]
        );
        assert_eq!(
            run(&["Plants need light and", "roids"]),
            ["Plants need light androids"]
        );
    }
}
