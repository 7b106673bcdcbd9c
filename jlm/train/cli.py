"""`jlm train`: fine-tune a judge.

    jlm train --config configs/judgelm-7b.yaml --model path/to/vicuna-7b-v1.3 --train-data train.jsonl
    jlm train --preset smollm2-135m --train-data train.jsonl --max-steps 200
    jlm train --config run.yaml --resume            # continue from the latest checkpoint in out_dir
    jlm train --config run.yaml --coordinator host0:1234 --num-processes 2 --process-id $RANK   # each host

Every TrainConfig field is a flag (`global_batch` -> `--global-batch`); flags override the config
file, which overrides its preset. `--print-config` shows the resolved configuration and exits.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import types
import typing

from jlm import distributed
from jlm.train.config import PRESETS, TrainConfig, TrainConfigError, build_config, read_config_file


def _none_or(kind):
    def parse(text: str):
        return None if text.lower() in ("none", "null") else kind(text)
    parse.__name__ = kind.__name__
    return parse


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="jlm train", description="Fine-tune a judge (JudgeLM recipe by default).",
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--config", help="YAML or JSON file of TrainConfig fields (may name a `preset`)")
    ap.add_argument("--preset", choices=sorted(PRESETS), help="start from a preset recipe")
    ap.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    distributed.add_arguments(ap)
    group = ap.add_argument_group("TrainConfig fields (override the config file)")
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        hint = hints[f.name]
        union = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
        kind, optional = next(t for t in union if t is not type(None)), type(None) in union
        help_ = " ".join(filter(None, (f.metadata.get("help"), f"(default {f.default!r})")))
        kw = dict(dest=f.name, default=argparse.SUPPRESS, help=help_)
        if kind is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif typing.get_origin(kind) is tuple:
            group.add_argument(flag, nargs="+", metavar="VALUE", **kw)
        else:
            group.add_argument(flag, type=_none_or(kind) if optional else kind, metavar=kind.__name__.upper(), **kw)
    return ap


def resolve(argv: list[str]) -> tuple[TrainConfig, argparse.Namespace]:
    ap = build_parser()
    args = ap.parse_args(argv)
    own = ("config", "preset", "print_config", "distributed", "coordinator", "num_processes", "process_id",
           "join_timeout")
    overrides = {k: v for k, v in vars(args).items() if k not in own}
    file_values = read_config_file(args.config) if args.config else {}
    cfg = build_config(preset=args.preset, file_values=file_values, overrides=overrides,
                       source=args.config or "config")
    return cfg, args


def main(argv: list[str]) -> int:
    try:
        cfg, args = resolve(argv)
    except TrainConfigError as e:
        print(f"jlm train: error: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    if distributed.requested(args):  # before anything else touches the devices
        distributed.initialize(args)
    from jlm.train.trainer import train
    try:
        result = train(cfg)
    except TrainConfigError as e:
        print(f"jlm train: error: {e}", file=sys.stderr)
        return 2
    if result.export_dir is not None:
        print(f"[jlm train] exported {result.export_dir}")
    if result.adapter_dir is not None:
        print(f"[jlm train] LoRA adapter {result.adapter_dir} (load it with jlm.load_model / jlm.Judge.load)")
    if result.plot_path is not None:
        print(f"[jlm train] loss curve {result.plot_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
