#!/usr/bin/env bash
# Builds the image `pbft-node:local` FROM scratch around static binaries.
#   docker/build.sh            # honest replicas only
#   docker/build.sh byzantine  # pbft-node also takes --byzantine (fault injection)
set -euo pipefail
cd "$(dirname "$0")/.."
features=()
[ "${1:-}" = byzantine ] && features=(--features pbft-node/byzantine)
triple=x86_64-unknown-linux-gnu
RUSTFLAGS='-C target-feature=+crt-static' \
  cargo build -q --release --target "$triple" -p pbft -p pbft-node "${features[@]}"
out="${CARGO_TARGET_DIR:-target}/$triple/release"
context="$(mktemp -d)"
trap 'rm -rf "$context"' EXIT
cp "$out/pbft-node" "$out/pbft" docker/Dockerfile "$context/"
# Debug symbols are for the host's copies; the image needs none.
command -v strip >/dev/null && strip "$context/pbft-node" "$context/pbft"
# A static(-pie) binary has no shared libraries for ldd to list.
if ldd "$context/pbft-node" 2>&1 | grep -q '=>'; then
  echo "build.sh: pbft-node is not statically linked" >&2
  exit 1
fi
docker build -q -t pbft-node:local "$context"
echo "built pbft-node:local"
