"""`jlm` command line: one sub-command per concern, each implemented next to the code it drives."""
from __future__ import annotations

import importlib
import sys

# sub-command -> "module:function"; each function takes argv (list[str]) and returns an exit code.
COMMANDS = {
    "convert": ("jlm.checkpoint.convert:main", "convert a checkpoint (HF dir, .bin, .safetensors, .gguf) to HF safetensors"),
    "judge": ("jlm.infer.cli:judge_main", "judge answer pairs in a JSONL file"),
    "grade": ("jlm.infer.cli:grade_main", "grade single answers 1-10"),
    "chat": ("jlm.infer.cli:chat_main", "chat about a judgement"),
    "eval": ("jlm.metrics.cli:main", "agreement / precision / recall / F1 / consistency / bias"),
    "train": ("jlm.train.cli:main", "fine-tune a judge"),
    "data": ("jlm.data.build:data_main", "build JudgeLM-format train / validation files from data/"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: jlm COMMAND [options]\n\ncommands:")
        for name, (_, help_) in COMMANDS.items():
            print(f"  {name:<8} {help_}")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    target, _ = COMMANDS[argv[0]]
    module, func = target.split(":")
    return int(getattr(importlib.import_module(module), func)(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
