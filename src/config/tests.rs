use super::*;

#[test]
#[allow(clippy::result_large_err)]
fn file_and_environment_override_defaults() {
    let dir = std::env::temp_dir().join(format!("callbox-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("callbox.toml");
    std::fs::write(&f, "[call]\nidle_secs = 7.5\n[vad]\nconfidence = 0.6\n").unwrap();
    figment::Jail::expect_with(|jail| {
        jail.set_env("CALLBOX_SERVER__MAX_CALLS", "3");
        jail.set_env("CALLBOX_MODELS", "/somewhere");
        let c = Config::load(Some(&f)).unwrap();
        assert_eq!(c.call.idle_secs, 7.5);
        assert_eq!(c.vad.confidence, 0.6);
        assert_eq!(c.server.max_calls, 3);
        assert!(c.call.denoise);
        Ok(())
    });
}

#[test]
#[allow(clippy::result_large_err)]
fn the_documented_example_is_the_default() {
    // In a jail: figment's jails serialise the tests that touch the environment.
    figment::Jail::expect_with(|_| {
        let example = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/callbox.example.toml"));
        assert_eq!(Config::load(Some(example)).unwrap(), Config::default());
        Ok(())
    });
}

#[test]
#[allow(clippy::result_large_err)]
fn an_empty_folder_turns_recordings_and_traces_off() {
    figment::Jail::expect_with(|jail| {
        jail.set_env("CALLBOX_CALL__RECORDINGS_DIR", "");
        jail.set_env("CALLBOX_OBSERVE__TRACES_DIR", "");
        let c = Config::load(None).unwrap();
        assert_eq!(c.call.recordings_dir, None);
        assert_eq!(c.observe.traces_dir, None);
        Ok(())
    });
}

#[test]
#[allow(clippy::result_large_err)]
fn bad_values_are_explained() {
    let dir = std::env::temp_dir().join(format!("callbox-cfg-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("bad.toml");
    std::fs::write(&f, "[call]\nturn_threshold = 2.0\n").unwrap();
    assert!(Config::load(Some(&f))
        .unwrap_err()
        .to_string()
        .contains("turn_threshold"));
    std::fs::write(&f, "[call]\nnot_a_key = 1\n").unwrap();
    assert!(Config::load(Some(&f))
        .unwrap_err()
        .to_string()
        .contains("not_a_key"));
    assert!(Config::load(Some(Path::new("/nope.toml")))
        .unwrap_err()
        .to_string()
        .contains("/nope.toml"));
}

#[test]
#[allow(clippy::result_large_err)]
fn rest_credentials_prefer_an_api_key_and_secrets_never_print() {
    figment::Jail::expect_with(|jail| {
        jail.set_env("TWILIO_ACCOUNT_SID", "ACenv");
        jail.set_env("TWILIO_AUTH_TOKEN", "env-token");
        let mut t = TwilioConfig::default();
        let login = |t: &TwilioConfig| t.rest_login().map(|(u, p)| (u, p.0));
        assert_eq!(login(&t), Some(("ACenv".into(), "env-token".into())));
        t.api_key = Some("SKkey".into());
        assert_eq!(login(&t).unwrap().0, "ACenv", "a key without its secret");
        t.api_secret = Some(Secret("key-secret".into()));
        assert_eq!(login(&t), Some(("SKkey".into(), "key-secret".into())));
        let mut c = Config {
            twilio: t,
            ..Default::default()
        };
        c.server.api_token = Some(Secret("owner-token".into()));
        let shown = format!("{c:?}");
        assert!(!shown.contains("key-secret") && !shown.contains("owner-token"));
        Ok(())
    });
}

#[test]
#[allow(clippy::result_large_err)]
fn a_public_deployment_is_refused_weak_or_cleartext_settings() {
    figment::Jail::expect_with(|jail| {
        let refused = |toml: &str, key: &str| {
            let e = Config::from_toml_str(toml).unwrap_err().to_string();
            assert!(e.contains(key), "{toml}: {e}");
        };
        refused("[server]\napi_token = \"short\"\n", "server.api_token");
        refused(
            "[server]\nstream_secret = \"short\"\n",
            "server.stream_secret",
        );
        refused("[twilio]\nretries = 40\n", "twilio.retries");
        refused("[twilio]\ntimeout_secs = 600.0\n", "twilio.timeout_secs");
        refused(
            "[server]\nstart_timeout_secs = 0.0\n",
            "server.start_timeout_secs",
        );
        refused(
            "[twilio]\napi_base = \"http://api.twilio.com\"\n",
            "twilio.api_base",
        );
        refused(
            "[twilio]\ndialout_prefixes = [\"44\"]\n",
            "dialout_prefixes",
        );
        // Plain HTTP is fine to this machine (a fake, a sidecar).
        for local in [
            "http://127.0.0.1:9000",
            "http://localhost:1",
            "http://[::1]:2",
        ] {
            Config::from_toml_str(&format!("[twilio]\napi_base = \"{local}\"\n")).unwrap();
        }
        let long = "x".repeat(MIN_SECRET_CHARS);
        Config::from_toml_str(&format!("[server]\napi_token = \"{long}\"\n")).unwrap();
        // The environment's token is held to the same length.
        jail.set_env("CALLBOX_API_TOKEN", "short");
        assert!(Config::load(None)
            .unwrap_err()
            .to_string()
            .contains("CALLBOX_API_TOKEN"));
        Ok(())
    });
}

#[test]
fn tools_are_checked_at_startup() {
    let tool = |extra: &str| {
        format!(
            "[[tools]]\nname = \"order_status\"\ndescription = \"Look up an order\"\nurl = \"http://127.0.0.1:9/o\"\n{extra}"
        )
    };
    let ok = Config::from_toml_str(&tool(
        "parameters = { type = \"object\", properties = { n = { type = \"string\", pattern = \"^[0-9]{4,12}$\" } } }",
    ))
    .unwrap();
    assert_eq!(ok.tools[0].timeout_secs, 3.0);
    for (extra, says) in [
        ("triggers = [\" \"]", "a trigger must hold a word"),
        (
            "parameters = { type = \"string\" }",
            "JSON schema of an object",
        ),
        ("filler = \"Hold on {{name}}\"", "takes no placeholders"),
        ("timeout_secs = 0.0", "timeout_secs"),
        ("say = \"{{Bad Name}}\"", "placeholder"),
    ] {
        let e = Config::from_toml_str(&tool(extra)).unwrap_err().to_string();
        assert!(e.contains(says), "{extra}: {e}");
    }
    let e = Config::from_toml_str(&tool("").replace("order_status", "end_call"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("not end_call"), "{e}");
    let twice = format!("{}\n{}", tool(""), tool(""));
    assert!(Config::from_toml_str(&twice)
        .unwrap_err()
        .to_string()
        .contains("two tools"));
}
