#!/usr/bin/env bash
# Install what this project needs on a fresh Debian machine, then build (once, cached) the
# Go programs of the management plane. Safe to run again: each step skips what is there.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v python3 >/dev/null || need_apt+=(python3 python3-venv)
command -v git >/dev/null || need_apt+=(git)
command -v make >/dev/null || need_apt+=(make)
if ((${#need_apt[@]})); then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing ${need_apt[*]}; run as root or install them" >&2
    exit 1
  fi
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi

if ! command -v go >/dev/null; then
  echo "setup: Go is needed to build etcd and kube-apiserver from the Go module proxy." >&2
  echo "       Any Go >= 1.21 will do: it fetches the toolchain tools/go.mod asks for." >&2
  exit 1
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
stamp=.venv/.installed-$(sha256sum pyproject.toml constraints.txt | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -c constraints.txt -e '.[dev]'
  rm -f .venv/.installed-* && touch "$stamp"
fi

# Build (or find in the version-keyed cache) etcd, kube-apiserver and kubectl.
.venv/bin/plunderctl lab build "$@"
