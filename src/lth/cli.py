"""`lth` command line: thin parsing around the library, one-line errors, exit codes.

Exit status: 0 done, 2 bad input (config, paths, data), 130 interrupted (resume with
`lth resume DIR`).
"""

from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path
from typing import Any

from lth import config as cfgmod
from lth.config import ConfigError


def _parse_overrides(tokens: list[str]) -> dict[str, str]:
    """`--train.epochs 3` / `--train.epochs=3` pairs → {'train.epochs': '3'}."""
    keys = cfgmod.dotted_keys()
    overrides: dict[str, str] = {}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--"):
            raise ConfigError(f"unexpected argument {token!r}; overrides look like --train.epochs 3")
        key, eq, value = token[2:].partition("=")
        if not cfgmod.is_settable(key):
            close = difflib.get_close_matches(key, keys, n=1)
            hint = f"; did you mean --{close[0]}?" if close else f"; known keys: {', '.join(keys)}"
            raise ConfigError(f"unknown option --{key}{hint}")
        if not eq:
            if i + 1 >= len(tokens):
                raise ConfigError(f"option --{key} needs a value")
            i += 1
            value = tokens[i]
        overrides[key] = value
        i += 1
    return overrides


def build_config(args: argparse.Namespace, extra: list[str]) -> cfgmod.Config:
    base = cfgmod.preset(args.preset)
    if args.config:
        base = cfgmod.load(args.config, base)
    overrides = _parse_overrides(extra)
    for key, value in (("prune.rounds", args.rounds), ("seed", args.seed), ("device", args.device)):
        if value is not None:
            overrides[key] = str(value)
    return cfgmod.apply_overrides(base, overrides)


def _cmd_run(args: argparse.Namespace, extra: list[str]) -> int:
    from lth.experiment import run_replicates, run_study

    config = build_config(args, extra)
    options = dict(out=args.out, data_dir=args.data_dir, resume=args.resume, force=args.force, progress=False if args.no_progress else None)
    if args.replicates != 1:
        results = run_replicates(config, args.replicates, **options)
        print(f"run directories: {', '.join(str(r.run_dir) for r in results)}")
        return 0
    result = run_study(config, **options)
    print(f"run directory: {result.run_dir}")
    return 0


def _cmd_resume(args: argparse.Namespace, extra: list[str]) -> int:
    from lth.experiment import resume_study

    if extra:
        raise ConfigError(f"lth resume takes no config overrides (got {extra[0]!r}); it continues the stored config")
    result = resume_study(args.run_dir, data_dir=args.data_dir, progress=False if args.no_progress else None, device=args.device)
    print(f"run directory: {result.run_dir}")
    return 0


def _cmd_show(args: argparse.Namespace, extra: list[str]) -> int:
    from lth.show import rounds_table

    print(rounds_table(Path(args.run_dir)))
    return 0


def _cmd_config(args: argparse.Namespace, extra: list[str]) -> int:
    print(cfgmod.to_toml(build_config(args, extra)), end="")
    return 0


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="seed", help=f"starting config: {', '.join(cfgmod.PRESETS)} (default: seed)")
    p.add_argument("--config", metavar="FILE", help="TOML file overlaid on the preset")
    p.add_argument("--rounds", type=int, help="pruning rounds after round 0 (prune.rounds); 0 trains the dense network only")
    p.add_argument("--seed", type=int, help="the one seed θ0 and the data order derive from")
    p.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")


def make_parser() -> argparse.ArgumentParser:
    keys = " ".join(f"--{k}" for k in cfgmod.dotted_keys())
    parser = argparse.ArgumentParser(prog="lth", description="Lottery-ticket / high-movement pruning studies on CIFAR-10.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a study", epilog=f"Any config key can be overridden: {keys}")
    _add_config_args(run)
    run.add_argument("--out", metavar="DIR", help="run directory (default: runs/<preset>-<config hash>)")
    run.add_argument("--data-dir", metavar="DIR", help="CIFAR-10 location (else $LTH_DATA_DIR, else a user cache dir; downloaded if missing)")
    mode = run.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue the run already in --out")
    mode.add_argument("--force", action="store_true", help="DESTRUCTIVE: delete the run already in --out and start over")
    run.add_argument("--replicates", type=int, default=1, metavar="K", help="K runs with seeds N..N+K-1, each in --out/seed-<s>/")
    run.add_argument("--no-progress", action="store_true", help="no progress bars (summaries still print)")
    run.set_defaults(func=_cmd_run)

    resume = sub.add_parser("resume", help="continue an interrupted study from its last completed epoch")
    resume.add_argument("run_dir", metavar="DIR")
    resume.add_argument("--data-dir", metavar="DIR")
    resume.add_argument("--device", help="train on another device than recorded (cpu, cuda)")
    resume.add_argument("--no-progress", action="store_true")
    resume.set_defaults(func=_cmd_resume)

    show = sub.add_parser("show", help="print a run's rounds table")
    show.add_argument("run_dir", metavar="DIR")
    show.set_defaults(func=_cmd_show)

    conf = sub.add_parser("config", help="print the resolved config as TOML", epilog=f"Keys: {keys}")
    _add_config_args(conf)
    conf.set_defaults(func=_cmd_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    from lth.data import DataError
    from lth.experiment import RunDirError

    parser = make_parser()
    args, extra = parser.parse_known_args(argv)
    try:
        return args.func(args, extra)
    except (ConfigError, RunDirError, DataError) as exc:
        print(f"lth: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        where = getattr(args, "out", None) or getattr(args, "run_dir", None) or "DIR"
        print(f"\nlth: interrupted; progress is saved after every epoch: lth resume {where}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
