"""`lth` command line: thin parsing around the library, one-line errors, exit codes.

Exit status: 0 done, 1 the disk or file system refused a write (nothing earlier is lost),
2 bad input (config, paths, data, a damaged run), 3 training diverged (a non-finite loss or
weight), 128 + N stopped by signal N (130 SIGINT, 143 SIGTERM; resume with `lth resume DIR`).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import errno
import signal
import sys
import typing
from dataclasses import fields
from pathlib import Path

from lth import __version__, compare
from lth.cells import CompareSpec, grid, load_spec
from lth import config as cfgmod
from lth.config import ConfigError
from lth.data import DataError
from lth.report import ReportError, write_report
from lth.rundir import RunDir, RunDirError
from lth.show import rounds_table, side_by_side
from lth.study import resume_study, run_study
from lth.train import Diverged, Stopped


WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EPERM, errno.EROFS}


def dotted_keys(cls: type = cfgmod.Config, prefix: str = "") -> list[str]:
    """Every settable key, for `--help` and for suggesting the fix to a typo; table entries
    as `prune.rates.conv` etc. and `prune.layer_rates.NAME`."""
    keys, hints = [], typing.get_type_hints(cls)
    for f in fields(cls):
        key, hint = prefix + f.name, hints[f.name]
        if dataclasses.is_dataclass(hint):
            keys += dotted_keys(hint, key + ".")
        else:
            keys += {"prune.rates": [f"{key}.{t}" for t in cfgmod.LAYER_TYPES], "prune.layer_rates": [f"{key}.NAME"]}.get(key, [key])
    return keys


def is_settable(key: str) -> bool:
    return key in dotted_keys() or (key.startswith("prune.layer_rates.") and len(key) > len("prune.layer_rates."))


def _parse_overrides(tokens: list[str]) -> dict[str, str]:
    """`--train.epochs 3` / `--train.epochs=3` pairs → {'train.epochs': '3'}."""
    keys = dotted_keys()
    overrides: dict[str, str] = {}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--"):
            raise ConfigError(f"unexpected argument {token!r}; overrides look like --train.epochs 3")
        key, eq, value = token[2:].partition("=")
        if not is_settable(key):
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
    if getattr(args, "no_energy", False):
        overrides["energy.tracker"] = "off"
    return cfgmod.apply_overrides(base, overrides)


def _cmd_run(args: argparse.Namespace, extra: list[str]) -> int:
    config = build_config(args, extra)
    options = dict(out=args.out, data_dir=args.data_dir, resume=args.resume, force=args.force, progress=False if args.no_progress else None)
    if args.parallel > 1 and args.replicates == 1:
        raise ConfigError("--parallel K trains K seeds together: give --replicates K (or use lth compare --parallel K)")
    if args.replicates != 1:
        results = compare.run_replicates(config, args.replicates, parallel=args.parallel, **options)
        print(f"run directories: {', '.join(str(r.run_dir) for r in results)}")
        return 0
    result = run_study(config, **options)
    print(f"run directory: {result.run_dir}")
    if config.track.enabled:  # the trackers get the report's figures when the study ends
        from lth.track import log_report

        log_report([result.run_dir], write_report([result.run_dir]))
    return 0


def _cmd_resume(args: argparse.Namespace, extra: list[str]) -> int:
    overrides = _parse_overrides(extra)
    if args.train_lr is not None:
        overrides["train.lr"] = args.train_lr
    if set(overrides) - {"train.lr"}:
        raise ConfigError(f"lth resume can change only --train.lr (got --{sorted(set(overrides) - {'train.lr'})[0]}); "
                          "it continues the stored config, other changes need a new run")
    lr = float(cfgmod.apply_overrides(cfgmod.Config(), overrides).train.lr) if overrides else None
    result = resume_study(args.run_dir, data_dir=args.data_dir, progress=False if args.no_progress else None, device=args.device, lr=lr)
    print(f"run directory: {result.run_dir}")
    return 0


def _cmd_show(args: argparse.Namespace, extra: list[str]) -> int:
    paths = [Path(p) for p in args.run_dirs]
    if len(paths) == 1 and RunDir(paths[0]).read_rounds():
        print(rounds_table(paths[0]))
    else:
        print(side_by_side(paths))
    return 0


def _split(text: str | None) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()] if text else []


def _compare_spec(args: argparse.Namespace, extra: list[str]) -> CompareSpec:
    overrides = _parse_overrides(extra)
    if args.spec:
        spec = load_spec(args.spec)
    elif args.study:
        if args.study not in compare.COMPARISON_PRESETS:
            raise ConfigError(f"unknown comparison preset {args.study!r}; choose one of: {', '.join(compare.COMPARISON_PRESETS)}")
        spec = compare.COMPARISON_PRESETS[args.study]
    else:
        seeds = tuple(int(s) for s in _split(args.seeds)) if args.seeds else tuple(range(args.seed or 0, (args.seed or 0) + args.replicates))
        spec = CompareSpec(
            name=args.name or f"{args.preset}-comparison",
            base=args.preset,
            variants=grid(_split(args.criteria) or ["high-movement"], _split(args.rewinds) or ["init"], _split(args.models)),
            seeds=seeds,
        )
    if args.preset_given and (args.spec or args.study):
        spec = dataclasses.replace(spec, base=args.preset)
    if overrides:
        spec = dataclasses.replace(spec, overrides=tuple({**dict(spec.overrides), **overrides}.items()))
    if args.rounds is not None:
        spec = dataclasses.replace(spec, overrides=tuple({**dict(spec.overrides), "prune.rounds": str(args.rounds)}.items()))
    if args.no_energy:
        spec = dataclasses.replace(spec, overrides=tuple({**dict(spec.overrides), "energy.tracker": "off"}.items()))
    return spec


def _cmd_compare(args: argparse.Namespace, extra: list[str]) -> int:
    from lth.executors import executor_spec, split_executor_tokens

    executor_tokens, extra = split_executor_tokens(extra)
    spec = _compare_spec(args, extra)
    engine = executor_spec(compare.executor_table(args.spec) if args.spec else {}, args.executor, executor_tokens)
    out = Path(args.out) if args.out else Path("runs") / spec.name
    result = compare.run_comparison(spec, out, data_dir=args.data_dir, progress=False if args.no_progress else None, report=not args.no_report,
                                    parallel=args.parallel, engine=engine, retry_failed=args.retry_failed)
    busy = f", {len(result.busy)} left to another process" if result.busy else ""
    submitted = f", {len(result.submitted)} submitted to {engine.kind}" if result.submitted else ""
    print(f"study directory: {result.study_dir} ({len(result.ran)} cells run, {len(result.skipped)} already complete{busy}{submitted})")
    return 0


def _cmd_status(args: argparse.Namespace, extra: list[str]) -> int:
    from lth.status import format_status, study_status

    if extra:
        raise ConfigError(f"unexpected argument {extra[0]!r} for lth status")
    print(format_status(Path(args.study), study_status(Path(args.study))))
    return 0


def _cmd_verify(args: argparse.Namespace, extra: list[str]) -> int:
    from lth.verify import verify

    lines, whole = verify([Path(p) for p in args.paths])
    print("\n".join(lines))
    return 0 if whole else 1


def _cmd_report(args: argparse.Namespace, extra: list[str]) -> int:
    report_dir = write_report([Path(p) for p in args.paths], out=Path(args.out) if args.out else None, baseline=args.baseline)
    print(f"report: {report_dir / 'report.md'}")
    return 0


def _cmd_config(args: argparse.Namespace, extra: list[str]) -> int:
    print(cfgmod.to_toml(build_config(args, extra)), end="")
    return 0


def _cmd_stability(args: argparse.Namespace, extra: list[str]) -> int:
    from lth.stability import run_stability

    if extra:
        raise ConfigError(f"lth stability takes no config overrides (got {extra[0]!r}); it measures the run as it was trained")
    try:
        rounds, sweep = (None if t is None else [int(x) for x in _split(t)] for t in (args.rounds, args.rewind_sweep))
    except ValueError:
        raise ConfigError("--rounds and --rewind-sweep take comma-separated integers, e.g. 0,2 or 0,100,500,2000") from None
    run_stability(args.run, rounds, args.copies, args.points, sweep, data_dir=args.data_dir, device=args.device)
    print(f"results: {RunDir(Path(args.run)).stability}")
    return 0


def _cmd_export(args: argparse.Namespace, extra: list[str]) -> int:
    from lth.export import export_ticket

    if extra:
        raise ConfigError(f"unexpected argument {extra[0]!r} for lth export")
    counts = export_ticket(args.run, args.round, args.format, args.out, args.weights, args.force)
    kept, total = counts.pop("all")
    print("\n".join(f"{name}: {k:,} of {n:,} kept ({100 * k / n:.1f}%)" for name, (k, n) in counts.items()))
    print(f"wrote {args.out}: round {args.round}, {args.weights} weights, {kept:,} of {total:,} prunable weights kept ({100 * kept / total:.1f}%)")
    return 0


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="seed", help=f"starting config: {', '.join(cfgmod.PRESETS)} (default: seed)")
    p.add_argument("--config", metavar="FILE", help="TOML file overlaid on the preset")
    p.add_argument("--rounds", type=int, help="pruning rounds after round 0 (prune.rounds); 0 trains the dense network only")
    p.add_argument("--seed", type=int, help="the one seed θ0 and the data order derive from")
    p.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--no-energy", action="store_true", help="do not track energy/CO2 (energy.tracker = off)")


def make_parser() -> argparse.ArgumentParser:
    keys = " ".join(f"--{k}" for k in dotted_keys())
    parser = argparse.ArgumentParser(prog="lth", description="Lottery-ticket / high-movement pruning studies on CIFAR-10, CIFAR-100, MNIST and Fashion-MNIST.")
    parser.add_argument("--version", action="version", version=f"lth {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a study", epilog=f"Any config key can be overridden: {keys}")
    _add_config_args(run)
    run.add_argument("--out", metavar="DIR", help="run directory (default: runs/<preset>-<config hash>)")
    run.add_argument("--data-dir", metavar="DIR", help="the data folder holding the data set in its official layout (else $LTH_DATA_DIR, else a user cache dir; downloaded if missing)")
    mode = run.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue the run already in --out")
    mode.add_argument("--force", action="store_true", help="DESTRUCTIVE: delete the run already in --out and start over")
    run.add_argument("--replicates", type=int, default=1, metavar="K", help="K runs with seeds N..N+K-1, each in --out/seed-<s>/")
    run.add_argument("--parallel", type=int, default=1, metavar="K", help="with --replicates: train K seeds together on one device (default 1)")
    run.add_argument("--no-progress", action="store_true", help="no progress bars (summaries still print)")
    run.set_defaults(func=_cmd_run)

    resume = sub.add_parser("resume", help="continue an interrupted study from its last completed epoch")
    resume.add_argument("run_dir", metavar="DIR", help="the run directory to continue")
    resume.add_argument("--data-dir", metavar="DIR", help="the data folder (default: the folder recorded in the run's manifest)")
    resume.add_argument("--device", help="train on another device than recorded (cpu, cuda)")
    resume.add_argument("--train.lr", dest="train_lr", metavar="LR",
                        help="continue with this learning rate (after a divergence: the one change allowed, recorded in the manifest's history)")
    resume.add_argument("--no-progress", action="store_true", help="no progress bars (summaries still print)")
    resume.set_defaults(func=_cmd_resume)

    show = sub.add_parser("show", help="print a run's rounds table, or several runs side by side")
    show.add_argument("run_dirs", metavar="DIR", nargs="+", help="run directories, or a study directory")
    show.set_defaults(func=_cmd_show)

    cmp_ = sub.add_parser(
        "compare", help="run a comparison study (criteria × rewind points × seeds) and its report",
        epilog=f"Config overrides apply to every cell: {keys}",
    )
    what = cmp_.add_mutually_exclusive_group()
    what.add_argument("--spec", metavar="FILE", help="study TOML (name, base, seeds, variants or criteria/rewinds/models, overrides)")
    what.add_argument("--study", metavar="NAME", help="a comparison preset: seed-comparison")
    cmp_.add_argument("--preset", default="seed", help="base config of every cell (default: seed)")
    cmp_.add_argument("--criteria", help="comma-separated criteria (default: high-movement)")
    cmp_.add_argument("--rewinds", help="comma-separated rewind points (default: init)")
    cmp_.add_argument("--models", help="comma-separated models (default: the preset's)")
    cmp_.add_argument("--seeds", help="comma-separated seeds (default: --seed .. --seed + --replicates - 1)")
    cmp_.add_argument("--seed", type=int, default=0, help="first seed when --seeds is not given")
    cmp_.add_argument("--replicates", type=int, default=1, metavar="K", help="seeds --seed .. --seed + K - 1 when --seeds is not given")
    cmp_.add_argument("--rounds", type=int, help="prune.rounds for every cell")
    cmp_.add_argument("--name", help="study name (default: <preset>-comparison)")
    cmp_.add_argument("--out", metavar="DIR", help="study directory (default: runs/<name>)")
    cmp_.add_argument("--data-dir", metavar="DIR", help="the data folder holding the data set in its official layout (else $LTH_DATA_DIR, else a user cache dir; downloaded if missing)")
    cmp_.add_argument("--no-report", action="store_true", help="run the cells only")
    cmp_.add_argument("--no-energy", action="store_true", help="do not track energy/CO2 in any cell")
    cmp_.add_argument("--parallel", type=int, default=1, metavar="K", help="train up to K compatible cells together on one device (default 1)")
    cmp_.add_argument("--no-progress", action="store_true", help="no progress bars (summaries still print)")
    cmp_.add_argument("--executor", metavar="KIND",
                      help="where cells run: local (default, this process), slurm (submitit job arrays) or ray; "
                           "options as --executor.KEY VALUE (slurm: partition, gpus, cpus, mem, time, parallelism, any sbatch option; "
                           "ray: address, cpus, gpus, local_cpus)")
    cmp_.add_argument("--retry-failed", action="store_true", help="submit only the cells whose last job failed (see lth status)")
    cmp_.set_defaults(func=_cmd_compare)

    status = sub.add_parser("status", help="every cell of a comparison study: done, running (job id), failed (log, error) or pending")
    status.add_argument("study", metavar="STUDY_DIR")
    status.set_defaults(func=_cmd_status)

    report = sub.add_parser("report", help="figures and tables from run or study directories")
    report.add_argument("paths", metavar="DIR", nargs="+", help="run directories, or a study directory")
    report.add_argument("--out", metavar="DIR", help="report directory (default: DIR/report, or the common parent's)")
    report.add_argument("--baseline", metavar="GROUP", help="the group the others are paired with, as the report names it "
                        "(default: the high-movement group, the seed's criterion)")
    report.set_defaults(func=_cmd_report)

    check = sub.add_parser("verify", help="check that runs are whole: files, checksums, masks, counts (exit 1 if not)")
    check.add_argument("paths", metavar="DIR", nargs="+", help="run directories, or a study directory")
    check.set_defaults(func=_cmd_verify)

    stab = sub.add_parser("stability", help="linear mode connectivity: train copies of a round's ticket, measure the error barrier between them")
    stab.add_argument("run", metavar="RUN", help="a run directory; results go to RUN/stability.csv")
    stab.add_argument("--rounds", help="comma-separated rounds (default: every committed round)")
    stab.add_argument("--copies", type=int, default=2, metavar="K", help="copies per round, each with its own data order (default 2)")
    stab.add_argument("--points", type=int, default=30, metavar="N", help="points on the path between two copies, ends included (default 30)")
    stab.add_argument("--rewind-sweep", metavar="K,...", help="start from these iterations of round 0 instead of each round's rewind point")
    stab.add_argument("--data-dir", metavar="DIR", help="the data folder (default: the folder recorded in the run's manifest)")
    stab.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: the run's)")
    stab.set_defaults(func=_cmd_stability)

    export = sub.add_parser("export", help="write a round's ticket for plain PyTorch (torch.nn.utils.prune or a masked safetensors state dict)")
    export.add_argument("run", metavar="RUN", help="a run directory")
    export.add_argument("--round", type=int, required=True, metavar="R", help="the round whose ticket (mask and weights) is written")
    export.add_argument("--format", required=True, metavar="FORMAT", help="prune (torch.save, weight_orig/weight_mask) or state-dict (safetensors)")
    export.add_argument("--out", required=True, metavar="FILE", help="the file to write (kept if it exists, unless --force)")
    export.add_argument("--weights", default="best", metavar="W", help="init (the round's rewind point), best (default) or final")
    export.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    export.set_defaults(func=_cmd_export)

    conf = sub.add_parser("config", help="print the resolved config as TOML", epilog=f"Keys: {keys}")
    _add_config_args(conf)
    conf.set_defaults(func=_cmd_config)
    return parser


def _subparsers_action(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Each `lth` subcommand's parser, in the order `--help` lists them (for the generated reference)."""
    return dict(_subparsers_action(parser).choices)


def command_help(parser: argparse.ArgumentParser, name: str) -> str:
    """The one-line help of subcommand `name`, as `lth --help` shows it."""
    return next(a.help for a in _subparsers_action(parser)._choices_actions if a.dest == name)


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args, extra = parser.parse_known_args(argv)
    args.preset_given = "--preset" in (argv if argv is not None else sys.argv[1:])
    try:
        return args.func(args, extra)
    except (ConfigError, RunDirError, DataError, ReportError) as exc:
        print(f"lth: error: {exc}", file=sys.stderr)
        return 2
    except Diverged as exc:
        print(f"lth: error: training diverged: {exc}", file=sys.stderr)
        return 3
    except OSError as exc:  # disk full, permission denied, read-only: every earlier write was atomic
        what = f"{exc.filename}: " if exc.filename else ""
        fix = ("free space or fix permissions (or choose another --out), then continue: what was written before is intact"
               if exc.errno in WRITE_ERRNOS else "check the path and its permissions")
        print(f"lth: error: {what}{exc.strerror or exc}; {fix}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        where = getattr(args, "out", None) or getattr(args, "run_dir", None) or "DIR"
        again = f"lth resume {where}" if args.command in ("run", "resume") else f"the same lth {args.command} command"
        if isinstance(exc, Stopped) and exc.signum is not None:
            print(f"\nlth: stopped by {signal.Signals(exc.signum).name} at {exc}; the position is saved: continue with {again}", file=sys.stderr)
            return 128 + exc.signum
        print(f"\nlth: interrupted; the last saved position is kept: continue with {again}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
