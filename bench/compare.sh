#!/usr/bin/env bash
# Interleaved runs of DataStream and the Node.js peer on the same loads (a stopgap until the
# benchmark issue's bench/run): S1 one 1 GiB seed upload, S2 1,000 concurrent 1 MiB uploads.
# Prints one line per run with MB/s and the receiver's peak RSS. Usage: bench/compare.sh [RUNS]
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
runs="${1:-3}"
work="${TMPDIR:-/tmp}/datastream-compare"
mkdir -p "$work"
[ -f "$work/big.bin" ] || head -c 1073741824 /dev/urandom > "$work/big.bin"
swift build -c release --package-path "$here" --product datastream >/dev/null
start() { # name -> sets PORT, PID; receiver writes into $work/out
    rm -rf "$work/out"; mkdir -p "$work/out"
    local port=$(( 20000 + RANDOM % 20000 ))
    case "$1" in
        datastream) /usr/bin/time -f "%M" -o "$work/rss" -q "$here/.build/release/datastream" serve --port "$port" --dir "$work/out" --log-level warning >/dev/null 2>&1 & ;;
        node) /usr/bin/time -f "%M" -o "$work/rss" -q node "$here/bench/peers/node-receiver.js" "$port" "$work/out" >/dev/null 2>&1 & ;;
    esac
    PID=$!; PORT=$port
    for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
}
stop() { pkill -INT -P "$PID" || true; wait "$PID" 2>/dev/null || true; }
for run in $(seq "$runs"); do
    for peer in datastream node; do
        sync; start $peer
        s1=$(timeout 120 python3 "$here/bench/seed_send_one.py" "$PORT" "$work/big.bin" | sed 's/.*: \([0-9.]*\) MB\/s.*/\1/')
        stop; echo "run $run S1 $peer ${s1} MB/s rss $(cat "$work/rss") KiB"
        sync; start $peer
        s2=$(timeout 120 python3 "$here/bench/seed_load.py" "$PORT" 1000 1048576 1000 | sed 's/.*s: \([0-9.]*\) MB\/s.*/\1/')
        stop; echo "run $run S2 $peer ${s2} MB/s rss $(cat "$work/rss") KiB"
    done
done
rm -rf "$work/out"
