//! The bot acts on a call, over the real websocket on the default models,
//! against the local fake of Twilio's REST API: a goodbye ends the call with
//! exactly one hang-up once it has been heard, and a request for a person
//! redirects the live call to the configured number with `<Dial>`.

mod common;

use callbox::audio::Audio;
use callbox::events::{EndedBy, TurnKind};
use callbox::sim;
use common::fake_twilio::{Behaviour, FakeTwilio};
use common::server::*;
use common::*;

const TRANSFER_TO: &str = "+14155550199";

/// A server whose Twilio REST API is `fake`, short replies.
async fn against(
    fake: &FakeTwilio,
    tweak: impl FnOnce(&mut callbox::config::Config),
) -> (
    std::sync::Arc<callbox::server::AppState>,
    std::net::SocketAddr,
) {
    fake.server(|c| {
        c.twilio.record_calls = false;
        c.llm.max_tokens = 30;
        tweak(c);
    })
    .await
}

async fn settle_requests() {
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_goodbye_is_heard_then_the_call_is_hung_up_once() {
    let fake = FakeTwilio::start(AUTH_TOKEN, Behaviour::default()).await;
    let (state, addr) = against(&fake, |_| {}).await;
    let mut opts = signed(
        format!("ws://{addr}/ws"),
        vec![turn_of("Thanks, that's all, goodbye.")],
    );
    // The caller would stay on the line: the bot is the one to end it.
    opts.linger_secs = 15.0;
    let sid = opts.call_sid.clone();
    let r = sim::run(opts).await.unwrap();
    let s = summary(&state, &sid).await;
    assert_eq!(s.ended_by, EndedBy::Bot, "{s:#?}");
    // The last reply: the caller's pause at a comma may have started a
    // goodbye that the rest of the line then cancelled, unheard.
    let bye = s.turns.iter().rfind(|t| t.kind == TurnKind::Turn).unwrap();
    assert_eq!(bye.bot_text, callbox::persona::TEACHER_GOODBYE);
    // Played to its last mark before the hang-up: all of it was heard.
    assert!(!bye.interrupted);
    assert_eq!(bye.heard_text, bye.bot_text);
    let heard = stt()
        .transcribe(&Audio::from_i16(&r.turns[0].bot_audio, 8000))
        .unwrap()
        .text
        .to_lowercase();
    assert!(heard.contains("goodbye"), "the caller heard {heard:?}");
    assert!(s.duration_secs < 14.0, "the caller hung up, not the bot");
    settle_requests().await;
    let hangups = fake.requests_for("hang_up");
    assert_eq!(hangups.len(), 1, "{:#?}", fake.requests());
    assert!(hangups[0].path.ends_with(&format!("Calls/{sid}.json")));
    assert!(fake.requests_for("update_call").is_empty());
    let m = scrape(addr).await;
    let tool = |outcome| {
        sample(
            &m,
            "callbox_tool_calls_total",
            &[("tool", "end_call"), ("outcome", outcome)],
        )
    };
    assert_eq!(tool("ok"), 1.0);
    assert!(tool("started") >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asking_for_a_person_transfers_the_live_call() {
    let fake = FakeTwilio::start(AUTH_TOKEN, Behaviour::default()).await;
    let (state, addr) = against(&fake, |c| {
        c.call.transfer_to = Some(TRANSFER_TO.into());
    })
    .await;
    let mut opts = signed(
        format!("ws://{addr}/ws"),
        vec![turn_of("Can I speak to a person?")],
    );
    opts.linger_secs = 15.0;
    let sid = opts.call_sid.clone();
    sim::run(opts).await.unwrap();
    let s = summary(&state, &sid).await;
    assert_eq!(s.ended_by, EndedBy::Transferred, "{s:#?}");
    assert_eq!(s.transferred_to.as_deref(), Some(TRANSFER_TO));
    let said = s.turns.iter().rfind(|t| t.kind == TurnKind::Turn).unwrap();
    assert_eq!(said.heard_text, callbox::persona::TRANSFER_MESSAGE);
    settle_requests().await;
    let updates = fake.requests_for("update_call");
    assert_eq!(updates.len(), 1, "{:#?}", fake.requests());
    assert!(updates[0].path.ends_with(&format!("Calls/{sid}.json")));
    let twiml = updates[0].field("Twiml").unwrap();
    assert!(
        twiml.contains(&format!("<Dial>{TRANSFER_TO}</Dial>")),
        "{twiml}"
    );
    // Handed on, not hung up.
    assert!(fake.requests_for("hang_up").is_empty());
}
