#!/usr/bin/env bash
# Access-map figures (issue 7): a 200,000-entry map loaded from text and from the compiled
# index (postmap), lookups per second, and RSS growth with the map loaded against the text
# file's size. Targets: compiled load under 100 ms, over 1 million lookups/s, RSS growth
# under 2x the file.
#
# The work is done by the ignored test `big_map_figures` in tests/policy7_postmap.rs (it
# measures in-process, in a release build, and probes RSS in a fresh process); this script
# runs it and prints its figures. No peer server is involved: Postfix's own maps are
# compiled Berkeley DB/LMDB files, not comparable in-process.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --release --test policy7_postmap -- --ignored --exact big_map_figures --nocapture 2>&1 |
    grep -vE '^(running|test result|$)'
