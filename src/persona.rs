//! The two built-in personas, written for the phone: short sentences, no
//! lists or symbols that a voice cannot say.

/// Inbound default: an elementary school teacher who answers the phone.
pub(crate) const TEACHER_NAME: &str = "Miss Harper";
pub const TEACHER: &str = "You are Miss Harper, a warm and patient elementary school teacher talking with a \
child on the phone. Everything you write is spoken aloud, so answer in one to three short sentences of plain \
words, with no lists, symbols, emojis or formatting. Explain things simply, with small everyday examples, and \
ask a gentle question now and then to keep the child thinking. If the child goes quiet, carry on teaching \
something interesting about the current topic.";

/// The first thing the teacher says when she picks up.
pub const TEACHER_GREETING: &str =
    "Hello, this is Miss Harper. What would you like to learn about today?";

/// The teacher's last words before she hangs up.
pub const TEACHER_GOODBYE: &str = "It was lovely talking with you. Goodbye!";

/// Any persona's, unless it says otherwise.
pub(crate) const GOODBYE: &str = "Thank you for calling. Goodbye!";
pub const TRANSFER_MESSAGE: &str = "Let me put you through to a person now. Please hold.";
pub const TOOL_FILLER: &str = "One moment while I check that.";
pub const TOOL_APOLOGY: &str = "Sorry, I couldn't get that information just now.";
pub(crate) const VOICEMAIL: &str =
    "Hello, this is an automated assistant calling with a message. Please call us back when you can. Goodbye!";

/// Outbound: a friendly assistant placing a call on someone's behalf.
pub(crate) const ASSISTANT_NAME: &str = "Sam";
pub(crate) const ASSISTANT: &str = "You are Sam, a friendly assistant calling someone on behalf of a small business. \
Everything you write is spoken aloud, so use one or two short sentences of plain words, with no lists, \
symbols or formatting. You called them, so be polite, get to the point, listen, and end the call kindly \
when they want to.";

pub const ASSISTANT_GREETING: &str =
    "Hi, this is Sam, an automated assistant. I'm calling to confirm your appointment for tomorrow. Is now a good time?";

/// Per-call values every call has, for `{{…}}` in any persona: the numbers
/// (the caller's and ours, or whom we called and from where) and the call.
pub(crate) const CALL_VARIABLES: [&str; 3] = ["from_number", "to_number", "call_sid"];
/// A dial-out variable's stream parameter: `var.` and its name, apart
/// from the stream's own parameters.
pub(crate) const VARIABLE_PREFIX: &str = "var.";

/// The names of the `{{name}}` placeholders in `text`, in order, each once;
/// an opened `{{` that is not a closed name is the error.
pub(crate) fn placeholders(text: &str) -> Result<Vec<&str>, String> {
    let mut names: Vec<&str> = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("{{") {
        let after = &rest[at + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| format!("`{{{{` without `}}}}` in {text:?}"))?;
        let name = after[..end].trim();
        if !is_variable_name(name) {
            return Err(format!(
                "`{{{{{name}}}}}` in {text:?}: a placeholder is a name of lower-case letters, digits and _"
            ));
        }
        if !names.contains(&name) {
            names.push(name);
        }
        rest = &after[end + 2..];
    }
    Ok(names)
}

/// A per-call variable's name: `[a-z][a-z0-9_]*`, at most 32 characters.
pub(crate) fn is_variable_name(name: &str) -> bool {
    name.len() <= 32
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// `text` with each `{{name}}` replaced by its value; the names `values`
/// lacks are the error (a greeting with a hole in it is worse than none).
pub(crate) fn fill(
    text: &str,
    values: &dyn Fn(&str) -> Option<String>,
) -> Result<String, Vec<String>> {
    let names = placeholders(text).map_err(|e| vec![e])?;
    let missing: Vec<String> = names
        .iter()
        .filter(|n| values(n).is_none())
        .map(|n| n.to_string())
        .collect();
    if !missing.is_empty() {
        return Err(missing);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("{{") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        let end = after.find("}}").expect("checked by placeholders");
        out.push_str(&values(after[..end].trim()).expect("checked above"));
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

impl crate::config::Persona {
    /// Every placeholder of the persona's texts.
    pub(crate) fn placeholders(&self) -> Result<Vec<&str>, String> {
        let mut all: Vec<&str> = Vec::new();
        for text in [
            &self.name,
            &self.system,
            &self.greeting,
            &self.idle_prompt,
            &self.goodbye,
            &self.transfer_message,
            &self.tool_filler,
            &self.tool_apology,
            &self.voicemail,
        ] {
            for n in placeholders(text)? {
                if !all.contains(&n) {
                    all.push(n);
                }
            }
        }
        Ok(all)
    }

    /// The persona with `f` applied to each of its texts.
    pub(crate) fn map(&self, f: &mut dyn FnMut(&str) -> String) -> Self {
        Self {
            name: f(&self.name),
            system: f(&self.system),
            greeting: f(&self.greeting),
            idle_prompt: f(&self.idle_prompt),
            goodbye: f(&self.goodbye),
            transfer_message: f(&self.transfer_message),
            tool_filler: f(&self.tool_filler),
            tool_apology: f(&self.tool_apology),
            voicemail: f(&self.voicemail),
        }
    }

    /// The persona for one call, its placeholders filled from `values`.
    pub(crate) fn filled(
        &self,
        values: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, Vec<String>> {
        let mut missing = Vec::new();
        let mut one = |text: &str| {
            fill(text, values).unwrap_or_else(|m| {
                missing.extend(m);
                text.to_string()
            })
        };
        let p = self.map(&mut one);
        missing.sort();
        missing.dedup();
        if missing.is_empty() {
            Ok(p)
        } else {
            Err(missing)
        }
    }
}

/// The persona of a call: the dial-out's named one, else its direction's,
/// filled with the call's values (its numbers and SID, a dial-out's
/// variables). The placeholders left unfilled are the error.
pub(crate) fn for_call(
    personas: &crate::config::Personas,
    info: &crate::events::CallInfo,
) -> Result<crate::config::Persona, String> {
    let named = info.params.get("persona");
    let persona = match (named, info.direction) {
        (Some(name), crate::events::Direction::Outbound) => personas
            .named
            .get(name)
            .ok_or_else(|| format!("persona {name:?} is not configured"))?,
        (_, crate::events::Direction::Inbound) => &personas.inbound,
        (None, crate::events::Direction::Outbound) => &personas.outbound,
    };
    let value = |name: &str| -> Option<String> {
        match name {
            "call_sid" => Some(info.call_sid.clone()),
            "from_number" | "to_number" => Some(info.params.get(name).cloned().unwrap_or_default()),
            _ => info
                .params
                .get(&format!("{VARIABLE_PREFIX}{name}"))
                .cloned(),
        }
    };
    persona.filled(&value).map_err(|missing| {
        format!(
            "the persona's placeholders {} have no value for this call",
            missing.join(", ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn placeholders_are_found_once_and_bad_ones_refused() {
        assert_eq!(
            placeholders("Hi {{name}}, your {{ thing }} on {{day}} — {{name}}").unwrap(),
            ["name", "thing", "day"]
        );
        assert!(placeholders("plain text, {single} braces")
            .unwrap()
            .is_empty());
        assert!(placeholders("Hi {{name").is_err());
        assert!(placeholders("Hi {{Name}}").is_err());
        assert!(placeholders("Hi {{first name}}").is_err());
    }

    #[test]
    fn filling_replaces_every_placeholder_or_names_the_missing() {
        let vars = HashMap::from([("name".to_string(), "Alice".to_string())]);
        let get = |n: &str| vars.get(n).cloned();
        assert_eq!(
            fill("Hi {{name}}, bye {{ name }}.", &get).unwrap(),
            "Hi Alice, bye Alice."
        );
        assert_eq!(
            fill("Hi {{name}} on {{day}} at {{time}}", &get).unwrap_err(),
            ["day", "time"]
        );
    }
}
