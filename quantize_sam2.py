#!/usr/bin/env python
"""quantize_sam2.py — post-training quantization of SAM2's image encoder (see README.md).

    python quantize_sam2.py --config configs/hiera_tiny_w4a8.yaml [--quant.calib.path DIR] [--any.config.key VALUE]
    python quantize_sam2.py predict --run outputs/sam2/<job> --image IMG --point X,Y [--out mask.png]
    python quantize_sam2.py gc --config CFG [--older-than-hours 24] [--dry-run]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path

RANDOM_LINE = "RANDOM WEIGHTS — not a real SAM2 checkpoint (model.random_init: true)"

SPEC_FLAGS = [  # (flag, config key, help, default) — the spec's table
    ("--model.name", "model.name", "model variant: tiny, small, base-plus, large", "tiny"),
    ("--model.device", "model.device", "device: cuda or cpu", "cuda"),
    ("--quant.calib.path", "quant.calib.path", "folder of calibration images (recursive)", '""'),
    ("--quant.calib.num_samples", "quant.calib.num_samples", "number of calibration images", "128"),
    ("--output.root", "output.root", "output directory", "./outputs/sam2"),
    ("--seed", "seed", "random seed", "42"),
]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="quantize_sam2.py", formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False,
        description="Quantize SAM2's Hiera image encoder (W4A4 / W4A8 / W8A8, smoothing, Hadamard rotation, GPTQ, "
                    "SVDQuant low-rank branch) as a Prefect flow of stage-cached tasks.",
        epilog="Any config key can be overridden with a dotted flag, e.g. --quant.wgts.kernel_gptq.block_size 64 or "
               "--quant.smooth null. A rerun with the same config reuses every finished stage.\n"
               "Subcommand: quantize_sam2.py predict --run OUTPUT_DIR --image IMG --point X,Y [--out PNG]")
    p.add_argument("--config", default=None, help="YAML configuration file (default: none, built-in defaults)")
    for flag, _, h, d in SPEC_FLAGS:
        p.add_argument(flag, dest=flag[2:], default=None, help=f"{h} (default: {d})")
    p.add_argument("--save-model", action="store_true", default=None,
                   help="make cache/model.pt hold the whole Sam2Model (prompt encoder and mask decoder too), so the "
                        "output tree loads without the original checkpoint (default: false)")
    p.add_argument("--convert-nunchaku", action="store_true", default=None,
                   help="write nunchaku W4A4 safetensors (sint4 group 64 configs only) (default: false)")
    p.add_argument("--ablation", action="store_true",
                   help="evaluate RTN, GPTQ, +smooth, +rotation, +low-rank on the same images; write one table")
    p.add_argument("--accept-baseline", metavar="REASON", default=None,
                   help="make this run the regression guard's new baseline for its family whatever its mask mIoU "
                        "(an intended recipe change); the reason is recorded in the ledger, the log, the report "
                        "and stages.json (default: compare with the family's best run)")
    p.add_argument("-v", "--verbose", action="store_true", help="verbose logging (default: false)")
    return p


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """Known flags + any '--dotted.key value' / '--dotted.key=value' pairs as overrides."""
    args, rest = _parser().parse_known_args(argv)
    overrides = [f"{key}={getattr(args, flag[2:])}" for flag, key, _, _ in SPEC_FLAGS
                 if getattr(args, flag[2:]) is not None]
    if args.save_model:
        overrides.append("save_model=true")
    if args.convert_nunchaku:
        overrides.append("convert_nunchaku=true")
    return args, overrides + dotted_overrides(rest)


def dotted_overrides(rest: list[str]) -> list[str]:
    """'--dotted.key value' / '--dotted.key=value' → 'dotted.key=value'; anything else is an error (exit 2)."""
    overrides, i = [], 0
    while i < len(rest):
        tok = rest[i]
        if not tok.startswith("--") or tok == "--":
            raise SystemExit(f"error: unexpected argument {tok!r}; overrides look like --quant.calib.num_samples 64")
        if "=" in tok:
            overrides.append(tok[2:])
            i += 1
        elif i + 1 < len(rest) and not rest[i + 1].startswith("--"):
            overrides.append(f"{tok[2:]}={rest[i + 1]}")
            i += 2
        else:
            raise SystemExit(f"error: option {tok} needs a value, e.g. {tok} VALUE")
    return overrides


def _quiet_prefect(verbose: bool) -> None:
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")  # to the console with -v, else to the log file
    os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "WARNING")
    # the temporary server's first start on a machine creates and migrates its database: on 2 slow cores that takes
    # longer than Prefect's default 20 s, so give it the time it needs
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ["SAM2PTQ_PROGRESS_BAR"] = "1"


def _server_needed(home_note: str, fallback: Path) -> bool:
    """No Prefect API configured: this run needs the temporary local server. Says on the console what happens
    (``home_note``: where its home went when ~/.prefect cannot be written); an unwritable home is refused first."""
    from prefect.settings import get_current_settings

    from sam2ptq_core.pipeline.prefect_server import check_home
    s = get_current_settings()
    if s.api.url:
        print(f"Prefect API: {s.api.url}", file=sys.stderr)
        return False
    check_home(s.home, fallback)
    notes = [home_note] if home_note else []
    if not (Path(s.home) / "prefect.db").exists():
        notes.append("first start on this machine: creating its database, this can take a minute")
    print("starting Prefect's temporary local server" + (f" ({'; '.join(notes)})" if notes else "") + " …",
          file=sys.stderr, flush=True)
    return True


class RunLogFile(logging.FileHandler):
    """The run's log file. When it cannot be written (its disk is full, it went read-only) it closes, says so once
    on the console and drops later records: the stdlib's default would print "--- Logging error ---" and the
    traceback being handled (torch's ``enforce fail`` included) on the console for every record."""

    def __init__(self, path: Path):
        super().__init__(path)
        self.failure = ""  # why the file stopped being written; "" while it works

    def emit(self, record: logging.LogRecord) -> None:
        if not self.failure:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        err = sys.exc_info()[1]
        if not isinstance(err, OSError):
            return super().handleError(record)  # a formatting bug in a log call, not the file
        self.failure = err.strerror or str(err)
        with contextlib.suppress(OSError):
            self.close()
        from tqdm import tqdm  # between the progress bars, not through them
        tqdm.write(f"warning: cannot write the log file {self.baseFilename} ({self.failure}); the rest of this "
                   f"run's log is dropped (rerun with -v to see it on the console)", file=sys.stderr)


def _log_to_file(cfg) -> RunLogFile:
    """Without -v every log line (Prefect's and ours, warnings included) goes to a file under cache.root/logs
    (cache.local/logs with a URL root); the console keeps the progress bars, the summary or the one error line."""
    from sam2ptq_core.pipeline.stages import local_dir
    logs = local_dir(cfg) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    path = logs / f"{cfg.job_name()}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    handler = RunLogFile(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    loggers = [logging.getLogger()] + [lg for lg in logging.root.manager.loggerDict.values()
                                       if isinstance(lg, logging.Logger)]
    for lg in loggers:
        for h in list(lg.handlers):
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
                lg.removeHandler(h)
                lg.addHandler(handler)
    logging.getLogger().addHandler(handler)
    for name in ("prefect", "sam2ptq", "sam2ptq_core"):
        logging.getLogger(name).setLevel(logging.INFO)
    logging.captureWarnings(True)
    return handler


def _where(log_file: RunLogFile | None) -> str:
    """Where the error line sends the reader: the log file, or what became of it."""
    if log_file is None:
        return ""
    if log_file.failure:
        return f" (log file {log_file.baseFilename} incomplete: {log_file.failure})"
    return f" (full log: {log_file.baseFilename})"


def _summary(out: Path, wall: float) -> str:
    """One line per stage (reused/built, seconds), the headline metrics, the output directory and the wall time."""
    stages = json.loads((out / "stages.json").read_text())
    m = json.loads((out / "metrics.json").read_text())
    lines = [RANDOM_LINE] if m.get("random_weights") else []
    lines += [f"  {name:<22} {'reused' if s['reused'] else 'built':<6} {s.get('seconds', 0):7.1f} s"
              for name, s in stages.items()]
    if stages["export"].get("regression_guard"):  # a new or an accepted baseline
        lines.append(f"regression guard: {stages['export']['regression_guard']}")
    mk = m["masks"]
    lines.append(f"embedding SQNR {m['encoder']['sqnr_db']['embedding']:.2f} dB, mask mIoU vs float "
                 f"{mk['miou_vs_fp']:.4f} ({100 * mk['frac_iou_below_0_9']:.1f} % of {mk['num_prompts']} prompts "
                 f"below IoU 0.9)")
    if "runtime" in m:  # the real-kernel encoder (ONNX on a graph runtime)
        r = m["runtime"]
        lines.append(f"real kernels ({r['runtime']}, ONNX int8): encoder {r['speedup_vs_float_runtime']:.2f}× as fast "
                     f"as the float encoder on {r['runtime']} ({r['speedup_vs_torch_fp32']:.2f}× torch fp32), "
                     "embedding SQNR "
                     f"{r['encoder']['sqnr_db']['embedding']:.2f} dB, mask mIoU vs float "
                     f"{r['masks']['miou_vs_fp']:.4f}")
    lines += [f"output: {out}", f"wall time: {wall:.1f} s"]
    return "\n".join(lines)


def _gc(argv: list[str]) -> int:
    """``quantize_sam2.py gc [--config CFG] [--older-than-hours H] [--dry-run] [--cache.root …]``: remove leftovers
    of interrupted work from the stage store, this machine's cache.local and the Prefect server (never a stage)."""
    p = argparse.ArgumentParser(prog="quantize_sam2.py gc", description=_gc.__doc__.split(": ", 1)[1])
    p.add_argument("--config", default=None, help="YAML config whose cache.root / cache.local to clean")
    p.add_argument("--older-than-hours", type=float, default=24.0,
                   help="in an object store, only writer prefixes whose newest object is older than this (a writer "
                        "on another machine may still be uploading; default 24)")
    p.add_argument("--dry-run", action="store_true", help="list what would be removed, remove nothing")
    a, overrides = p.parse_known_args(argv)
    from sam2ptq_core.config import ConfigError, load_config
    from sam2ptq_core.pipeline.gc import collect_garbage
    try:
        cfg = load_config(a.config, dotted_overrides(overrides))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    got = collect_garbage(cfg, a.older_than_hours * 3600, a.dry_run)
    verb = "would remove" if a.dry_run else "removed"
    for where, items in got.items():
        for it in items:
            print(f"{verb} ({where}) {it}")
    print(f"gc: {verb} {sum(map(len, got.values()))} leftover(s) under {cfg.cache.root}")
    return 0


def main(argv: list[str] | None = None) -> int:
    t0 = time.time()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "predict":
        from sam2ptq_core.export.predict import main as predict_main
        return predict_main(argv[1:])
    if argv and argv[0] == "gc":
        return _gc(argv[1:])
    args, overrides = parse(argv)
    if args.accept_baseline is not None and (args.ablation or not args.accept_baseline.strip()):
        print("error: --accept-baseline takes a reason and applies to one quantization run, not --ablation "
              "(e.g. --accept-baseline 'smoothing off, intended')", file=sys.stderr)
        return 2
    _quiet_prefect(args.verbose)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    from sam2ptq_core.config import ConfigError, load_config
    from sam2ptq_core.export.nunchaku_support import NunchakuUnsupported
    from sam2ptq_core.pipeline.preflight import preflight
    from sam2ptq_core.pipeline.stages import StageError
    from sam2ptq_core.sam2.images import DataError
    from sam2ptq_core.sam2.variants import ModelUnavailable
    try:  # validate before Prefect starts: bad input fails in a second, with one line
        cfg = load_config(args.config, overrides)
        preflight(cfg)
    except (ConfigError, DataError, ModelUnavailable, NunchakuUnsupported, StageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from sam2ptq_core.pipeline.prefect_server import choose_home
    from sam2ptq_core.pipeline.stages import local_dir
    fallback_home = local_dir(cfg) / "prefect-home"
    home_note = choose_home(fallback_home)  # before Prefect is imported: it reads PREFECT_HOME once
    from sam2ptq_core.pipeline.prefect_server import HomeNotWritable, ServerDidNotStart, launch, temporary_server
    with warnings.catch_warnings():  # an unwritable home is refused below when a server needs it, in one line
        warnings.filterwarnings("ignore", "Failed to create the Prefect home directory")
        try:
            server = _server_needed(home_note, fallback_home)
        except HomeNotWritable as e:  # bad environment, said before anything starts or is written
            print(f"error: {e}", file=sys.stderr)
            return 2
        launched = launch() if server else None  # it boots while this process imports the flow
        from flows.ablation import run_ablation
        from flows.ptq import sam2_ptq
    log_file = None if args.verbose else _log_to_file(cfg)
    try:
        with contextlib.ExitStack() as stack:
            if server:
                timeout = int(os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"])
                stack.enter_context(temporary_server(timeout, launched))
            if args.ablation:
                out = run_ablation(cfg.model_dump(mode="json"), [])
            else:
                out = sam2_ptq(cfg.model_dump(mode="json"), [], (args.accept_baseline or "").strip())
    except (StageError, ServerDidNotStart) as e:
        print(f"error: {e}{_where(log_file)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: finished stages are kept in the cache; rerun the same command to resume", file=sys.stderr)
        return 130
    if args.ablation:
        if cfg.model.random_init:
            print(RANDOM_LINE)
        print(out)
    else:
        print(_summary(Path(out), time.time() - t0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
