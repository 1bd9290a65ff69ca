"""Sweeps: the job list of models × configs, which jobs share a capture, and the comparison report.

The Prefect side (child runs on the work pool, waiting, reading their metrics artifacts) is ``flows/sweep.py``; this
module has no Prefect in it, so the job plan and the report are testable on their own.
"""
from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from ..config import ConfigError, RunConfig, canonical_json, load_config
from ..sam2.variants import VARIANT_NAMES

__all__ = ["SweepJob", "plan_jobs", "shared_captures", "write_comparison"]


@dataclass(frozen=True)
class SweepJob:
    name: str                # output.job of the child run, e.g. hiera_small_w4a4
    model: str
    config: str              # YAML path, relative to the checkout
    overrides: tuple[str, ...]

    def parameters(self) -> dict:
        return {"config": self.config, "overrides": list(self.overrides)}


def _recipe(config: str) -> str:
    """The precision recipe of a config file name: ``hiera_tiny_w4a4.yaml`` → ``w4a4``."""
    stem = Path(config).stem
    for m in sorted(VARIANT_NAMES, key=len, reverse=True):
        prefix = f"hiera_{m.replace('-', '_')}_"
        if stem.startswith(prefix):
            return stem[len(prefix):]
    return stem


def plan_jobs(models: list[str], configs: list[str], overrides: list[str]) -> list[tuple[SweepJob, RunConfig]]:
    """Every (config, model) job with its validated config; ``models`` empty: each config's own model. Any bad job
    fails the whole plan with one line naming it, before a child run starts."""
    if not configs:
        raise ConfigError("a sweep needs at least one config; pass configs=[...] (YAML paths in the checkout)")
    bad = [m for m in models if m not in VARIANT_NAMES]
    if bad:
        raise ConfigError(f"unknown model {bad[0]!r} in the sweep; models are {', '.join(VARIANT_NAMES)}")
    jobs = []
    for config in configs:
        for model in models or [None]:
            base = load_config(config, list(overrides))  # raises ConfigError naming the file or key
            model = model or base.model.name
            name = f"hiera_{model.replace('-', '_')}_{_recipe(config)}"
            ovs = (*overrides, f"model.name={model}", f"output.job={name}")
            try:
                cfg = load_config(config, list(ovs))
            except ConfigError as e:
                raise ConfigError(f"sweep job {name}: {e}") from None
            jobs.append((SweepJob(name, model, config, ovs), cfg))
    names = [j.name for j, _ in jobs]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise ConfigError(f"two sweep jobs would both write {dup}; give each config a distinct file name")
    return jobs


def shared_captures(jobs: list[tuple[SweepJob, RunConfig]]) -> list[list[str]]:
    """The jobs grouped by the capture they need (same model, calibration set and capture settings): each group's
    capture is computed once, by whichever job reaches it first, and reused by the others through the store."""
    from .stages import STAGES
    groups: dict[str, list[str]] = defaultdict(list)
    for job, cfg in jobs:
        key = canonical_json({n: STAGES[n].config_slice(cfg) for n in
                              ("fetch_model", "build_calibration_set", "capture_activations")})
        groups[key].append(job.name)
    return list(groups.values())


def _plot(rows: list[dict], path: Path, random_weights: bool) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ok = [r for r in rows if r["status"] == "COMPLETED"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, col, label in ((axes[0], "sqnr_db", "embedding SQNR (dB)"), (axes[1], "miou", "mask mIoU vs float")):
        for r in ok:
            ax.scatter(r["size_mib"], r[col], s=40)
            ax.annotate(r["job"], (r["size_mib"], r[col]), fontsize=7, xytext=(4, 3), textcoords="offset points")
        ax.set_xlabel("quantized linears (MiB)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.margins(0.2)
    failed = [r["job"] for r in rows if r["status"] != "COMPLETED"]
    title = "size vs fidelity per sweep job" + (" — RANDOM WEIGHTS" if random_weights else "")
    if failed:
        title += f"\nfailed: {', '.join(failed)}"
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_comparison(rows: list[dict], out: Path) -> str:
    """Write comparison.json, comparison.png and comparison.md under ``out``; return the markdown. ``rows``: one per
    job with job, model, config, status, message, flow_run and, when completed, sqnr_db, miou, size_mib, random."""
    out.mkdir(parents=True, exist_ok=True)
    random_weights = any(r.get("random") for r in rows)
    (out / "comparison.json").write_text(json.dumps(rows, indent=1))
    _plot(rows, out / "comparison.png", random_weights)
    failed = [r for r in rows if r["status"] != "COMPLETED"]
    lines = [("RANDOM WEIGHTS — not a real SAM2 checkpoint; these numbers only compare the recipes."
              if random_weights else "Real checkpoints."),
             "", f"# SAM2 PTQ sweep: {len(rows) - len(failed)} of {len(rows)} jobs completed", "",
             "| job | model | config | status | quantized linears (MiB) | embedding SQNR (dB) | mask mIoU |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["status"] == "COMPLETED":
            lines.append(f"| {r['job']} | {r['model']} | {r['config']} | completed | {r['size_mib']:.2f} | "
                         f"{r['sqnr_db']:.2f} | {r['miou']:.4f} |")
        else:
            lines.append(f"| {r['job']} | {r['model']} | {r['config']} | **{r['status'].lower()}**: "
                         f"{r['message']} | | | |")
    if failed:
        lines += ["", "Failed jobs: " + ", ".join(f"{r['job']} (flow run {r['flow_run']})" for r in failed)]
    lines += ["", f"Plot: {out / 'comparison.png'}", ""]
    md = "\n".join(lines)
    (out / "comparison.md").write_text(md)
    return md
