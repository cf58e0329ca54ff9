//! The GPU deployment files agree with the binary: `Dockerfile.cuda`,
//! `modal_app.py` (imported with the real Modal client, offline) and
//! `scripts/docker/entrypoint.sh` name the port the server listens on, the
//! health endpoint it serves, environment variables it reads, and model
//! paths and a model set it knows.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use callbox::config::Config;
use clap::CommandFactory;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A Python environment with Modal's client (from PyPI, once per build
/// folder), in which `modal_app.py` is imported: no account and no network
/// to Modal are involved, as in `modal deploy` before it uploads anything.
fn modal_app() -> serde_json::Value {
    let venv = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("modal-venv");
    let python = venv.join("bin/python");
    if !python.exists() {
        let ok = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .unwrap()
            .success();
        assert!(ok, "python3 -m venv failed");
    }
    let has_modal = Command::new(&python)
        .args(["-c", "import modal"])
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap()
        .success();
    if !has_modal {
        let ok = Command::new(&python)
            .args(["-m", "pip", "install", "-q", "modal==1.6.4"])
            .status()
            .unwrap()
            .success();
        assert!(ok, "pip could not install Modal's client");
    }
    // Besides the values, what `@modal.concurrent` is given, and of each
    // Modal function the options of its decorators and its body.
    let script = r#"
import ast, json, sys
sys.path.insert(0, sys.argv[1])
import modal
concurrent = {}
real_concurrent = modal.concurrent
def spy(**kw):
    concurrent.update(kw)
    return real_concurrent(**kw)
modal.concurrent = spy
import modal_app as m
assert isinstance(m.app, modal.App), m.app
assert m.serve is not None
source = open(m.__file__).read()
defs = {d.name: d for d in ast.parse(source).body if isinstance(d, ast.FunctionDef)}
def function(name):
    d = defs[name]
    options = sorted(k.arg for c in d.decorator_list if isinstance(c, ast.Call) for k in c.keywords)
    return {"options": options, "body": ast.get_source_segment(source, d)}
print(json.dumps({
    "port": m.PORT, "health": m.HEALTH_PATH, "models_dir": m.MODELS_DIR,
    "model_set": m.MODEL_SET, "env": m.server_env(), "gpu": m.GPU,
    "calls": m.CALLS_PER_CONTAINER, "min_containers": m.MIN_CONTAINERS,
    "scaledown": m.SCALEDOWN_SECS, "source": source,
    "headroom": m.WEB_HEADROOM, "concurrent": concurrent,
    "fetch": function("fetch") if isinstance(m.fetch, modal.Function) else None,
    "serve": function("serve"),
}))
"#;
    let out = Command::new(&python)
        .args(["-c", script])
        .arg(repo())
        // Nothing may reach Modal: an unroutable server and no token.
        .env("MODAL_SERVER_URL", "http://127.0.0.1:9")
        .env_remove("MODAL_TOKEN_ID")
        .env_remove("MODAL_TOKEN_SECRET")
        // The defaults, not this shell's deploy settings.
        .env_remove("CALLBOX_MODAL_MIN_CONTAINERS")
        .env_remove("CALLBOX_MODAL_WEB_HEADROOM")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "importing modal_app.py failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `KEY=value` pairs of the Dockerfile's `ENV` instructions.
fn docker_env(dockerfile: &str) -> Vec<(String, String)> {
    let joined = dockerfile.replace("\\\n", " ");
    joined
        .lines()
        .filter_map(|l| l.trim().strip_prefix("ENV "))
        .flat_map(|rest| {
            rest.split_whitespace()
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
                .collect::<Vec<_>>()
        })
        .collect()
}

fn instruction<'a>(dockerfile: &'a str, name: &str) -> Vec<&'a str> {
    dockerfile
        .lines()
        .filter_map(|l| l.trim().strip_prefix(name))
        .map(str::trim)
        .collect()
}

/// Every `CALLBOX_*` / `TWILIO_*` name in `text`.
fn env_names(text: &str) -> BTreeSet<String> {
    let re = regex::Regex::new(r"\b(CALLBOX|TWILIO)_[A-Z0-9_]*[A-Z0-9]").unwrap();
    re.find_iter(text).map(|m| m.as_str().to_string()).collect()
}

/// Variables the command line reads (clap's `env = …`).
fn cli_env_names() -> BTreeSet<String> {
    fn walk(cmd: &clap::Command, out: &mut BTreeSet<String>) {
        for a in cmd.get_arguments() {
            if let Some(e) = a.get_env() {
                out.insert(e.to_string_lossy().into_owned());
            }
        }
        for s in cmd.get_subcommands() {
            walk(s, out);
        }
    }
    let mut out = BTreeSet::new();
    walk(&callbox::cli::Cli::command(), &mut out);
    out
}

/// Whether the binary reads `name`: a command-line variable, a nested
/// configuration key the configuration accepts, or a name the source reads
/// by hand (Twilio's credentials).
fn binary_reads(name: &str, value: &str) -> Result<(), String> {
    if cli_env_names().contains(name) {
        return Ok(());
    }
    if let Some(key) = name.strip_prefix("CALLBOX_").filter(|k| k.contains("__")) {
        let mut fig =
            figment::Figment::from(figment::providers::Serialized::defaults(Config::default()));
        let path = key.to_lowercase().replace("__", ".");
        fig = fig.merge((path.as_str(), toml_value(value)));
        let cfg: Result<Config, _> = fig.extract();
        return cfg
            .map_err(|e| e.to_string())
            .and_then(|c| c.validate().map_err(|e| e.to_string()));
    }
    let sources = ["src/config/mod.rs", "src/server/mod.rs", "src/cli/mod.rs"];
    if sources
        .iter()
        .any(|f| read(f).contains(&format!("\"{name}\"")))
    {
        return Ok(());
    }
    Err("not read by callbox".into())
}

fn toml_value(v: &str) -> figment::value::Value {
    if let Ok(n) = v.parse::<i64>() {
        return n.into();
    }
    match v {
        "true" => true.into(),
        "false" => false.into(),
        _ => v.into(),
    }
}

#[test]
fn dockerfile_modal_app_and_binary_agree() {
    let dockerfile = read("Dockerfile.cuda");
    let entrypoint = read("scripts/docker/entrypoint.sh");
    let modal = modal_app();
    let cfg = Config::default();

    // The port.
    let default_port: u16 = cfg.server.bind.rsplit(':').next().unwrap().parse().unwrap();
    let exposed: Vec<u16> = instruction(&dockerfile, "EXPOSE ")
        .iter()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(exposed, vec![default_port], "EXPOSE");
    assert_eq!(modal["port"], default_port, "modal_app.PORT");
    let env = docker_env(&dockerfile);
    let get = |k: &str| {
        env.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("Dockerfile.cuda sets no {k}"))
    };
    assert_eq!(
        get("CALLBOX_SERVER__BIND"),
        format!("0.0.0.0:{default_port}")
    );
    assert_eq!(
        modal["env"]["CALLBOX_SERVER__BIND"],
        format!("0.0.0.0:{default_port}")
    );

    // The health endpoint: the Dockerfile's check and Modal's path are what
    // the server answers (a real server on the test models).
    let health = modal["health"].as_str().unwrap();
    let check = instruction(&dockerfile, "CMD curl")
        .into_iter()
        .next()
        .expect("a curl health check");
    assert!(
        check.contains(&format!("127.0.0.1:{default_port}{health}")),
        "{check}"
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (_state, addr) = common::server::start(|_| {}).await;
        let r = reqwest::get(format!("http://{addr}{health}"))
            .await
            .unwrap();
        assert!(r.status().is_success(), "{health}: {}", r.status());
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["status"], "ok");
        // It says where each engine runs, so a deployment can check its GPU.
        assert_eq!(body["build"], "cpu");
        assert_eq!(body["devices"]["llm"], "cpu");
    });

    // Model paths and the set.
    let models_dir = modal["models_dir"].as_str().unwrap();
    assert_eq!(get("CALLBOX_MODELS"), models_dir);
    assert!(
        dockerfile.contains(&format!("VOLUME [\"{models_dir}\"]")),
        "the models folder is the image's volume"
    );
    assert_eq!(modal["env"]["CALLBOX_MODELS"], models_dir);
    let set = modal["model_set"].as_str().unwrap();
    assert_eq!(get("CALLBOX_MODEL_SET"), set);
    assert_eq!(modal["env"]["CALLBOX_MODEL_SET"], set);
    // The set a CUDA build uses by default, and one the manifest defines
    // with every role filled.
    assert!(
        read("src/cli/mod.rs").contains(&format!("cfg!(feature = \"cuda\") {{\n    \"{set}\"")),
        "callbox's CUDA default set is not {set}"
    );
    let manifest = &common::store().manifest;
    let spec = manifest.set(set).unwrap();
    for (role, file) in [
        ("vad", &spec.vad),
        ("turn", &spec.turn),
        ("stt", &spec.stt),
        ("llm", &spec.llm),
        ("tts", &spec.tts),
        ("ort", &spec.ort),
    ] {
        assert!(file.is_some(), "set {set} has no {role}");
    }

    // Every variable the three files give callbox is one it reads, with a
    // value it accepts.
    let mut given: Vec<(String, String)> = env.clone();
    for (k, v) in modal["env"].as_object().unwrap() {
        given.push((k.clone(), v.as_str().unwrap().to_string()));
    }
    for (k, v) in &given {
        if k.starts_with("CALLBOX_") {
            binary_reads(k, v).unwrap_or_else(|e| panic!("{k}={v}: {e}"));
        }
    }
    // Names merely mentioned (secrets, documentation) are read too, except
    // the files' own settings.
    let source = modal["source"].as_str().unwrap();
    let own = |n: &str| n.starts_with("CALLBOX_MODAL_") || n == "CALLBOX_CUDA_ARCHS";
    for name in env_names(source)
        .into_iter()
        .chain(env_names(&dockerfile))
        .chain(env_names(&entrypoint))
    {
        if own(&name) || name == "CALLBOX_FETCH_MODELS" {
            continue;
        }
        let value = given
            .iter()
            .find(|(k, _)| *k == name)
            .map_or("1", |(_, v)| v.as_str());
        binary_reads(&name, value).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    // The entrypoint's own switch is one the entrypoint reads.
    assert!(entrypoint.contains("${CALLBOX_FETCH_MODELS"));

    // Calls per container: the server's limit is the load Modal's
    // autoscaler aims for, and Modal's own cap sits above it, room for
    // webhooks and health probes (Modal counts them as inputs too).
    assert_eq!(
        modal["env"]["CALLBOX_SERVER__MAX_CALLS"],
        modal["calls"].to_string()
    );
    let calls = modal["calls"].as_u64().unwrap();
    let headroom = modal["headroom"].as_u64().unwrap();
    assert!(headroom > 0, "WEB_HEADROOM");
    let concurrent = &modal["concurrent"];
    assert_eq!(concurrent["target_inputs"], calls, "{concurrent}");
    assert_eq!(concurrent["max_inputs"], calls + headroom, "{concurrent}");
    // No GPU runs while nobody calls, unless asked for.
    assert_eq!(modal["min_containers"], 0);
    // The models are fetched ahead of time by a function of their own, on a
    // CPU, which alone writes the volume; the serving containers read it and
    // never fetch, so containers starting together cannot race on it.
    let fetch = &modal["fetch"];
    assert!(fetch.is_object(), "modal_app.fetch is no Modal function");
    let fetch_body = fetch["body"].as_str().unwrap();
    assert!(
        fetch_body.contains("\"models\", \"fetch\"") && fetch_body.contains("models.commit()"),
        "{fetch_body}"
    );
    let options = |f: &serde_json::Value| -> Vec<String> {
        serde_json::from_value(f["options"].clone()).unwrap()
    };
    assert!(!options(fetch).iter().any(|o| o == "gpu"), "{fetch}");
    assert!(options(&modal["serve"]).iter().any(|o| o == "gpu"));
    let serve_body = modal["serve"]["body"].as_str().unwrap();
    assert!(
        !serve_body.contains("\"fetch\"") && !serve_body.contains("commit("),
        "{serve_body}"
    );
    assert!(
        serve_body.contains("\"CALLBOX_FETCH_MODELS\": \"0\"")
            && serve_body.contains("modal run modal_app.py::fetch"),
        "{serve_body}"
    );
    assert!(source.contains("volumes={MODELS_DIR: models.with_mount_options(read_only=True)}"));
    // What Modal starts is what the image installs.
    assert!(source.contains("/usr/local/bin/callbox-entrypoint"));
    assert!(
        dockerfile.contains("COPY scripts/docker/entrypoint.sh /usr/local/bin/callbox-entrypoint")
    );
    assert!(Path::new(&repo().join("scripts/docker/entrypoint.sh")).is_file());
    // The image runs as a user of its own.
    let user = instruction(&dockerfile, "USER ");
    assert!(
        !user.is_empty() && user.iter().all(|u| *u != "root" && *u != "0"),
        "{user:?}"
    );
}

/// The binary refuses a GPU placement it cannot honour, naming the setting.
#[test]
fn a_cpu_build_refuses_gpu_devices_clearly() {
    let e = binary_reads("CALLBOX_DEVICES__LLM", "cuda").unwrap_err();
    assert!(
        e.contains("devices.llm") && e.contains("cuda feature"),
        "{e}"
    );
    binary_reads("CALLBOX_DEVICES__LLM", "cpu").unwrap();
    binary_reads("CALLBOX_LLM__BATCH", "true").unwrap();
    assert!(binary_reads("CALLBOX_NO_SUCH__THING", "1").is_err());
}
