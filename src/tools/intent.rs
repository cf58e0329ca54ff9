//! Which built-in tool a caller's line asks for, read from its words: a
//! closed set of intents, decided in microseconds, before the LLM writes a
//! word. The phrases are English, as the default persona and Whisper model
//! are. A line that asks for something more ("Bye — oh wait, what time is
//! it?") is a question, not a farewell.

/// What the caller's line asks the bot to do, beyond answering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Intent {
    /// Nothing: an ordinary turn.
    None,
    /// The caller is done: "Thanks, that's all, goodbye".
    EndCall,
    /// The caller wants a person: "Can I speak to a human?"
    Transfer,
}

/// Farewells that end a call wherever they stand in its last sentence.
const FAREWELLS: [&str; 6] = [
    "goodbye",
    "good bye",
    "bye",
    "bye bye",
    "talk to you later",
    "have a good day",
];

/// Phrases that end a call only when nothing but closing words follows
/// them ("That's all, thanks" — not "That's all wrong", "I have to go to
/// the bank").
const CLOSINGS: [&str; 8] = [
    "that's all",
    "that is all",
    "that's everything",
    "that's it for now",
    "hang up",
    "i have to go",
    "i've got to go",
    "gotta go",
];

/// Words that may follow a closing phrase.
const CLOSING_WORDS: [&str; 16] = [
    "now", "then", "thanks", "thank", "you", "so", "much", "for", "today", "i", "needed", "wanted",
    "bye", "goodbye", "okay", "please",
];

/// Who the caller may ask for.
const PEOPLE: [&str; 14] = [
    "a person",
    "a real person",
    "a human",
    "a real human",
    "a human being",
    "someone",
    "somebody",
    "an agent",
    "a live agent",
    "a representative",
    "an operator",
    "the operator",
    "a manager",
    "customer service",
];

/// How they ask.
const ASKS: [&str; 9] = [
    "speak to",
    "speak with",
    "talk to",
    "talk with",
    "transfer me to",
    "put me through to",
    "connect me to",
    "connect me with",
    "get me",
];

/// Said straight out, without an "ask" before it.
const TRANSFER_ALONE: [&str; 3] = ["transfer me", "representative please", "operator please"];

/// A negation before the request turns it around ("I don't want to talk to
/// a person").
const NEGATIONS: [&str; 6] = ["don't", "do not", "not", "never", "no need to", "without"];

/// The caller's words as the word error rate counts them (lower-case, no
/// punctuation but apostrophes), padded with spaces so that phrases match
/// whole words. The owner's tools' triggers are matched the same way.
pub(crate) fn normalise(text: &str) -> String {
    format!(" {} ", crate::text::wer::normalize(text).join(" "))
}

fn has(line: &str, phrase: &str) -> Option<usize> {
    line.find(&format!(" {phrase} "))
}

/// Whether `sentence` (normalised) holds `phrase` with no negation before
/// it in the same sentence.
fn says(sentence: &str, phrase: &str) -> Option<usize> {
    let at = has(sentence, phrase)?;
    let before = &sentence[..at + 1];
    (!NEGATIONS.iter().any(|n| has(before, n).is_some())).then_some(at)
}

/// The intent of a finished caller turn.
pub(crate) fn intent(text: &str) -> Intent {
    let sentences: Vec<String> = text
        .split(['.', '!', '?'])
        .map(normalise)
        .filter(|s| !s.trim().is_empty())
        .collect();
    let asks_for_person = sentences.iter().any(|s| {
        ASKS.iter().any(|ask| {
            PEOPLE
                .iter()
                .any(|who| says(s, &format!("{ask} {who}")).is_some())
        }) || TRANSFER_ALONE.iter().any(|p| says(s, p).is_some())
    });
    if asks_for_person {
        return Intent::Transfer;
    }
    // A question anywhere, or a sentence after the farewell ("That's all
    // very interesting. Tell me more."), keeps the call going.
    if text.contains('?') {
        return Intent::None;
    }
    let Some(last) = sentences.last() else {
        return Intent::None;
    };
    let farewell = FAREWELLS.iter().any(|f| says(last, f).is_some());
    let closing = CLOSINGS.iter().any(|c| {
        says(last, c).is_some_and(|at| {
            last[at + c.len() + 1..]
                .split_whitespace()
                .all(|w| CLOSING_WORDS.contains(&w))
        })
    });
    if farewell || closing {
        Intent::EndCall
    } else {
        Intent::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The scripted set: what callers say, and what the bot should do.
    /// Lines are written the way Whisper punctuates them.
    pub(crate) const LINES: [(&str, Intent); 46] = [
        ("Thanks, that's all, goodbye.", Intent::EndCall),
        ("Goodbye!", Intent::EndCall),
        ("Bye.", Intent::EndCall),
        ("Okay, bye bye.", Intent::EndCall),
        ("That's all I needed, thank you.", Intent::EndCall),
        ("Thank you so much, have a good day.", Intent::EndCall),
        ("I have to go now, bye.", Intent::EndCall),
        ("That is all, thanks.", Intent::EndCall),
        ("Great, talk to you later.", Intent::EndCall),
        ("You can hang up now.", Intent::EndCall),
        ("Alright, that's everything. Goodbye.", Intent::EndCall),
        ("Thank you, Miss Harper, goodbye!", Intent::EndCall),
        ("Can I speak to a person?", Intent::Transfer),
        ("I'd like to talk to a human, please.", Intent::Transfer),
        ("Transfer me to an agent.", Intent::Transfer),
        ("Can you put me through to someone?", Intent::Transfer),
        ("Let me speak with a representative.", Intent::Transfer),
        ("I want to talk to a real person.", Intent::Transfer),
        ("Operator, please.", Intent::Transfer),
        (
            "Could you connect me to customer service?",
            Intent::Transfer,
        ),
        ("Get me a manager.", Intent::Transfer),
        (
            "Is there somebody I can talk to? Can I talk to somebody?",
            Intent::Transfer,
        ),
        ("Why is the sky blue?", Intent::None),
        ("What time do you open tomorrow?", Intent::None),
        ("Thank you.", Intent::None),
        ("Hi Miss Harper!", Intent::None),
        ("How do you say goodbye in French?", Intent::None),
        ("Bye the way, what is thunder?", Intent::None),
        (
            "I don't want to talk to a person, just tell me.",
            Intent::None,
        ),
        ("Is that all there is to it?", Intent::None),
        ("Before I go, what is the biggest animal?", Intent::None),
        ("My brother is a human being too.", Intent::None),
        ("Tell me about someone famous.", Intent::None),
        ("What does an operator do?", Intent::None),
        ("Okay.", Intent::None),
        ("Yes, that's right.", Intent::None),
        ("That's all very interesting. Tell me more.", Intent::None),
        ("Goodbye is a hard word to say?", Intent::None),
        ("Talk to you later?", Intent::None),
        ("No, thank you.", Intent::None),
        ("Please don't hang up.", Intent::None),
        ("I have to go to the bank first.", Intent::None),
        ("That's all wrong.", Intent::None),
        ("That put me through a lot.", Intent::None),
        ("I'm not sure. Can I talk to a person?", Intent::Transfer),
        ("Goodbye, Miss Harper!", Intent::EndCall),
    ];

    #[test]
    fn the_scripted_lines_get_the_right_intent() {
        let wrong: Vec<String> = LINES
            .iter()
            .filter(|(line, want)| intent(line) != *want)
            .map(|(line, want)| format!("{line:?}: {:?}, not {want:?}", intent(line)))
            .collect();
        assert!(wrong.is_empty(), "{wrong:#?}");
    }

    #[test]
    fn words_match_whole() {
        // "goodbyes" and "byelaws" are not farewells, "someones" nobody.
        assert_eq!(intent("He said his goodbyes."), Intent::None);
        assert_eq!(intent("The byelaws are strict."), Intent::None);
        assert_eq!(intent("What a weird day, bye."), Intent::EndCall);
    }
}
