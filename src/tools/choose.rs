//! Choosing an owner's tool with a local model, in steps a small model can
//! take, each answer held by llama.cpp's grammar so that it always parses:
//! 1. *candidates*, from the words: a tool whose `triggers` the caller's
//!    line names, or one without triggers. None: an ordinary turn, and no
//!    model time is spent;
//! 2. *which tool*, when more than one is a candidate (or one without
//!    triggers): the model answers with a name among them, or none;
//! 3. *its arguments*, as a JSON object that fits the tool's schema;
//! 4. *grounding*: every string argument must be something the caller
//!    said. A model that invents an order number calls no tool.
//!
//! Each step's prompt is the conversation with one system message after it,
//! so the KV cache it leaves is the reply's prompt but for that message: a
//! step costs its own few tokens, not the conversation again.

use serde_json::{json, Value};

use super::http::{HttpTool, ToolSet, ToolUse};
use super::intent::normalise as words;
use crate::engines::{ChatMessage, Role};

/// Longest string argument the grammar lets a model write, when the schema
/// sets none: a runaway string would spend the whole token budget.
const MAX_STRING: u64 = 64;
/// Tokens a step may take.
pub(crate) const MAX_CHOICE_TOKENS: usize = 96;

/// Whole words as grounding compares them (the line as a pattern reads
/// it, cut at anything but letters and digits), padded: "45" is not said
/// in "order 4,512", "4512" is.
fn tokens(text: &str) -> String {
    let plain = plain(text);
    let words: Vec<&str> = plain
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    format!(" {} ", words.join(" "))
}

/// Step 1: the tools the caller's `line` may call for: a trigger at the
/// start of one of its words.
pub(crate) fn candidates<'a>(tools: &'a ToolSet, line: &str) -> Vec<&'a HttpTool> {
    let said = words(line);
    tools
        .tools
        .iter()
        .filter(|t| {
            // At the start of a word: "order" also finds "ordered" and
            // "orders", as Whisper may write them.
            t.triggers.iter().any(|w| {
                let w = words(w);
                !w.trim().is_empty() && said.contains(w.trim_end())
            }) || t.triggers.is_empty()
        })
        .collect()
}

/// Whether the model must say which candidate (or none) the line calls
/// for: a lone candidate that its triggers picked is taken as chosen.
pub(crate) fn needs_naming(candidates: &[&HttpTool]) -> bool {
    candidates.len() > 1 || candidates.iter().any(|t| t.triggers.is_empty())
}

fn describe(t: &HttpTool) -> String {
    let mut s = format!("- {}: {}.", t.name, t.description.trim_end_matches('.'));
    let args: Vec<String> = t.parameters["properties"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(name, p)| match p["description"].as_str() {
            Some(d) => format!("{name} ({d})"),
            None => name.clone(),
        })
        .collect();
    if !args.is_empty() {
        s.push_str(&format!(" Arguments: {}.", args.join(", ")));
    }
    s
}

/// Step 2's system message and the grammar's schema: a name among the
/// candidates, or none.
pub(crate) fn naming(candidates: &[&HttpTool]) -> (String, Value) {
    let mut s = String::from("Tools you can use now:\n");
    for t in candidates {
        s.push_str(&describe(t));
        s.push('\n');
    }
    s.push_str(
        "Which tool does the caller's last message ask for? Answer with its name, or with \
         \"none\" when it asks for none of them.",
    );
    let mut names = vec![Value::from("none")];
    names.extend(candidates.iter().map(|t| Value::from(t.name.as_str())));
    (s, json!({ "enum": names }))
}

/// Step 3's system message and the grammar's schema: the tool's arguments.
pub(crate) fn arguments(tool: &HttpTool) -> (String, Value) {
    let s = format!(
        "Use this tool for the caller's last message:\n{}\nWrite its arguments as a JSON object, \
         with the values in the caller's own words.",
        describe(tool)
    );
    (s, bounded(&tool.parameters))
}

/// A tool's parameters as the grammar takes them: no properties beyond the
/// schema's, and no string without an end.
fn bounded(parameters: &Value) -> Value {
    let mut p = parameters.clone();
    if let Some(o) = p.as_object_mut() {
        o.entry("additionalProperties")
            .or_insert(Value::Bool(false));
        if let Some(props) = o.get_mut("properties").and_then(Value::as_object_mut) {
            for prop in props.values_mut() {
                if let Some(o) = prop.as_object_mut() {
                    if o.get("type").and_then(Value::as_str) == Some("string") {
                        o.entry("maxLength").or_insert(json!(MAX_STRING));
                    }
                }
            }
        }
    }
    p
}

/// Step 2's answer: the chosen name, `None` for none.
pub(crate) fn parse_name(text: &str) -> Result<Option<String>, String> {
    match serde_json::from_str::<Value>(text.trim()) {
        Ok(Value::String(s)) if s == "none" => Ok(None),
        Ok(Value::String(s)) => Ok(Some(s)),
        _ => Err("the tool's name is not a JSON string".to_string()),
    }
}

/// The value of an `enum` parameter the caller's `line` names, when it
/// names exactly one of them ("Are you open on Sunday?").
fn said_choice(parameter: &Value, line: &str) -> Option<String> {
    let said = words(line);
    let mut named = parameter["enum"]
        .as_array()?
        .iter()
        .filter_map(Value::as_str)
        .filter(|v| said.contains(&words(v)));
    let one = named.next()?;
    named.next().is_none().then(|| one.to_string())
}

/// The line as a pattern reads it: lower-case, numbers without thousands
/// separators ("4,512" is 4512), "p.m." as "pm".
fn plain(line: &str) -> String {
    static THOUSANDS: std::sync::LazyLock<regex::Regex> =
        std::sync::LazyLock::new(|| regex::Regex::new(r"(\d),(\d{3})\b").expect("valid"));
    let mut s = line
        .to_lowercase()
        .replace("a.m.", "am")
        .replace("p.m.", "pm");
    loop {
        let next = THOUSANDS.replace_all(&s, "$1$2").into_owned();
        if next == s {
            return s;
        }
        s = next;
    }
}

/// The value of a string parameter with a `pattern` that the caller's
/// `line` holds, when it holds exactly one ("order 4,512" for
/// `^[0-9]{1,12}$`).
fn said_match(parameter: &Value, line: &str) -> Option<String> {
    let pattern = parameter["pattern"].as_str()?;
    let inner = pattern.trim_start_matches('^').trim_end_matches('$');
    let re = regex::Regex::new(&format!(r"\b(?:{inner})\b")).ok()?;
    let line = plain(line);
    let mut found: Vec<&str> = re.find_iter(&line).map(|m| m.as_str()).collect();
    found.dedup();
    match found[..] {
        [one] => Some(one.to_string()),
        _ => None,
    }
}

/// The arguments the caller's line gives without a model: every `enum`
/// parameter's value it names, every patterned string it holds once.
/// `complete` when that is all the required parameters, and the model need
/// not be asked.
pub(crate) fn said_arguments(
    tool: &HttpTool,
    line: &str,
) -> (serde_json::Map<String, Value>, bool) {
    let mut found = serde_json::Map::new();
    for (name, p) in tool.parameters["properties"]
        .as_object()
        .into_iter()
        .flatten()
    {
        if let Some(v) = said_choice(p, line).or_else(|| said_match(p, line)) {
            found.insert(name.clone(), Value::String(v));
        }
    }
    let complete = tool.parameters["required"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .all(|r| found.contains_key(r));
    (found, complete)
}

/// Steps 3 and 4: the arguments the model wrote, their strings trimmed of
/// stray punctuation, if every string and number of them is something the
/// caller said, as whole words, in `conversation` (the call's caller
/// lines).
pub(crate) fn grounded(
    tool: &HttpTool,
    text: &str,
    conversation: &[ChatMessage],
    read_words: bool,
) -> Result<Option<ToolUse>, String> {
    let mut args: Value = serde_json::from_str(text.trim())
        .map_err(|e| format!("the tool's arguments are not JSON ({e})"))?;
    let Some(map) = args.as_object_mut() else {
        return Err("the tool's arguments are not an object".to_string());
    };
    // A choice the caller named outright wins over the model's.
    let line = conversation
        .iter()
        .rfind(|m| m.role == Role::User)
        .map_or("", |m| m.content.as_str());
    if read_words {
        map.extend(said_arguments(tool, line).0);
    }
    let said: String = conversation
        .iter()
        .filter(|m| m.role == Role::User)
        .map(|m| tokens(&m.content))
        .collect();
    for (name, v) in map.iter_mut() {
        let value = match v {
            Value::String(s) => {
                *s = s.trim_matches(|c: char| !c.is_alphanumeric()).to_string();
                s.clone()
            }
            Value::Number(n) => n.to_string(),
            _ => continue,
        };
        let key = tokens(&value);
        if key.trim().is_empty() || !said.contains(&key) {
            tracing::debug!(tool = %tool.name, argument = %name, "argument not said by the caller: no tool");
            return Ok(None);
        }
    }
    Ok(Some(ToolUse {
        name: tool.name.clone(),
        arguments: args,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool(name: &str, triggers: &[&str]) -> HttpTool {
        HttpTool {
            name: name.into(),
            description: "Look up the status of an order.".into(),
            parameters: json!({"type": "object", "properties": {
                "order_number": {"type": "string", "description": "the order's number"}},
                "required": ["order_number"]}),
            triggers: triggers.iter().map(|t| t.to_string()).collect(),
            url: "http://127.0.0.1:1/".into(),
            timeout_secs: 1.0,
            filler: None,
            filler_after_secs: 0.5,
            say: None,
        }
    }

    fn user(text: &str) -> Vec<ChatMessage> {
        vec![
            ChatMessage::new(Role::System, "You are Sam."),
            ChatMessage::new(Role::User, text),
        ]
    }

    #[test]
    fn triggers_pick_candidates_by_whole_words() {
        let set = ToolSet::new(&[
            tool("order_status", &["order", "track my"]),
            tool("hours", &["open"]),
        ])
        .unwrap();
        let names = |line| {
            candidates(&set, line)
                .iter()
                .map(|t| t.name.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(names("Where is my order 4512?"), ["order_status"]);
        assert_eq!(names("Can you TRACK MY parcel?"), ["order_status"]);
        assert!(names("I was told to call you, is it a holiday?").is_empty());
        assert_eq!(names("And where is ordered 9,999?"), ["order_status"]);
        assert_eq!(
            names("Are you open? And my order?"),
            ["order_status", "hours"]
        );
        assert!(!needs_naming(&candidates(&set, "my order")));
        assert!(needs_naming(&candidates(&set, "open order")));
        // A tool without triggers is always put to the model.
        let open = ToolSet::new(&[tool("anything", &[])]).unwrap();
        assert!(needs_naming(&candidates(&open, "Why is the sky blue?")));
    }

    #[test]
    fn naming_lists_the_candidates_and_none() {
        let t = tool("order_status", &[]);
        let (menu, schema) = naming(&[&t]);
        assert!(
            menu.contains("- order_status: Look up the status of an order. Arguments: order_number (the order's number)."),
            "{menu}"
        );
        assert_eq!(schema, json!({"enum": ["none", "order_status"]}));
        assert_eq!(parse_name("\"none\""), Ok(None));
        assert_eq!(
            parse_name(" \"order_status\""),
            Ok(Some("order_status".into()))
        );
        assert!(parse_name("\"order").is_err());
    }

    #[test]
    fn argument_schemas_bound_strings_and_close_objects() {
        let (_, schema) = arguments(&tool("order_status", &[]));
        assert_eq!(schema["additionalProperties"], false);
        assert_eq!(
            schema["properties"]["order_number"]["maxLength"],
            MAX_STRING
        );
    }

    #[test]
    fn choices_the_caller_names_need_no_model() {
        let mut t = tool("opening_hours", &["open"]);
        t.parameters = json!({"type": "object", "required": ["day"], "properties": {
            "day": {"type": "string", "enum": ["monday", "sunday", "today"]},
            "note": {"type": "string"}}});
        let (args, complete) = said_arguments(&t, "Are you open on Sunday?");
        assert_eq!(Value::Object(args), json!({"day": "sunday"}));
        assert!(complete);
        // Two days named, or none: the model decides.
        assert!(!said_arguments(&t, "Monday or Sunday?").1);
        assert!(!said_arguments(&t, "When do you open?").1);
        // And is overruled when it guessed another.
        let said = user("Are you open on Sunday?");
        let call = grounded(&t, r#"{"day": "today"}"#, &said, true)
            .unwrap()
            .unwrap();
        assert_eq!(call.arguments, json!({"day": "sunday"}));
    }

    #[test]
    fn patterned_values_are_read_from_the_line() {
        let t = tool("order_status", &["order"]);
        let mut t2 = t.clone();
        t2.parameters["properties"]["order_number"]["pattern"] = json!("^[0-9]{1,12}$");
        let args = |line| Value::Object(said_arguments(&t2, line).0);
        assert_eq!(
            args("Where's my order 4,512?"),
            json!({"order_number": "4512"})
        );
        assert_eq!(
            args("Order number 1,203,004 please"),
            json!({"order_number": "1203004"})
        );
        // Two numbers, or none: the model decides.
        assert_eq!(args("Is it 12 or 13?"), json!({}));
        assert_eq!(args("My order?"), json!({}));
        // Without a pattern nothing is read.
        assert_eq!(Value::Object(said_arguments(&t, "order 4512").0), json!({}));
        let mut at = t.clone();
        at.parameters["properties"]["order_number"]["pattern"] =
            json!("^[0-9]{1,2}(:[0-9]{2})? (am|pm)$");
        assert_eq!(
            Value::Object(said_arguments(&at, "Friday at 3 p.m.?").0),
            json!({"order_number": "3 pm"})
        );
    }

    #[test]
    fn only_arguments_the_caller_said_make_a_call() {
        let t = tool("order_status", &[]);
        let said = user("Where is my order 4,512?");
        let call = grounded(&t, r#"{"order_number": ", 4512."}"#, &said, true)
            .unwrap()
            .unwrap();
        assert_eq!(call.arguments, json!({"order_number": "4512"}));
        // Invented, or a part of what was said: no call.
        for invented in [
            r#"{"order_number": "12345"}"#,
            r#"{"order_number": "45"}"#,
            r#"{"order_number": 12}"#,
        ] {
            assert_eq!(grounded(&t, invented, &said, true), Ok(None), "{invented}");
        }
        // The model alone: the words do not overrule it.
        let mut days = tool("opening_hours", &[]);
        days.parameters = json!({"type": "object", "properties": {"day": {"type": "string", "enum": ["sunday", "today"]}}});
        let sunday = user("Open on Sunday? Or today?");
        let call = grounded(&days, r#"{"day": "today"}"#, &sunday, false)
            .unwrap()
            .unwrap();
        assert_eq!(call.arguments, json!({"day": "today"}));
        assert_eq!(
            grounded(&t, r#"{"order_number": ""}"#, &said, true),
            Ok(None)
        );
        // Said in an earlier line of the call.
        let mut later = said.clone();
        later.push(ChatMessage::new(Role::User, "It's the lamp."));
        assert!(grounded(&t, r#"{"order_number": "4512"}"#, &later, true)
            .unwrap()
            .is_some());
        assert!(grounded(&t, "[1]", &said, true).is_err());
    }
}
