# Sourced by the setup scripts: installs Debian/Ubuntu packages that are not
# installed yet, as root or through sudo. Idempotent and quiet when there is
# nothing to do. APT_NO_RECOMMENDS=1 leaves out recommended packages (the
# CUDA toolkit recommends gigabytes of profilers).
ensure_packages() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "==> installing system packages: ${missing[*]}"
  local sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  local opts=(-y -qq)
  [ "${APT_NO_RECOMMENDS:-0}" = "1" ] && opts+=(--no-install-recommends)
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install "${opts[@]}" "${missing[@]}"
}

# The packages every build of callbox needs: llama.cpp's build tools (cmake,
# a C++ compiler, libclang for bindgen), espeak-ng for Piper's phonemes,
# OpenMP for llama.cpp.
BUILD_PACKAGES=(cmake g++ clang libclang-dev pkg-config libgomp1 libespeak-ng-dev espeak-ng-data)
