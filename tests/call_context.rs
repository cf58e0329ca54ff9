//! Per-call context: a dial-out's variables and named persona fill the
//! persona's `{{placeholders}}`, checked before Twilio is asked anything,
//! carried in the TwiML URL Twilio signs, and heard in the greeting.

mod common;

use callbox::audio::Audio;
use callbox::config::{Persona, Secret};
use common::fake_twilio::{Behaviour, FakeTwilio};
use common::server::*;
use common::*;

const API_TOKEN: &str = "owner-secret-token-for-the-context-test";

async fn dialout(addr: std::net::SocketAddr, body: serde_json::Value) -> (u16, serde_json::Value) {
    let resp = reqwest::Client::new()
        .post(format!("http://{addr}/dialout"))
        .bearer_auth(API_TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or_default())
}

fn persona(greeting: &str) -> Persona {
    Persona {
        name: "Sam".into(),
        system: "You are Sam, calling {{name}} for a clinic. Be brief.".into(),
        greeting: greeting.into(),
        idle_prompt: "(Check that {{name}} is still there.)".into(),
        goodbye: "Goodbye, {{name}}!".into(),
        transfer_message: "Putting you through.".into(),
        tool_filler: "One moment.".into(),
        tool_apology: "Sorry, that failed.".into(),
        voicemail: "Please call back.".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialout_variables_reach_the_greeting_and_missing_ones_are_refused() {
    // The callee says nothing: the greeting is all there is to hear.
    let fake = FakeTwilio::start(
        AUTH_TOKEN,
        Behaviour {
            callee: Some(vec![]),
            ..Default::default()
        },
    )
    .await;
    let (state, addr) = fake
        .server(|c| {
            c.server.api_token = Some(Secret(API_TOKEN.into()));
            c.personas.outbound = persona("Hello {{name}}, this is Sam from the clinic.");
            c.personas.named.insert(
                "reminder".into(),
                persona("Hi {{name}}, a reminder about your {{thing}} tomorrow."),
            );
        })
        .await;
    let to = |extra: serde_json::Value| {
        let mut body =
            serde_json::json!({"to_number": "+14155550123", "from_number": "+14155550100"});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    };

    // Refused before Twilio hears of it.
    for (extra, words) in [
        (serde_json::json!({}), "needs variables name"),
        (
            serde_json::json!({"persona": "reminder", "variables": {"name": "Maria"}}),
            "needs variables thing",
        ),
        (
            serde_json::json!({"persona": "nope", "variables": {"name": "Maria"}}),
            "not configured",
        ),
        (
            serde_json::json!({"variables": {"Name": "Maria"}}),
            "lower-case",
        ),
        (
            serde_json::json!({"variables": {"name": "A".repeat(201)}}),
            "at most 200",
        ),
        (
            serde_json::json!({"variables": {"name": "Maria", "to_number": "+1"}}),
            "the call's own",
        ),
    ] {
        let (status, body) = dialout(addr, to(extra.clone())).await;
        assert_eq!(status, 400, "{extra} → {body}");
        assert!(
            body["error"].as_str().unwrap().contains(words),
            "{extra} → {body}"
        );
    }
    assert!(fake.requests_for("create_call").is_empty());

    // The variables travel in the URL Twilio fetches, and fill the greeting.
    let (status, body) = dialout(
        addr,
        to(serde_json::json!({"variables": {"name": "Maria"}})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let sid = body["call_sid"].as_str().unwrap().to_string();
    let created = fake.requests_for("create_call");
    assert_eq!(
        created[0].field("Url"),
        Some(format!("https://{addr}/twiml?var.name=Maria").as_str())
    );
    let played = fake.played().await;
    let p = played.into_iter().next().unwrap().expect("the call played");
    let heard = stt()
        .transcribe(&Audio::from_i16(&p.report.greeting_audio, 8000))
        .unwrap()
        .text
        .to_lowercase();
    assert!(heard.contains("maria"), "greeting heard as {heard:?}");
    let s = summary(&state, &sid).await;
    assert_eq!(
        s.turns[0].bot_text,
        "Hello Maria, this is Sam from the clinic."
    );
    assert_eq!(s.info.params["var.name"], "Maria");

    // A named persona, chosen per call.
    let extra = serde_json::json!({"persona": "reminder", "variables": {"name": "Bob", "thing": "dentist visit"}});
    let (status, body) = dialout(addr, to(extra)).await;
    assert_eq!(status, 200, "{body}");
    let sid = body["call_sid"].as_str().unwrap().to_string();
    let s = summary(&state, &sid).await;
    assert_eq!(
        s.turns[0].bot_text,
        "Hi Bob, a reminder about your dentist visit tomorrow."
    );
}
