//! A reply as it should sound on a phone call. The model writes for the
//! eye ("$49.95", "8:00 pm", "+1 415 555 0123", "Dr. Smith"); Piper's
//! phonemiser (espeak-ng) reads plain numbers well but not these: it reads
//! "2,198" as two numbers, a phone number as one huge one, "pm" as a word.
//! What goes to the TTS is rewritten here into the words a person would
//! say; the history, the trace and the table keep the text as generated.
//!
//! Rules are ordered: the most specific shapes (phone numbers, money,
//! times) go first, so that a later, looser rule (a number with commas)
//! never sees their digits.

use std::borrow::Cow;
use std::sync::LazyLock;

use num2words::Num2Words;
use regex::{Captures, Regex};

/// `n` as words ("forty-two"); digits stay digits if the crate refuses.
fn cardinal(n: u64) -> String {
    Num2Words::new(n as i64)
        .to_words()
        .unwrap_or_else(|_| n.to_string())
}

fn ordinal(n: u64) -> String {
    Num2Words::new(n as i64)
        .ordinal()
        .to_words()
        .unwrap_or_else(|_| n.to_string())
}

/// Digits one by one, as phone numbers and codes are read ("zero one two").
fn digit_by_digit(digits: &str) -> String {
    const NAMES: [&str; 10] = [
        "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
    ];
    digits
        .bytes()
        .filter(u8::is_ascii_digit)
        .map(|d| NAMES[(d - b'0') as usize])
        .collect::<Vec<_>>()
        .join(" ")
}

/// "2,198" or "2198" as a whole number.
fn whole(digits: &str) -> Option<u64> {
    digits.replace(',', "").parse().ok()
}

/// "3.5" → "three point five"; "2,198" → "two thousand one hundred ninety-eight".
fn number(text: &str) -> String {
    match text.split_once('.') {
        Some((int, frac)) => match whole(int) {
            Some(n) => format!("{} point {}", cardinal(n), digit_by_digit(frac)),
            None => text.to_string(),
        },
        None => whole(text).map_or_else(|| text.to_string(), cardinal),
    }
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{} {}", cardinal(n), if n == 1 { one } else { many })
}

type Rule = (Regex, fn(&Captures) -> String);

fn rule(pattern: &str, f: fn(&Captures) -> String) -> Rule {
    (Regex::new(pattern).expect("a valid pattern"), f)
}

static RULES: LazyLock<Vec<Rule>> = LazyLock::new(|| {
    vec![
        // Phone numbers, in groups: "+1 415 555 0123", "(415) 555-0123",
        // "415-555-0123". Each group is read digit by digit, a pause
        // between groups.
        rule(
            r"(\+\d{1,3}[ .-]?)?\(?\b\d{3}\)?[ .-]\d{3}[ .-]\d{4}\b",
            |c| {
                let text = &c[0];
                let groups: Vec<String> = text
                    .split(|ch: char| !ch.is_ascii_digit())
                    .filter(|g| !g.is_empty())
                    .map(digit_by_digit)
                    .collect();
                let plus = if text.starts_with('+') { "plus " } else { "" };
                format!("{plus}{}", groups.join(", "))
            },
        ),
        // Money: "$49.95", "$1", "$2,500", "€3.50", "£10". With a scale
        // word the currency goes after it: "$2 million" → "two million dollars".
        rule(
            r"([$€£])(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d{2}))?(?:\s+(thousand|million|billion|trillion)\b)?",
            |c| {
                let (one, many, cent, cents) = match &c[1] {
                    "€" => ("euro", "euros", "cent", "cents"),
                    "£" => ("pound", "pounds", "penny", "pence"),
                    _ => ("dollar", "dollars", "cent", "cents"),
                };
                let Some(units) = whole(&c[2]) else {
                    return c[0].to_string();
                };
                if let Some(scale) = c.get(4) {
                    let amount = match c.get(3) {
                        Some(f) => {
                            format!("{} point {}", cardinal(units), digit_by_digit(f.as_str()))
                        }
                        None => cardinal(units),
                    };
                    return format!("{amount} {} {many}", scale.as_str());
                }
                let cents_n = c
                    .get(3)
                    .and_then(|f| f.as_str().parse::<u64>().ok())
                    .unwrap_or(0);
                match (units, cents_n) {
                    (0, n) if n > 0 => plural(n, cent, cents),
                    (u, 0) => plural(u, one, many),
                    (u, n) => format!("{} and {}", plural(u, one, many), plural(n, cent, cents)),
                }
            },
        ),
        // Times: "8:00 pm", "8:30 a.m.", "14:05".
        rule(r"(?i)\b(\d{1,2}):(\d{2})(?:\s*([ap])\.?\s?m\b\.?)?", |c| {
            let (Ok(h), Ok(m)) = (c[1].parse::<u64>(), c[2].parse::<u64>()) else {
                return c[0].to_string();
            };
            if h > 24 || m > 59 {
                return c[0].to_string();
            }
            let minutes = match m {
                0 if c.get(3).is_some() => String::new(),
                0 => " o'clock".to_string(),
                1..=9 => format!(" oh {}", cardinal(m)),
                _ => format!(" {}", cardinal(m)),
            };
            let half = c
                .get(3)
                .map(|x| format!(" {} m", x.as_str().to_lowercase()))
                .unwrap_or_default();
            format!("{}{minutes}{half}", cardinal(h))
        }),
        // An hour alone with its half of the day: "8 pm", "11 a.m.".
        rule(r"(?i)\b(\d{1,2})\s*([ap])\.?\s?m\b\.?", |c| {
            match c[1].parse::<u64>() {
                Ok(h) if h <= 12 => format!("{} {} m", cardinal(h), c[2].to_lowercase()),
                _ => c[0].to_string(),
            }
        }),
        // Percentages: "3.5%", "50 %".
        rule(r"\b(\d+(?:,\d{3})*(?:\.\d+)?)\s?%", |c| {
            format!("{} percent", number(&c[1]))
        }),
        // Ordinals: "1st", "22nd", "103rd", "4th".
        rule(r"\b(\d+)(?:st|nd|rd|th)\b", |c| {
            c[1].parse().map_or_else(|_| c[0].to_string(), ordinal)
        }),
        // Numbers with thousands separators, and decimals: "2,198", "3.14".
        rule(r"\b\d{1,3}(?:,\d{3})+(?:\.\d+)?\b|\b\d+\.\d+\b", |c| {
            number(&c[0])
        }),
        // Units after a number.
        rule(
            r"\b(\d+)\s?(km/h|mph|km|kg|cm|mm|lbs?|oz|ft|°F|°C)(?:\b|$)",
            |c| {
                let n: u64 = c[1].parse().unwrap_or(0);
                let unit = match &c[2] {
                    "km/h" => "kilometers per hour",
                    "mph" => "miles per hour",
                    "km" => {
                        if n == 1 {
                            "kilometer"
                        } else {
                            "kilometers"
                        }
                    }
                    "kg" => {
                        if n == 1 {
                            "kilogram"
                        } else {
                            "kilograms"
                        }
                    }
                    "cm" => {
                        if n == 1 {
                            "centimeter"
                        } else {
                            "centimeters"
                        }
                    }
                    "mm" => {
                        if n == 1 {
                            "millimeter"
                        } else {
                            "millimeters"
                        }
                    }
                    "lb" | "lbs" => {
                        if n == 1 {
                            "pound"
                        } else {
                            "pounds"
                        }
                    }
                    "oz" => {
                        if n == 1 {
                            "ounce"
                        } else {
                            "ounces"
                        }
                    }
                    "ft" => {
                        if n == 1 {
                            "foot"
                        } else {
                            "feet"
                        }
                    }
                    "°F" => "degrees Fahrenheit",
                    _ => "degrees Celsius",
                };
                format!("{} {unit}", cardinal(n))
            },
        ),
        // Titles and abbreviations a phone voice must not spell out.
        rule(r"\b(Dr|Mr|Mrs|Ms|St|Prof)\.\s+([A-Z])", |c| {
            let title = match &c[1] {
                "Dr" => "Doctor",
                "Mr" => "Mister",
                "Mrs" => "Missus",
                "Ms" => "Miz",
                "St" => "Saint",
                _ => "Professor",
            };
            format!("{title} {}", &c[2])
        }),
        rule(r"\b(e\.g\.|i\.e\.|etc\.|vs\.|approx\.)", |c| {
            match &c[1] {
                "e.g." => "for example",
                "i.e." => "that is",
                "etc." => "et cetera",
                "vs." => "versus",
                _ => "approximately",
            }
            .to_string()
        }),
    ]
});

/// `text` with what a phone voice would misread written out as words.
pub fn spoken(text: &str) -> Cow<'_, str> {
    let mut out = Cow::Borrowed(text);
    for (re, f) in RULES.iter() {
        if re.is_match(&out) {
            out = Cow::Owned(re.replace_all(&out, |c: &Captures| f(c)).into_owned());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::spoken;

    #[test]
    fn the_cases_a_phone_call_meets() {
        for (written, said) in [
            ("$49.95", "forty-nine dollars and ninety-five cents"),
            ("It costs $1.", "It costs one dollar."),
            ("$0.50", "fifty cents"),
            ("$2 million", "two million dollars"),
            ("€3.50", "three euros and fifty cents"),
            ("8:00 pm", "eight p m"),
            ("at 8:30 a.m. sharp", "at eight thirty a m sharp"),
            ("14:05", "fourteen oh five"),
            ("from 9 AM to 5 p.m.", "from nine a m to five p m"),
            (
                "+1 415 555 0123",
                "plus one, four one five, five five five, zero one two three",
            ),
            (
                "(415) 555-0123",
                "four one five, five five five, zero one two three",
            ),
            ("3.5%", "three point five percent"),
            (
                "about 2,198 miles",
                "about two thousand one hundred and ninety-eight miles",
            ),
            ("pi is 3.14", "pi is three point one four"),
            ("Dr. Smith", "Doctor Smith"),
            ("1st", "first"),
            (
                "the 22nd and 103rd",
                "the twenty-second and one hundred third",
            ),
            ("5 km", "five kilometers"),
            ("72°F", "seventy-two degrees Fahrenheit"),
            ("fruit, e.g. apples", "fruit, for example apples"),
        ] {
            assert_eq!(spoken(written), said, "{written}");
        }
    }

    #[test]
    fn plain_text_and_plain_numbers_pass_untouched() {
        for text in [
            "Birds fly by flapping their wings.",
            "I have 3 cats.",
            "In 1969.",
        ] {
            assert!(
                matches!(spoken(text), std::borrow::Cow::Borrowed(_)),
                "{text}"
            );
        }
    }
}
