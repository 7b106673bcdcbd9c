"""`jlm` command line: one sub-command per concern, each implemented next to the code it drives.

    jlm [--debug] COMMAND [options]        jlm --version

An error in what the user gave (a file, a record, a flag, a checkpoint jlm cannot read) is one line,
`jlm COMMAND: error: ...`, and exit status 2; `--debug` shows the traceback instead. Ctrl-C stops
any command with status 130 (jlm.interrupt).
"""
from __future__ import annotations

import difflib
import importlib
import os
import sys

from jlm.malloc import cap_arenas

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


# Exceptions that mean the input is wrong, by module: only modules already imported can have raised
# theirs, so the dispatcher imports nothing heavy to recognise them.
USER_ERRORS = (("jlm.formats.records", "FormatError"), ("jlm.checkpoint.errors", "CheckpointError"),
               ("jlm.model.config", "ConfigError"), ("jlm.model.hf_layout", "WeightError"),
               ("jlm.train.config", "TrainConfigError"), ("jlm.tokenizer", "TokenizerError"),
               ("jlm.distributed", "DistributedError"))


def _is_user_error(e: BaseException) -> bool:
    if isinstance(e, (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)):
        return True
    return any(module in sys.modules and isinstance(e, getattr(sys.modules[module], name))
               for module, name in USER_ERRORS)


def _message(e: BaseException) -> str:
    if isinstance(e, OSError) and e.filename is not None:
        return f"{e.filename}: {e.strerror or e}"
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def _usage(file) -> None:
    print("usage: jlm [--debug] COMMAND [options]   (jlm COMMAND --help for its options; jlm --version)\n\n"
          "commands:", file=file)
    for name, (_, help_) in COMMANDS.items():
        print(f"  {name:<8} {help_}", file=file)


def main(argv: list[str] | None = None) -> int:
    cap_arenas()  # first, before XLA starts its threads (jlm.malloc says why)
    from_shell = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    if argv[:1] in (["--version"], ["-V"]):
        from jlm import __version__
        print(f"jlm {__version__}")
        return 0
    if not argv or argv[0] in ("-h", "--help"):
        _usage(sys.stdout)
        return 0 if argv else 2
    name = argv[0]
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, COMMANDS, n=1)
        print(f"jlm: unknown command {name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""), file=sys.stderr)
        _usage(sys.stderr)
        return 2
    module, func = COMMANDS[name][0].split(":")
    if name in ("judge", "grade", "chat", "train"):  # the commands that compile programs
        from jlm.compile_cache import enable
        enable()
    from jlm.interrupt import guard
    try:
        with guard():
            return int(getattr(importlib.import_module(module), func)(argv[1:]) or 0)
    except KeyboardInterrupt:
        print(f"\njlm {name}: interrupted", file=sys.stderr)
        if from_shell:  # leave at once: finalising the interpreter under live XLA threads can crash it
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(130)
        return 130
    except Exception as e:
        if debug or not _is_user_error(e):
            raise
        print(f"jlm {name}: error: {_message(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
