#!/usr/bin/env bash
# Fault injection against containers: builds the image pbft-node:local
# (FROM scratch, static binaries, with --byzantine), then runs the same
# scenarios as scripts/fault-inject with `pbft chaos --backend docker`:
# one container per replica on a docker network of the run's own.
#   docker/chaos.sh --ci
#   docker/chaos.sh --scenario kill-primary --json
set -euo pipefail
cd "$(dirname "$0")/.."
docker/build.sh byzantine >&2
triple=x86_64-unknown-linux-gnu
exec "${CARGO_TARGET_DIR:-target}/$triple/release/pbft" chaos --backend docker "$@"
