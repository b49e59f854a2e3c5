#!/usr/bin/env bash
# Instructions per packet of the pipeline bench's cases, counted by callgrind inside what the
# criterion bench times (`run_batch`, `run_round`, `run_one` of benches/benches/common), at two
# packet counts: the difference cancels what happens once. Stable to a few instructions from
# run to run, where wall-clock on a shared VM is not; use it to compare two builds.
#   benches/count-instructions.sh                  # every case
#   benches/count-instructions.sh established-1k   # some cases (`--list` names them)
# Needs valgrind (apt-get install valgrind). Not run by CI: the 1M cases take minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "count-instructions: needs valgrind (apt-get install valgrind)" >&2; exit 1; }
cargo build -q --release -p pacific-benches --example pipeline-count
bin=target/release/examples/pipeline-count
if [ $# -eq 0 ]; then set -- $("$bin" --list); fi
if [ "$1" = "--list" ]; then exec "$bin" --list; fi

refs() { # CASE PACKETS -> instructions of the whole run
    valgrind --tool=callgrind --callgrind-out-file=/dev/null --collect-atstart=no \
        --toggle-collect='*run_batch*' --toggle-collect='*run_round*' \
        --toggle-collect='*run_one*' "$bin" "$1" "$2" 2>&1 \
        | awk '/refs:/ { gsub(",", "", $NF); print $NF }'
}

for case in "$@"; do
    case "$case" in
        first-*) n=16384 ;;        # distinct connections run out past ~58k
        established-1m*) n=65536 ;;
        *) n=131072 ;;
    esac
    a=$(refs "$case" "$n")
    b=$(refs "$case" $((2 * n)))
    [ -n "$a" ] && [ -n "$b" ] || { echo "count-instructions: $case did not run" >&2; exit 1; }
    printf '%-34s %6d instructions/packet\n' "$case" $(((b - a) / n))
done
