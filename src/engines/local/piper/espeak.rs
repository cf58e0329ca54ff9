//! Phonemisation with the system's espeak-ng library (Debian's
//! `libespeak-ng1`), the phonemiser Piper voices were trained with.
//!
//! espeak-ng keeps global state and is not thread-safe, so every call holds
//! one process-wide lock. Debian's 1.51 lacks
//! `espeak_TextToPhonemesWithTerminator`; `espeak_TextToPhonemes` returns
//! one clause per call and advances the text pointer, so the punctuation that
//! ended the clause is read back from the text it skipped. Keeping that
//! punctuation is what gives Piper its pauses (piper-rs drops it, and clauses
//! run together).

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::Path;
use std::sync::Mutex;

use crate::error::{Error, Result};

#[link(name = "espeak-ng")]
extern "C" {
    fn espeak_Initialize(
        output: c_int,
        buflength: c_int,
        path: *const c_char,
        options: c_int,
    ) -> c_int;
    fn espeak_SetVoiceByName(name: *const c_char) -> c_int;
    fn espeak_TextToPhonemes(
        textptr: *mut *const c_void,
        textmode: c_int,
        phonememode: c_int,
    ) -> *const c_char;
}

const AUDIO_OUTPUT_SYNCHRONOUS: c_int = 2;
const CHARS_UTF8: c_int = 1;
const PHONEMES_IPA: c_int = 0x02;

/// The voice currently selected; `None` until initialised.
static ESPEAK: Mutex<Option<String>> = Mutex::new(None);

/// One clause of phonemes and the punctuation that ended it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Clause {
    pub(crate) phonemes: String,
    pub(crate) punctuation: Option<char>,
}

impl Clause {
    pub(crate) fn ends_sentence(&self) -> bool {
        matches!(self.punctuation, Some('.' | '?' | '!'))
    }
}

/// Phonemises `text` with `voice` (e.g. "en-us"), clause by clause.
pub(crate) fn phonemize(text: &str, voice: &str, data_dir: Option<&Path>) -> Result<Vec<Clause>> {
    let mut guard = ESPEAK.lock().unwrap_or_else(|p| p.into_inner());
    if guard.is_none() {
        let path = data_dir
            .map(|p| CString::new(p.to_string_lossy().as_bytes()).expect("path without NUL"));
        // SAFETY: called under the lock; the path outlives the call.
        let rate = unsafe {
            espeak_Initialize(
                AUDIO_OUTPUT_SYNCHRONOUS,
                0,
                path.as_ref().map_or(std::ptr::null(), |p| p.as_ptr()),
                0,
            )
        };
        if rate <= 0 {
            return Err(Error::Missing {
                what: "espeak-ng data".into(),
                path: data_dir.map_or_else(
                    || "/usr/lib/x86_64-linux-gnu/espeak-ng-data".into(),
                    |p| p.to_path_buf(),
                ),
                fix: "apt-get install espeak-ng-data (scripts/setup.sh installs it)".into(),
            });
        }
    }
    if guard.as_deref() != Some(voice) {
        let v = CString::new(voice)
            .map_err(|_| Error::Config(format!("bad espeak voice {voice:?}")))?;
        // SAFETY: under the lock.
        if unsafe { espeak_SetVoiceByName(v.as_ptr()) } != 0 {
            return Err(Error::Config(format!("espeak-ng has no voice {voice:?}")));
        }
        *guard = Some(voice.to_string());
    }

    let c_text = CString::new(text.replace('\0', " ")).expect("NULs replaced");
    let base = c_text.as_ptr() as usize;
    let bytes = c_text.as_bytes();
    let mut ptr = c_text.as_ptr() as *const c_void;
    let mut clauses = Vec::new();
    while !ptr.is_null() {
        let start = ptr as usize - base;
        // SAFETY: under the lock; `ptr` points into `c_text`, which outlives
        // the loop; espeak returns a pointer to its own static buffer, copied
        // before the next call.
        let out = unsafe { espeak_TextToPhonemes(&mut ptr, CHARS_UTF8, PHONEMES_IPA) };
        let phonemes = if out.is_null() {
            String::new()
        } else {
            unsafe { CStr::from_ptr(out) }
                .to_string_lossy()
                .into_owned()
        };
        let end = if ptr.is_null() {
            bytes.len()
        } else {
            (ptr as usize - base).min(bytes.len())
        };
        let consumed = String::from_utf8_lossy(&bytes[start.min(end)..end]);
        // espeak leaves the pointer one character into the next clause.
        let mut consumed = consumed.chars();
        if !ptr.is_null() {
            consumed.next_back();
        }
        let punctuation = consumed
            .as_str()
            .trim_end()
            .chars()
            .next_back()
            .filter(|c| matches!(c, '.' | ',' | '?' | '!' | ':' | ';'));
        let phonemes = strip_language_switches(&phonemes);
        if !phonemes.trim().is_empty() || punctuation.is_some() {
            clauses.push(Clause {
                phonemes: phonemes.trim().to_string(),
                punctuation,
            });
        }
        if end >= bytes.len() {
            break;
        }
    }
    Ok(clauses)
}

/// espeak marks language switches as "(en)" / "(fr)"; Piper never saw them.
fn strip_language_switches(s: &str) -> String {
    static RE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    RE.get_or_init(|| regex::Regex::new(r"\([^)]+\)").expect("static regex"))
        .replace_all(s, "")
        .into_owned()
}

/// Groups clauses into sentences, each a phoneme string with its
/// punctuation, the way Piper's trainer built its inputs.
pub(crate) fn sentences(clauses: &[Clause]) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for c in clauses {
        current.push_str(&c.phonemes);
        if let Some(p) = c.punctuation {
            current.push(p);
            if matches!(p, ',' | ':' | ';') {
                current.push(' ');
            }
        } else {
            current.push(' ');
        }
        if c.ends_sentence() {
            out.push(std::mem::take(&mut current).trim().to_string());
        }
    }
    if !current.trim().is_empty() {
        out.push(current.trim().to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clauses_keep_their_punctuation_and_sentences_split() {
        let c = phonemize(
            "Hello there, my friend. This is a test! Is it working?",
            "en-us",
            None,
        )
        .unwrap();
        let punct: Vec<_> = c.iter().map(|c| c.punctuation).collect();
        assert_eq!(punct, [Some(','), Some('.'), Some('!'), Some('?')], "{c:?}");
        let s = sentences(&c);
        assert_eq!(s.len(), 3, "{s:?}");
        assert!(s[0].contains(", ") && s[0].ends_with('.'), "{s:?}");
    }
}
