"""callbox on Modal: one GPU container answering Twilio calls.

    modal secret create callbox-twilio TWILIO_ACCOUNT_SID=AC... TWILIO_AUTH_TOKEN=... \\
        CALLBOX_API_TOKEN=...            # the last one only for POST /dialout
    modal deploy modal_app.py

Modal prints the web endpoint's URL; point the Twilio number's voice webhook at
`POST <url>/` (docs/modal.md walks through it). The image is Dockerfile.cuda,
the models live in a Modal Volume (fetched into it on the first start), and
every setting below can be changed with an environment variable at deploy
time, e.g. `CALLBOX_MODAL_GPU=H100 modal deploy modal_app.py`.

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
# and Modal's, kept equal so that Modal starts another container instead of
# the server turning a caller away. Set it from `scripts/gpu-bench.sh` on the
# chosen GPU: the most callers whose p95 Total stays where you want it. 16 is
# the server's default until GPU figures are measured (README, "GPU").
CALLS_PER_CONTAINER = int(os.environ.get("CALLBOX_MODAL_CALLS", "16"))

# A container loads its models in about a minute; one kept warm answers the
# first call at once. 0 saves money when nobody calls.
MIN_CONTAINERS = int(os.environ.get("CALLBOX_MODAL_MIN_CONTAINERS", "1"))
# Idle seconds before Modal stops a container (calls in progress keep it up).
SCALEDOWN_SECS = int(os.environ.get("CALLBOX_MODAL_SCALEDOWN_SECS", "300"))

# Region is latency: Twilio's media edge, the container and the caller
# should be on the same continent. Empty lets Modal choose; e.g. "us-east"
# next to Twilio's default Ashburn edge, "eu-west" with Twilio's Dublin edge.
REGION = os.environ.get("CALLBOX_MODAL_REGION", "") or None

# A call may last up to call.max_call_secs (30 min); the function's timeout
# must cover the longest call.
CALL_TIMEOUT_SECS = 3600

# Twilio's credentials (and the dial-out bearer token) from a Modal secret.
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


@app.function(
    image=image,
    gpu=GPU,
    volumes={MODELS_DIR: models},
    secrets=[modal.Secret.from_name(SECRET_NAME)],
    min_containers=MIN_CONTAINERS,
    scaledown_window=SCALEDOWN_SECS,
    timeout=CALL_TIMEOUT_SECS,
    region=REGION,
)
@modal.concurrent(max_inputs=CALLS_PER_CONTAINER)
@modal.web_server(port=PORT, startup_timeout=900)
def serve():
    """Fetches the model set into the volume (on the first start; a quick
    check later), then starts `callbox serve`; Modal forwards HTTP and the
    Media Streams websocket to it once the port answers."""
    env = {**os.environ, **server_env()}
    subprocess.run(["callbox", "models", "fetch", "--set", MODEL_SET], env=env, check=True)
    # Keep what this start fetched for the next containers.
    models.commit()
    env["CALLBOX_FETCH_MODELS"] = "0"
    subprocess.Popen(["/usr/local/bin/callbox-entrypoint", "serve"], env=env)
