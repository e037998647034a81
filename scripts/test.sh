#!/usr/bin/env sh
# The test command README.md gives ("Run the tests"): installs what the tests need when it is
# missing, then runs every test. `.ci/run` calls exactly this script.
#
# nextest runs each test in a process of its own (several tests count this process's
# descriptors or change process-wide settings); plain `cargo test` works too, since those tests
# re-run themselves alone when they share a process.
set -eu
cd "$(dirname "$0")/.."

if ! cargo nextest --version >/dev/null 2>&1; then
    echo "scripts/test.sh: installing cargo-nextest (once; a few minutes)" >&2
    cargo install cargo-nextest --locked
fi

cargo nextest run --workspace --no-fail-fast
cargo test --doc --workspace
