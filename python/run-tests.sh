#!/usr/bin/env bash
# The Python package's tests: builds it with maturin into a virtual environment under target/
# (made on first use; pip fetches maturin, numpy and pytest) and runs pytest against the
# bundled data. The extension shares the workspace's target folder and dev profile, so it
# reuses what `cargo test` compiled. Part of the README's test command.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
venv=$root/target/python-venv
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip maturin pytest numpy ml_dtypes
export CARGO_TARGET_DIR=$root/target
# The build backend runs the maturin installed above.
export PATH=$venv/bin:$PATH
# The binary the CLI comparison runs, built exactly as `cargo test` builds it (a no-op after it;
# other target selections resolve features differently and compile wgpu again).
cargo test --quiet --no-run
MATURIN_PEP517_ARGS="--profile dev" "$venv/bin/python" -m pip install --quiet \
    --no-build-isolation --force-reinstall --no-deps ./python
DBKSVD_BIN=$root/target/debug/dbksvd "$venv/bin/python" -m pytest -q python/tests "$@"
