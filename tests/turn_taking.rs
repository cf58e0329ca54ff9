//! Turn-taking on the real models over the real websocket: a pause after a
//! greeting is not the end of the turn, a backchannel over the bot does not
//! stop it, and "wait, stop" does.

mod common;

use callbox::audio::Audio;
use callbox::engines::Role;
use callbox::events::TurnKind;
use callbox::sim::{self, SimTurn};
use common::server::*;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_after_a_greeting_gets_one_answer_to_the_whole_line() {
    let (state, addr) = start(|c| c.llm.max_tokens = 30).await;
    let mut line = speech("Hi Miss Harper!");
    line.append(&Audio::silence(0.6, line.rate));
    line.append(&speech("Why is the sky blue?"));
    let opts = signed(format!("ws://{addr}/ws"), vec![SimTurn::new(line, None)]);
    let sid = opts.call_sid.clone();
    let r = sim::run(opts).await.unwrap();
    assert!(r.turns[0].latency_ms.is_some(), "no reply");
    assert_eq!(
        r.turns[0].audio_while_speaking, 0,
        "the bot spoke in the caller's pause"
    );
    let s = summary(&state, &sid).await;
    let answers: Vec<_> = s
        .turns
        .iter()
        .filter(|t| t.kind == TurnKind::Turn)
        .collect();
    assert_eq!(answers.len(), 1, "{:#?}", s.turns);
    let asked = answers[0].user_text.to_lowercase();
    assert!(
        asked.contains("harper") && asked.contains("sky"),
        "the answer was to part of the line: {asked:?}"
    );
    assert!(s.interruptions.is_empty(), "{:#?}", s.interruptions);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backchannel_over_the_bot_does_not_stop_it() {
    let (state, addr) = start(|c| {
        c.llm.max_tokens = 60;
        c.call.idle_secs = 0.0; // the caller lingers in silence below
    })
    .await;
    let yeah = SimTurn::new(speech("Okay, yeah."), Some("Okay, yeah.".into())).backchannel(1500);
    let mut opts = signed(
        format!("ws://{addr}/ws"),
        vec![
            turn_of("Can you tell me a long story about the ocean?"),
            yeah,
        ],
    );
    // Hear the reply out (a story of 60 tokens may pause between its
    // sentences longer than the caller's idea of a finished reply).
    opts.linger_secs = 15.0;
    let sid = opts.call_sid.clone();
    let r = sim::run(opts).await.unwrap();
    assert!(r.turns[0].latency_ms.is_some(), "no reply");
    let s = summary(&state, &sid).await;
    assert!(s.backchannels >= 1, "the backchannel was not heard: {s:#?}");
    assert!(s.interruptions.is_empty(), "{:#?}", s.interruptions);
    let reply = s.turns.iter().find(|t| t.kind == TurnKind::Turn).unwrap();
    assert!(!reply.interrupted, "{reply:#?}");
    // Played to its end: every piece (a last sentence cut by the token
    // limit is never spoken), none of them in part.
    // (The pieces are joined by spaces; the generated text may break lines.)
    let spaced = |t: &str| t.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        !reply.heard_text.ends_with('…')
            && spaced(&reply.bot_text).starts_with(&spaced(&reply.heard_text)),
        "{reply:#?}"
    );
    assert!(
        r.turns[0].resumed,
        "the caller heard no more after the pause"
    );
    // "Okay, yeah." is no turn of the conversation.
    let users: Vec<_> = s.history.iter().filter(|m| m.role == Role::User).collect();
    assert_eq!(users.len(), 1, "{:#?}", s.history);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_stop_over_the_bot_stops_it() {
    let (state, addr) = start(|c| c.llm.max_tokens = 60).await;
    let mut stop = turn_of("Wait, stop.");
    stop.barge_in_after_ms = Some(1500);
    let opts = signed(
        format!("ws://{addr}/ws"),
        vec![
            turn_of("Can you tell me a long story about the ocean?"),
            stop,
        ],
    );
    let sid = opts.call_sid.clone();
    let r = sim::run(opts).await.unwrap();
    assert!(r.turns[0].cleared, "no clear reached the caller");
    assert!(!r.turns[0].resumed, "the story went on after the clear");
    let s = summary(&state, &sid).await;
    assert_eq!(s.interruptions.len(), 1, "{:#?}", s.interruptions);
    assert!(
        s.interruptions[0].onset_to_clear_ms <= 300.0,
        "clear {} ms after onset",
        s.interruptions[0].onset_to_clear_ms
    );
    assert_eq!(s.backchannels, 0);
    let story = s.turns.iter().find(|t| t.interrupted).unwrap();
    assert!(story.heard_text.len() < story.bot_text.len(), "{story:#?}");
}
