#!/usr/bin/env bash
# Reliable UDP on loopback: DataStream's native UDP against UFTP (Debian's uftp/uftpd, unicast),
# interleaved, RUNS rounds (default 3), one 1 GiB file, each transfer into a fresh directory.
#   ds-1200 / ds-8192      datastream send --udp --chunk-size N (no rate set: found by probing)
#   uftp-1200 / uftp-8192  uftp -R -1 (full speed, its default congestion handling), -b N
#   uftp-1200-tuned        uftp -R 2200000 (a hand-set 2.2 Gbit/s, near its best here)
# Prints one line per transfer (MiB/s, retransmitted share, digest check, CPU seconds the receiver
# process used for it) and the medians.
# Usage: bench/udp_compare.sh [RUNS]        Needs root for the large socket buffers.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
runs="${1:-3}"
work="${TMPDIR:-/tmp}/datastream-udp-compare"
mkdir -p "$work"
command -v uftp >/dev/null || { apt-get install -y uftp >/dev/null; }
[ -f "$work/big.bin" ] || head -c 1073741824 /dev/urandom > "$work/big.bin"
want=$(sha256sum < "$work/big.bin" | cut -d' ' -f1)
swift build -c release --package-path "$here" --product datastream >/dev/null
bin="$here/.build/release/datastream"
results="$work/results.txt"; : > "$results"

ds_port=$(( 30000 + RANDOM % 10000 )); uftp_port=$(( ds_port + 1 ))
rm -rf "$work/ds" "$work/uftp"; mkdir -p "$work/ds" "$work/uftp"
"$bin" serve --port "$ds_port" --dir "$work/ds" --log-level warning >/dev/null 2>"$work/ds.log" &
ds_pid=$!
uftpd -d -p "$uftp_port" -D "$work/uftp" -I 127.0.0.1 -B 33554432 > "$work/uftpd.log" 2>&1 &
uftpd_pid=$!
trap 'kill $ds_pid $uftpd_pid 2>/dev/null || true' EXIT
sleep 1

cpu() { # pid -> CPU seconds used so far (user + system, all threads)
    awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$1/stat"
}
check() { # file -> ok|BAD
    [ "$(sha256sum < "$1" | cut -d' ' -f1)" = "$want" ] && echo ok || echo BAD
}
run_ds() { # chunk
    rm -f "$work/ds/big.bin"*; sync
    local before json; before=$(cpu $ds_pid)
    json=$("$bin" send --udp --chunk-size "$1" --json "$work/big.bin" --to "127.0.0.1:$ds_port")
    local used; used=$(python3 -c "print(round($(cpu $ds_pid) - $before, 2))")
    python3 - "$1" "$json" "$(check "$work/ds/big.bin")" "$used" <<'EOF'
import json, sys
chunk, d, check, used = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4]
u = d.get("udp") or {}
rate = 1073741824 / d["seconds"] / 1048576
retx = 100.0 * u.get("retransmitted", 0) / max(u.get("datagrams", 1), 1)
print(f"ds-{chunk} {rate:.1f} MiB/s retransmitted {retx:.3f}% digest {check if d['ok'] else 'FAILED'} receiver-cpu {used} s")
EOF
}
run_uftp() { # label chunk rate
    rm -f "$work/uftp/big.bin"; sync
    local log="$work/uftp-$1.log"
    local before; before=$(cpu $uftpd_pid)
    uftp -M 127.0.0.1 -H 127.0.0.1 -p "$uftp_port" -I 127.0.0.1 -B 33554432 -b "$2" -R "$3" "$work/big.bin" > "$log" 2>&1 || true
    local used; used=$(python3 -c "print(round($(cpu $uftpd_pid) - $before, 2))")
    python3 - "$1" "$log" "$(check "$work/uftp/big.bin" 2>/dev/null || echo BAD)" "$used" <<'EOF'
import re, sys
label, log, check, used = sys.argv[1], open(sys.argv[2]).read(), sys.argv[3], sys.argv[4]
t = re.search(r"Status: Completed\s+time:\s+([0-9.]+) seconds", log)
naks = sum(int(n) for n in re.findall(r"Got (\d+) NAKs", log))
blocks = int((re.search(r"Blocks: (\d+)", log) or [0, 1])[1])
rate = 1024 / float(t[1]) if t else 0.0
print(f"{label} {rate:.1f} MiB/s retransmitted {100.0 * naks / blocks:.3f}% digest {check if t else 'FAILED'} receiver-cpu {used} s")
EOF
}

for run in $(seq "$runs"); do
    # Odd runs put DataStream first, even runs last: a transfer's cost depends on what ran
    # before it (page-cache pages freed a while ago are slow to reuse on this VM).
    order="ds-1200 uftp-1200 uftp-1200-tuned ds-8192 uftp-8192"
    [ $((run % 2)) -eq 0 ] && order="uftp-1200-tuned uftp-1200 ds-1200 uftp-8192 ds-8192"
    for case in $order; do
        case $case in
            ds-1200) line=$(run_ds 1200) ;;
            ds-8192) line=$(run_ds 8192) ;;
            uftp-1200) line=$(run_uftp uftp-1200 1200 -1) ;;
            uftp-1200-tuned) line=$(run_uftp uftp-1200-tuned 1200 2200000) ;;
            uftp-8192) line=$(run_uftp uftp-8192 8192 -1) ;;
        esac
        echo "run $run $line" | tee -a "$results"
    done
done
echo "medians over $runs runs:"
python3 - "$results" <<'EOF'
import sys, statistics, collections
rates, retx, cpu = (collections.defaultdict(list) for _ in range(3))
for line in open(sys.argv[1]):
    f = line.split()
    rates[f[2]].append(float(f[3])); retx[f[2]].append(float(f[6].rstrip('%'))); cpu[f[2]].append(float(f[10]))
for k in rates:
    print(f"  {k:16s} {statistics.median(rates[k]):8.1f} MiB/s  retransmitted {statistics.median(retx[k]):.3f}%  receiver CPU {statistics.median(cpu[k]):.2f} s/GiB")
EOF
