#!/usr/bin/env bash
# `mini-oss put` + `get` of one big file against `cp` of the same file, in the same run.
#
#   tools/bench/put_get_vs_cp.sh [SIZE_MIB=1024] [WORKDIR=./put-get-bench]
#
# Prints each time, the ratio (put+get)/cp, and the peak RSS (VmHWM) of the node's processes.
# cp is followed by sync so that both sides pay for getting the bytes to disk (the node fsyncs
# every object at commit). The CLI runs on the same cores as the node.
set -euo pipefail
size_mib=${1:-1024}
work=${2:-./put-get-bench}
mkdir -p "$work"
cd "$work"
rm -rf data out.bin cp.bin node.log
head -c $((size_mib * 1024 * 1024)) /dev/urandom > big.bin
sync
mini-oss serve --listen 127.0.0.1:0 --data-dir data --metrics-listen '' > node.log 2>&1 &
node=$!
trap 'kill -TERM $node 2>/dev/null || true' EXIT
until grep -q "started at" node.log; do sleep 0.1; done
port=$(grep -o 'started at :[0-9]*' node.log | cut -d: -f2)
t0=$(date +%s.%N); cp big.bin cp.bin; sync; t1=$(date +%s.%N)
mini-oss put big.bin --object-id big --addr 127.0.0.1:$port > /dev/null; t2=$(date +%s.%N)
mini-oss get big -o out.bin --addr 127.0.0.1:$port > /dev/null; t3=$(date +%s.%N)
cmp big.bin out.bin && echo "bytes equal"
for pid in $node $(pgrep -P $node); do
    echo "pid $pid $(tr '\0' ' ' < /proc/$pid/cmdline | cut -c1-60): $(grep VmHWM /proc/$pid/status)"
done
python3 -c "
cp, put, get = $t1 - $t0, $t2 - $t1, $t3 - $t2
print(f'{$size_mib} MiB: cp+sync {cp:.2f} s, put {put:.2f} s, get {get:.2f} s; '
      f'(put+get)/cp = {(put + get) / cp:.2f}, put/cp = {put / cp:.2f}, get/cp = {get / cp:.2f}')"
rm -f big.bin out.bin cp.bin
