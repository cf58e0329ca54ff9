#!/usr/bin/env bash
# Builds callbox with the `cuda` feature: llama.cpp on CUDA (static cuBLAS),
# Whisper on candle's CUDA backend, ONNX Runtime's CUDA provider. Needs no GPU:
# on Debian bookworm it installs NVIDIA's CUDA 11.8 toolkit from the non-free
# component; elsewhere it uses the toolkit whose nvcc is on PATH or under
# $CUDA_HOME (CUDA 11.8 or newer; Dockerfile.cuda uses NVIDIA's 12.x image).
#
#   CUDA_ARCHS        GPU architectures to compile for, CMake style
#                     (default "90", H100/H200, with CUDA 12 or newer;
#                     "80;86;89;90" covers A100, A10G, L4/L40S and H100 at
#                     about four times the build time). With CUDA 11.8 the
#                     default is "80": llama.cpp's Hopper-only code needs
#                     CUDA 12, and sm_80 code carries PTX that the driver
#                     compiles for an H100 at the first start (then cached).
#   CUDA_COMPUTE_CAP  what candle's kernels (Whisper) are compiled for
#                     (default 80): they are PTX, which the driver compiles
#                     for the GPU at hand when they load, so compute_80 runs
#                     on every GPU from the A100 on, and needs no CUDA 12.
#   CARGO_TARGET_DIR  build folder (default ~/.cache/callbox/target-cuda,
#                     apart from the CPU build so neither rebuilds the other)
#
# On 2 cores the first build takes about 45 minutes for one architecture
# (llama.cpp's 144 CUDA files, candle's kernels);
# later builds only relink.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/lib/apt.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/callbox/target-cuda}"

ensure_packages "${BUILD_PACKAGES[@]}"

if [ -n "${CUDA_HOME:-}" ] && [ -x "$CUDA_HOME/bin/nvcc" ]; then
  export PATH="$CUDA_HOME/bin:$PATH"
fi
if ! command -v nvcc >/dev/null; then
  if grep -qs "bookworm" /etc/os-release; then
    list=/etc/apt/sources.list.d/callbox-nonfree.sources
    if ! grep -rqs "non-free" /etc/apt/sources.list /etc/apt/sources.list.d/; then
      echo "==> enabling Debian's non-free component for NVIDIA's CUDA toolkit ($list)"
      sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
      $sudo tee "$list" >/dev/null <<'LIST'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: non-free contrib
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
LIST
    fi
    # nvidia-cuda-dev carries the static cudart/cuBLAS that llama.cpp links;
    # CUDA 11.8 accepts GCC up to 11 as its host compiler.
    APT_NO_RECOMMENDS=1 ensure_packages nvidia-cuda-toolkit nvidia-cuda-dev g++-11
  else
    echo "error: no nvcc on PATH and no \$CUDA_HOME; install a CUDA toolkit (11.8 or newer) first" >&2
    exit 1
  fi
fi
echo "==> $(nvcc --version | tail -1)"
# NVCC 11.x refuses GCC 12; use the newest GCC it supports when one is there.
if nvcc --version | grep -q "release 11\." && command -v g++-11 >/dev/null; then
  export NVCC_CCBIN=g++-11 CMAKE_CUDA_HOST_COMPILER=g++-11
fi

if [ -z "${CUDA_ARCHS:-}" ]; then
  if nvcc --version | grep -q "release 11\."; then CUDA_ARCHS=80; else CUDA_ARCHS=90; fi
fi
# llama.cpp's build takes CMAKE_* from the environment; candle's kernel build
# cannot ask a GPU for its compute capability here, so it is told (for 90 it
# would target compute_90a, which CUDA 11.8 lacks).
export CMAKE_CUDA_ARCHITECTURES="$CUDA_ARCHS"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-80}"
# Debian's toolkit puts its libraries in the system's folder, where the
# search of llama-cpp-sys-2's build script (<root>/lib64) does not look.
if [ "$(command -v nvcc)" = /usr/bin/nvcc ] && [ -z "${CUDA_LIBRARY_PATH:-}" ]; then
  shim="$CARGO_TARGET_DIR/debian-cuda"
  mkdir -p "$shim"
  ln -sfn "/usr/lib/$(gcc -print-multiarch)" "$shim/lib64"
  export CUDA_LIBRARY_PATH="$shim" CUDA_PATH=/usr
fi
# llama.cpp's CMake cache keeps the architectures of its first configure:
# another list needs a fresh llama.cpp build folder.
stamp="$CARGO_TARGET_DIR/.callbox-cuda-archs"
mkdir -p "$CARGO_TARGET_DIR"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" != "$CUDA_ARCHS" ]; then
  echo "==> CUDA architectures changed ($(cat "$stamp") → $CUDA_ARCHS): rebuilding llama.cpp"
  rm -rf "$CARGO_TARGET_DIR"/release/build/llama-cpp-sys-2-*/out/build
fi
echo "$CUDA_ARCHS" > "$stamp"
echo "==> building callbox --features cuda for sm_${CUDA_ARCHS} (candle: sm_${CUDA_COMPUTE_CAP}) in $CARGO_TARGET_DIR"
cargo build --release --locked --features cuda --bin callbox
bin="$CARGO_TARGET_DIR/release/callbox"
echo "==> built $bin ($(du -h "$bin" | cut -f1))"
echo "    shared libraries it needs besides glibc:"
ldd "$bin" | grep -E "cuda|cublas|curand|nvrtc|gomp|espeak|stdc" | sed 's/^/      /' || true
