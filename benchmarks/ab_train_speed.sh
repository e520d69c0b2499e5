#!/bin/bash
# Training speed of two installs of charrnn, A and B, alternating in one run on one machine so
# that both see the same load: the before/after check of a refactor. Prints the median steady
# chars/s of each run (the first quarter of the steps left out as warm-up).
#   benchmarks/ab_train_speed.sh OLD_VENV/bin/charrnn NEW_VENV/bin/charrnn CORPUS
# e.g. git worktree add /tmp/old 475a582 && (cd /tmp/old && make setup), then
#   benchmarks/ab_train_speed.sh /tmp/old/.venv/bin/charrnn .venv/bin/charrnn data/shakespeare.txt
set -euo pipefail
a=$1 b=$2 corpus=$(realpath "$3")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cfgs=("--cell rnn --hidden-size 256 --batch-size 32 --seq-length 100 --max-steps 120"
      "--cell gru --num-layers 2 --hidden-size 192 --batch-size 32 --seq-length 100 --max-steps 40"
      "--cell lstm --hidden-size 256 --batch-size 32 --seq-length 100 --max-steps 50")
for c in "${cfgs[@]}"; do
  for round in 1 2 3; do
    for side in A B; do
      bin=$a; [ "$side" = B ] && bin=$b
      out=$work/$side-$round
      rm -rf "$out"
      # shellcheck disable=SC2086
      (cd "$work" && CHARRNN_CACHE_DIR=$work/cache "$bin" train "$corpus" $c --eval-every 0 \
        --checkpoint-every 100000 --rng-seed 1 --set workers=1 --out "$out" -q >/dev/null)
      python3 - "$out/metrics.jsonl" "$side" "${c%%--max*}" <<'PY'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
cps = [r["chars_per_sec"] for r in rows if r.get("chars_per_sec")]
print(sys.argv[2], sys.argv[3], round(statistics.median(cps[len(cps) // 4 :])))
PY
    done
  done
done
