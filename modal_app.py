"""callbox on Modal: GPU containers answering Twilio calls.

    modal secret create callbox-twilio TWILIO_ACCOUNT_SID=AC... TWILIO_AUTH_TOKEN=... \\
        CALLBOX_API_TOKEN=$(openssl rand -hex 32)   # the owner's: /dialout, /calls, /metrics
    modal run modal_app.py::fetch                   # the models into the volume, once
    modal deploy modal_app.py

`fetch` downloads the model set into a Modal Volume and commits it, on a CPU
container; run it again after changing MODEL_SET or upgrading callbox. The
serving containers mount that volume read-only and never download anything:
one started before the models are there stops at once and says to run
`fetch`. Modal prints the web endpoint's URL; point the Twilio number's voice
webhook at `POST <url>/` (docs/modal.md walks through it). The image is
Dockerfile.cuda, and every setting below can be changed with an environment
variable at deploy time, e.g. `CALLBOX_MODAL_GPU=H100 modal deploy modal_app.py`.

No container runs while nobody calls (MIN_CONTAINERS = 0), so the first
caller after a quiet spell waits while one starts and loads its models,
about a minute. `CALLBOX_MODAL_MIN_CONTAINERS=1 modal deploy modal_app.py`
keeps one warm and answers at once, at the price of one GPU around the clock.

This file imports without a Modal account or network (tests/deploy.rs checks
that it does, and that it agrees with Dockerfile.cuda and the binary).
"""

import os
import subprocess
from pathlib import Path

import modal

APP_NAME = os.environ.get("CALLBOX_MODAL_APP", "callbox")

# What the container and the binary agree on (tests/deploy.rs checks these
# against Dockerfile.cuda and `callbox`'s defaults).
PORT = 8765
HEALTH_PATH = "/health"
MODELS_DIR = "/models"
MODEL_SET = "gpu"

# The GPU. L40S (48 GB) holds the gpu set with room for the KV cache of
# dozens of calls at a third of an H100's price; "H100" or "H200" for the most
# calls per container and the shortest replies; "A100-40GB" also fits.
GPU = os.environ.get("CALLBOX_MODAL_GPU", "L40S")

# Calls one container takes at once: the server's own limit (server.max_calls)
# and the load Modal's autoscaler aims for (`target_inputs` below). Set it
# from `scripts/gpu-bench.sh` on the chosen GPU: the most callers whose p95
# Total stays where you want it. 16 is the server's default until GPU figures
# are measured (README, "GPU").
CALLS_PER_CONTAINER = int(os.environ.get("CALLBOX_MODAL_CALLS", "16"))

# Modal counts every request a container is handling as an input: a call's
# media websocket for as long as the call lasts, but also Twilio's webhooks
# (the call's `POST /`, status callbacks), dial-out requests and health
# probes. Were the inputs capped at the call lines, a container carrying its
# full load would make Modal hold back even the webhook that should hear the
# server's polite "busy", and a health probe would look like an outage. So
# the autoscaler targets the call lines (it starts another container once a
# container reaches them) and the cap sits this many inputs above, room for
# the short requests; a call beyond server.max_calls that still lands here
# while the next container starts is turned away by the server, not queued.
WEB_HEADROOM = int(os.environ.get("CALLBOX_MODAL_WEB_HEADROOM", "16"))

# Containers kept running while nobody calls. 0 costs nothing idle, but the
# first caller after a quiet spell waits for a cold container to load its
# models (about a minute of silence on the phone); 1 answers at once and
# bills one GPU around the clock.
MIN_CONTAINERS = int(os.environ.get("CALLBOX_MODAL_MIN_CONTAINERS", "0"))
# Idle seconds before Modal stops a container (calls in progress keep it up).
SCALEDOWN_SECS = int(os.environ.get("CALLBOX_MODAL_SCALEDOWN_SECS", "300"))

# Region is latency: Twilio's media edge, the container and the caller
# should be on the same continent. Empty lets Modal choose; e.g. "us-east"
# next to Twilio's default Ashburn edge, "eu-west" with Twilio's Dublin edge.
REGION = os.environ.get("CALLBOX_MODAL_REGION", "") or None

# A call may last up to call.max_call_secs (30 min); the function's timeout
# must cover the longest call.
CALL_TIMEOUT_SECS = 3600
# Downloading and unpacking the gpu set (about 7 GB from Hugging Face and
# PyPI) takes minutes; a slow mirror should not cut it short.
FETCH_TIMEOUT_SECS = 2 * 3600
# From the start of a container to the server answering on PORT: loading and
# warming the models takes about a minute, more when a fresh host first
# reads the 7 GB from the volume.
STARTUP_TIMEOUT_SECS = 600

# Twilio's credentials (and the owner's bearer token) from a Modal secret.
SECRET_NAME = os.environ.get("CALLBOX_MODAL_SECRET", "callbox-twilio")
VOLUME_NAME = os.environ.get("CALLBOX_MODAL_VOLUME", "callbox-models")

ROOT = Path(__file__).resolve().parent

image = modal.Image.from_dockerfile(
    ROOT / "Dockerfile.cuda",
    context_dir=ROOT,
    build_args={"CUDA_ARCHS": os.environ.get("CALLBOX_CUDA_ARCHS", "80;86;89;90")},
    # Modal's runner needs a Python of its own in the image.
    add_python="3.11",
)
models = modal.Volume.from_name(VOLUME_NAME, create_if_missing=True)
app = modal.App(APP_NAME)


def server_env() -> dict:
    """The environment callbox runs with inside the container."""
    return {
        "CALLBOX_MODELS": MODELS_DIR,
        "CALLBOX_MODEL_SET": MODEL_SET,
        "CALLBOX_SERVER__BIND": f"0.0.0.0:{PORT}",
        "CALLBOX_SERVER__MAX_CALLS": str(CALLS_PER_CONTAINER),
    }


# What a CUDA binary needs to start where there is no GPU. callbox links the
# driver's libcuda.so.1, which Modal mounts only into GPU containers; the
# CUDA base image carries a forward-compatibility copy of it, enough to load
# the binary for `models fetch`, which never initialises CUDA. Appended last,
# so a real driver, where there is one, comes first.
CUDA_COMPAT_LIBS = "/usr/local/cuda/compat"


def fetch_env() -> dict:
    """The environment `callbox models fetch` runs with in `fetch`."""
    env = {**os.environ, **server_env()}
    if Path(CUDA_COMPAT_LIBS).is_dir():
        paths = [p for p in env.get("LD_LIBRARY_PATH", "").split(":") if p]
        env["LD_LIBRARY_PATH"] = ":".join(paths + [CUDA_COMPAT_LIBS])
    return env


@app.function(
    image=image,
    # No GPU: downloading is network and disk work.
    volumes={MODELS_DIR: models},
    timeout=FETCH_TIMEOUT_SECS,
)
def fetch():
    """Fetches the model set into the volume and commits it, for the serving
    containers to read. Run it before the first deploy and again after
    changing the set or upgrading callbox: `modal run modal_app.py::fetch`.
    Files already there with the right hash are kept, so a second run
    downloads only what is missing or damaged."""
    subprocess.run(
        ["callbox", "models", "fetch", "--set", MODEL_SET], env=fetch_env(), check=True
    )
    models.commit()


@app.function(
    image=image,
    gpu=GPU,
    # Read-only: only `fetch` writes the volume. Serving containers start
    # side by side when calls come in; none of them downloads or commits, so
    # they cannot race each other on it.
    volumes={MODELS_DIR: models.with_mount_options(read_only=True)},
    secrets=[modal.Secret.from_name(SECRET_NAME)],
    min_containers=MIN_CONTAINERS,
    scaledown_window=SCALEDOWN_SECS,
    timeout=CALL_TIMEOUT_SECS,
    region=REGION,
)
@modal.concurrent(
    target_inputs=CALLS_PER_CONTAINER, max_inputs=CALLS_PER_CONTAINER + WEB_HEADROOM
)
@modal.web_server(port=PORT, startup_timeout=STARTUP_TIMEOUT_SECS)
def serve():
    """Checks that the model set is in the volume, then starts `callbox
    serve`; Modal forwards HTTP and the Media Streams websocket to it once
    the port answers."""
    # The entrypoint fetches nothing: a model missing from the volume is an
    # error, never a download into it.
    env = {**os.environ, **server_env(), "CALLBOX_FETCH_MODELS": "0"}
    # `models check` looks for every file of the set without hashing them
    # (seconds) and lists what is missing.
    check = subprocess.run(["callbox", "models", "check", "--set", MODEL_SET], env=env)
    if check.returncode != 0:
        raise RuntimeError(
            f"the {MODEL_SET!r} model set is not complete in the {VOLUME_NAME!r} volume "
            "(listed above): run `modal run modal_app.py::fetch` first; the next container finds them"
        )
    subprocess.Popen(["/usr/local/bin/callbox-entrypoint", "serve"], env=env)
