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

# The remote pool's tests (feature `remote`) run against a real redis-server, which they start
# themselves; install Debian's package when it is missing (CI runs as root).
if ! command -v redis-server >/dev/null 2>&1; then
    echo "scripts/test.sh: installing redis-server (once)" >&2
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
    else
        sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
    fi
fi

if ! command -v tmux >/dev/null 2>&1; then
    # The progress bar is tested in a real terminal: a tmux session.
    echo "scripts/test.sh: installing tmux (once)" >&2
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tmux >/dev/null
    else
        sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tmux >/dev/null
    fi
fi
cargo nextest run --workspace --all-features --no-fail-fast
cargo test --doc --workspace --all-features
