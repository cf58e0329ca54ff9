//! The per-turn LATENCY BREAKDOWN table, in the layout of the API stack's
//! (plus end-of-speech), built from the turns' records.

use crate::events::{TurnKind, TurnRecord};

/// The table of the caller turns the caller heard answered (a reply dropped
/// because the caller went on has no latency to show), with an average row.
pub fn latency_table(turns: &[TurnRecord]) -> String {
    let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0}ms"));
    let mut s = String::from(
        "Turn | Total | STT TTFB | Smart Turn | LLM TTFB | TTS TTFB | LLM Tokens | TTS Chars | End-of-speech\n",
    );
    let rows: Vec<&TurnRecord> = turns
        .iter()
        .filter(|t| t.kind == TurnKind::Turn && t.first_frame_at_ms.is_some())
        .collect();
    // The owner's tools get a column when a turn used one.
    let tools = rows.iter().any(|t| t.tool.is_some());
    if tools {
        s.insert_str(s.len() - 1, " | Tool");
    }
    let tool = |t: &TurnRecord| {
        t.tool.as_ref().map_or(" | -".to_string(), |u| {
            format!(" | {} {:.0}ms {}", u.name, u.ms, u.outcome)
        })
    };
    for t in &rows {
        s.push_str(&format!(
            "{:>4} | {:>5} | {:>8} | {:>10} | {:>8} | {:>8} | {:>10} | {:>9} | {:>13}\n",
            t.index,
            f(t.total_ms),
            f(t.stt_ms),
            f(t.smart_turn_ms),
            f(t.llm_ttfb_ms),
            f(t.tts_ttfb_ms),
            t.completion_tokens,
            t.tts_characters,
            f(t.end_of_speech_ms)
        ));
        if tools {
            s.insert_str(s.len() - 1, &tool(t));
        }
    }
    let avg = |g: fn(&TurnRecord) -> Option<f64>| {
        let v: Vec<f64> = rows.iter().filter_map(|t| g(t)).collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    s.push_str(&format!(
        " Avg | {:>5} | {:>8} | {:>10} | {:>8} | {:>8} | {:>10} | {:>9} | {:>13}\n",
        f(avg(|t| t.total_ms)),
        f(avg(|t| t.stt_ms)),
        f(avg(|t| t.smart_turn_ms)),
        f(avg(|t| t.llm_ttfb_ms)),
        f(avg(|t| t.tts_ttfb_ms)),
        "",
        "",
        f(avg(|t| t.end_of_speech_ms))
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_answered_caller_turns_are_rows() {
        let mut greeting = TurnRecord::new(0, TurnKind::Greeting, String::new(), 0.0);
        greeting.first_frame_at_ms = Some(10.0);
        let mut answered = TurnRecord::new(1, TurnKind::Turn, "hi".into(), 0.0);
        answered.first_frame_at_ms = Some(900.0);
        answered.total_ms = Some(200.0);
        let mut other = TurnRecord::new(3, TurnKind::Turn, "so".into(), 0.0);
        other.first_frame_at_ms = Some(1900.0);
        other.total_ms = Some(400.0);
        let dropped = TurnRecord::new(2, TurnKind::Turn, "and".into(), 0.0);
        let t = latency_table(&[greeting, answered, dropped, other]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4, "{t}");
        assert!(lines[1].starts_with("   1 | 200ms"), "{t}");
        assert!(lines[2].starts_with("   3 | 400ms"), "{t}");
        assert!(lines[3].starts_with(" Avg | 300ms"), "{t}");
    }

    #[test]
    fn a_tool_turn_adds_the_tool_column() {
        let mut plain = TurnRecord::new(1, TurnKind::Turn, "hi".into(), 0.0);
        plain.first_frame_at_ms = Some(900.0);
        assert!(!latency_table(std::slice::from_ref(&plain)).contains("Tool"));
        let mut looked_up = TurnRecord::new(2, TurnKind::Turn, "my order".into(), 0.0);
        looked_up.first_frame_at_ms = Some(1900.0);
        looked_up.tool = Some(crate::events::ToolRecord {
            name: "order_status".into(),
            arguments: serde_json::json!({"order_number": "4512"}),
            outcome: "ok".into(),
            result: None,
            ms: 182.4,
        });
        let t = latency_table(&[plain, looked_up]);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].ends_with("| End-of-speech | Tool"), "{t}");
        assert!(lines[1].ends_with("- | -"), "{t}");
        assert!(lines[2].ends_with("| order_status 182ms ok"), "{t}");
    }
}
