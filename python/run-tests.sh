#!/usr/bin/env bash
# The Python package's tests: builds it with maturin into a virtual environment under target/
# (made on first use; pip fetches maturin, numpy and pytest) and runs pytest against the
# bundled data. The extension shares the workspace's target folder and dev profile, so it
# reuses most of what `cargo test` compiled (ndarray turns on two more features of num-traits
# and once_cell, so wgpu compiles once more for it). Part of the README's test command.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
venv=$root/target/python-venv
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip maturin pytest numpy ml_dtypes
# The target folder `cargo test` used (CARGO_TARGET_DIR if set).
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}
# The build backend runs the maturin installed above.
export PATH=$venv/bin:$PATH
# The binary the CLI comparison runs, built as `cargo test` builds it (a no-op after it).
cargo test --quiet --no-run
MATURIN_PEP517_ARGS="--profile dev" "$venv/bin/python" -m pip install --quiet \
    --no-build-isolation --force-reinstall --no-deps ./python
DBKSVD_BIN=$CARGO_TARGET_DIR/debug/dbksvd "$venv/bin/python" -m pytest -q python/tests "$@"
