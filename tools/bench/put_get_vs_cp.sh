#!/usr/bin/env bash
# `mini-oss put` + `get` of one big file with --parallel 1, 2, 4 against `cp` of the same file,
# all in the same run.
#
#   tools/bench/put_get_vs_cp.sh [SIZE_MIB=1024] [WORKDIR=./put-get-bench] [PARALLEL="1 2 4"]
#
# Prints each time, the ratios put/cp and get/cp, and the peak RSS (VmHWM) of the node's
# processes. cp is followed by sync so that both sides pay for getting the bytes to disk (the
# node fsyncs every object at commit; get fsyncs its file). The CLI runs on the same cores as
# the node (2 workers): on a 2-core machine client and node share them.
set -euo pipefail
size_mib=${1:-1024}
work=${2:-./put-get-bench}
parallels=${3:-1 2 4}
mkdir -p "$work"
cd "$work"
rm -rf data out.bin cp.bin node.log cache
export XDG_CACHE_HOME=$PWD/cache
head -c $((size_mib * 1024 * 1024)) /dev/urandom > big.bin
sync
mini-oss serve --listen 127.0.0.1:0 --http-listen 127.0.0.1:0 --data-dir data --metrics-listen '' --workers 2 > node.log 2>&1 &
node=$!
trap 'kill -TERM $node 2>/dev/null || true' EXIT
until grep -q "started at" node.log; do sleep 0.1; done
port=$(grep -o 'started at :[0-9]*' node.log | cut -d: -f2)
now() { date +%s.%N; }
t0=$(now); cp big.bin cp.bin; sync; t1=$(now)
cp_s=$(python3 -c "print($t1 - $t0)")
rm -f cp.bin
echo "$size_mib MiB: cp+sync ${cp_s%????????} s"
for n in $parallels; do
    t0=$(now)
    mini-oss put big.bin --object-id big-$n --addr 127.0.0.1:$port --parallel $n --quiet
    t1=$(now)
    mini-oss get big-$n -o out.bin --addr 127.0.0.1:$port --parallel $n --quiet
    t2=$(now)
    cmp big.bin out.bin
    rm -f out.bin
    mini-oss rm big-$n --addr 127.0.0.1:$port
    python3 -c "
cp, put, get = $cp_s, $t1 - $t0, $t2 - $t1
print(f'  --parallel $n: put {put:.2f} s ({$size_mib / 1024 / put:.2f} GiB/s, put/cp {put / cp:.2f}), '
      f'get {get:.2f} s ({$size_mib / 1024 / get:.2f} GiB/s, get/cp {get / cp:.2f}); bytes equal')"
done
for pid in $node $(pgrep -P $node); do
    echo "pid $pid $(tr '\0' ' ' < /proc/$pid/cmdline | cut -c1-60): $(grep VmHWM /proc/$pid/status)"
done
rm -f big.bin
