//! Word error rate, with the light normalisation speech benchmarks use so
//! that "Mr. Dashwood" and "mister dashwood" count as the same words.

/// Lower-case words without punctuation; hyphens split words; a few spoken
/// forms of abbreviations are unified.
pub(crate) fn normalize(text: &str) -> Vec<String> {
    let cleaned: String = text
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c == '\'' {
                c
            } else {
                ' '
            }
        })
        .collect();
    cleaned
        .split_whitespace()
        .map(|w| w.trim_matches('\''))
        .filter(|w| !w.is_empty())
        .map(|w| match w {
            "mr" => "mister".to_string(),
            "mrs" => "missus".to_string(),
            "dr" => "doctor".to_string(),
            "st" => "saint".to_string(),
            w => w.to_string(),
        })
        .collect()
}

/// Word-level Levenshtein distance between two word lists.
pub(crate) fn edit_distance(reference: &[String], hypothesis: &[String]) -> usize {
    let mut prev: Vec<usize> = (0..=hypothesis.len()).collect();
    let mut cur = vec![0; hypothesis.len() + 1];
    for (i, r) in reference.iter().enumerate() {
        cur[0] = i + 1;
        for (j, h) in hypothesis.iter().enumerate() {
            let sub = prev[j] + usize::from(r != h);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[hypothesis.len()]
}

/// WER of `hypothesis` against `reference`, as a fraction (0.12 = 12%).
pub fn wer(reference: &str, hypothesis: &str) -> f64 {
    let (r, h) = (normalize(reference), normalize(hypothesis));
    if r.is_empty() {
        return if h.is_empty() { 0.0 } else { 1.0 };
    }
    edit_distance(&r, &h) as f64 / r.len() as f64
}

/// Corpus WER: total edits over total reference words.
pub fn corpus_wer<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> f64 {
    let (mut edits, mut words) = (0, 0);
    for (r, h) in pairs {
        let (r, h) = (normalize(r), normalize(h));
        edits += edit_distance(&r, &h);
        words += r.len();
    }
    if words == 0 {
        0.0
    } else {
        edits as f64 / words as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_ignores_case_punctuation_and_abbreviations() {
        assert_eq!(
            wer("and mister john dashwood", "And Mr. John Dashwood."),
            0.0
        );
        assert_eq!(wer("ill disposed", "ill-disposed"), 0.0);
    }

    #[test]
    fn counts_substitutions_insertions_and_deletions() {
        assert_eq!(wer("a b c d", "a x c d"), 0.25);
        assert_eq!(wer("a b c d", "a b c d e"), 0.25);
        assert_eq!(wer("a b c d", "a c d"), 0.25);
        assert_eq!(wer("a b", ""), 1.0);
        assert!((corpus_wer([("a b", "a b"), ("c d", "x d")]) - 0.25).abs() < 1e-9);
    }
}
