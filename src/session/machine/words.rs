//! What the caller's words say about the turn, where Smart Turn's
//! audio-only verdict is weakest. An int8 model scoring one clip misses
//! the plain cues a listener uses: "Hi Miss Harper!" on its own, or a line
//! that trails off in "and", means more is coming; a finished question
//! means the turn is most likely over even when the model doubts it; and
//! "uh-huh" spoken over the bot is a listener keeping it going, not an
//! interruption. The lists are English, as the default persona and Whisper
//! model are.

/// What the words of a possibly finished turn suggest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cue {
    /// More is coming: a greeting or vocative on its own, or a line that
    /// trails off (a conjunction, a filler, a comma).
    GoingOn,
    /// A sentence with its full stop, question mark or exclamation mark.
    Finished,
    /// Nothing either way (no punctuation, or no words).
    Unclear,
}

/// Words that open a greeting a caller usually follows with the point.
const GREETINGS: [&str; 7] = ["hi", "hello", "hey", "hiya", "howdy", "good", "excuse"];
/// After "good" or "excuse", the word that makes it a greeting.
const GREETING_SECOND: [&str; 6] = ["morning", "afternoon", "evening", "day", "me", "night"];
/// Longest greeting with a name ("hi there miss harper"): longer lines
/// carry more than a greeting.
const GREETING_MAX_WORDS: usize = 4;
/// Words that make a short line naming the bot a whole turn: an answer or
/// a goodbye ("Yes, Miss Harper.", "Thanks, Sam!").
const ANSWERS: [&str; 11] = [
    "yes", "no", "yeah", "okay", "ok", "sure", "thanks", "thank", "bye", "goodbye", "please",
];
/// Last words after which a sentence cannot be over, whatever the
/// punctuation Whisper put after them.
const TRAILING: [&str; 17] = [
    "and", "but", "or", "because", "cause", "um", "uh", "uhm", "umm", "er", "erm", "the", "a",
    "an", "my", "your", "if",
];
/// Last words that leave a line open when no punctuation closes it ("What
/// are you up to?" is a finished question; "I wanted to ask about" is not).
const OPEN_ENDED: [&str; 12] = [
    "to", "of", "with", "about", "for", "so", "then", "that", "which", "like", "is", "was",
];

/// Words a listener says to keep a speaker going.
/// Hyphenated ones ("uh-huh", "mm-hmm") come as their halves.
const BACKCHANNELS: [&str; 22] = [
    "uh", "huh", "mhm", "mm", "hmm", "mmm", "yeah", "yes", "yep", "yup", "okay", "ok", "right",
    "sure", "alright", "oh", "ah", "wow", "cool", "great", "nice", "see",
];
/// Two-word backchannels' second words ("I see", "got it", "all right").
const BACKCHANNEL_PAIRS: [(&str, &str); 4] = [
    ("i", "see"),
    ("got", "it"),
    ("all", "right"),
    ("oh", "really"),
];
/// More words than this are something said, not a signal.
const BACKCHANNEL_MAX_WORDS: usize = 3;

/// The words of `text` as the word error rate counts them: lower-case,
/// without punctuation; "uh-huh" is "uh huh".
fn words(text: &str) -> Vec<String> {
    crate::text::wer::normalize(text)
}

/// What the transcript of a turn says about whether it is over. `name` is
/// what callers call the bot ("Miss Harper"; may be empty).
pub(crate) fn turn_cue(text: &str, name: &str) -> Cue {
    let text = text.trim();
    let words = words(text);
    let Some(last) = words.last() else {
        return Cue::Unclear;
    };
    if text.ends_with(',')
        || text.ends_with("...")
        || text.ends_with('…')
        || text.ends_with('-')
        || text.ends_with('—')
        || TRAILING.contains(&last.as_str())
    {
        return Cue::GoingOn;
    }
    let question = text.ends_with('?');
    let greeting = GREETINGS.contains(&words[0].as_str())
        && (!matches!(words[0].as_str(), "good" | "excuse")
            || words
                .get(1)
                .is_some_and(|w| GREETING_SECOND.contains(&w.as_str())));
    // "Hello?" asks whether anyone is there; "Hi Miss Harper!" is followed
    // by the reason for the call.
    if greeting && !question && words.len() <= GREETING_MAX_WORDS {
        return Cue::GoingOn;
    }
    // The bot called by its name and little else ("Miss Harper…", or a
    // greeting misheard: "I'm Miss Harper."), unless it answers or thanks.
    let name = self::words(name);
    let named = !name.is_empty()
        && words.windows(name.len()).any(|w| w == name.as_slice())
        && words.len() <= name.len() + 2
        && !words.iter().any(|w| ANSWERS.contains(&w.as_str()));
    if named && !question {
        return Cue::GoingOn;
    }
    if text.ends_with(['.', '?', '!']) {
        return Cue::Finished;
    }
    if OPEN_ENDED.contains(&last.as_str()) {
        return Cue::GoingOn;
    }
    Cue::Unclear
}

/// Whether words spoken over the bot only keep it going ("uh-huh",
/// "yeah", "okay", "right", "mm-hmm", "I see"). No words at all — a cough,
/// a noise Whisper heard nothing in — count as one too: there is nothing
/// to answer.
pub(crate) fn is_backchannel(text: &str) -> bool {
    let words = words(text);
    if words.len() > BACKCHANNEL_MAX_WORDS {
        return false;
    }
    let mut i = 0;
    while i < words.len() {
        let w = words[i].as_str();
        if let Some(next) = words.get(i + 1) {
            if BACKCHANNEL_PAIRS.contains(&(w, next.as_str())) {
                i += 2;
                continue;
            }
        }
        if !BACKCHANNELS.contains(&w) {
            return false;
        }
        i += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAME: &str = "Miss Harper";

    #[test]
    fn a_greeting_on_its_own_is_going_on() {
        for t in [
            "Hi Miss Harper!",
            "Hi, Miss Harper.",
            "Hello there.",
            "Hey",
            "Good morning, Miss Harper!",
            "Excuse me,",
            "I'm Miss Harper.",
            "Miss Harper",
        ] {
            assert_eq!(turn_cue(t, NAME), Cue::GoingOn, "{t}");
        }
    }

    #[test]
    fn a_line_that_trails_off_is_going_on() {
        for t in [
            "I want to know about the moon and",
            "So, um",
            "Why is the sky blue, and",
            "Tell me about the...",
            "My question is about",
            "I was wondering if",
            "Because the",
        ] {
            assert_eq!(turn_cue(t, NAME), Cue::GoingOn, "{t}");
        }
    }

    #[test]
    fn a_finished_sentence_is_finished() {
        for t in [
            "Hi Miss Harper! Why is the sky blue?",
            "Why is the sky blue?",
            "What are you up to?",
            "Hello?",
            "Hi, my name is Sam and I have a question.",
            "Thank you, goodbye!",
            "Good question.",
            "Yes, Miss Harper.",
            "Thank you, Miss Harper!",
            "Miss Harper, what is thunder?",
        ] {
            assert_eq!(turn_cue(t, NAME), Cue::Finished, "{t}");
        }
    }

    #[test]
    fn words_without_a_close_are_unclear() {
        for t in ["", "  ", "why is the sky blue", "What makes a rainbow"] {
            assert_eq!(turn_cue(t, NAME), Cue::Unclear, "{t:?}");
        }
    }

    #[test]
    fn backchannels_are_told_from_interruptions() {
        for t in [
            "Uh-huh.",
            "uh huh",
            "Mm-hmm.",
            "Yeah.",
            "Okay, okay.",
            "Right.",
            "Oh, I see.",
            "Yes, got it.",
            "",
            "...",
        ] {
            assert!(is_backchannel(t), "{t:?} is a backchannel");
        }
        for t in [
            "Wait, stop.",
            "Stop.",
            "No.",
            "Wait.",
            "Sorry, what?",
            "Yeah, but why is it blue?",
            "Thank you.",
            "Okay okay okay okay",
        ] {
            assert!(!is_backchannel(t), "{t:?} interrupts");
        }
    }
}
