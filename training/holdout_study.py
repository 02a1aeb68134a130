"""Does the served default keep its promise on traffic it was not tuned on? One command, one results file.

    python -m training.holdout_study --out runs/holdout

Runs ``thrifty replay``'s pipeline (training the default predictor only) on:

* every task of ``llmrouter-14task`` held out in turn (``--task-holdout``),
* every source (task) of ``routerbench-subset`` held out in turn,
* the 30% split by prompt (seed 0) of every shared dataset with at least
  three models (the runs the targets count), and of the two-model ones
  (reported beside them),

and reports for each run the served default's ``success_vs_best`` and
``cost_vs_best`` (its success and mean cost divided by the best single
model's on the held-out prompts), whether it kept the target, whether it was
certified, and the best sweep's gap closed. Writes ``results.json`` (every
number) and ``results.md`` (the table and the summary against the targets).
The data come from ``THRIFTY_DATA_DIR`` (``../shared/data``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

HOLDOUT_DATASETS = ("llmrouter-14task", "routerbench-subset")
SPLIT_DATASETS = ("zeroeval-gsm8k", "zeroeval-math-l5", "mmlu-pro", "routerbench-subset", "llmrouter-14task")
TWO_MODEL_DATASETS = ("routellm-gsm8k", "routellm-mmlu", "routellm-mtbench", "routerarena-subset")
SHARE_OF_RUNS = 0.9  # the share of runs in which the target must hold (the confidence)
MEAN_COST_GOAL = 0.80
ROUTERBENCH_SPLIT_COST_GOAL = 0.40


def runs(datasets_dir: Path, only: set[str] | None = None) -> list[tuple[str, str | None]]:
    """(dataset, held-out task or None for the 30% split) of the study."""
    import pandas as pd

    out = []
    for name in HOLDOUT_DATASETS:
        if only and name not in only:
            continue
        tasks = sorted(pd.read_parquet(datasets_dir / f"{name}.parquet", columns=["task"])["task"].astype(str).unique())
        out += [(name, task) for task in tasks]
    out += [(name, None) for name in SPLIT_DATASETS + TWO_MODEL_DATASETS if not only or name in only]
    return out


def one_run(frame, prices, dataset: str, task: str | None, *, predictor: str, target, confidence: float, n_knobs: int, seed: int) -> dict:
    from training.replay import run_replay

    start = time.perf_counter()
    result = run_replay(
        frame, prices, task_holdout=task, test_size=0.3, seed=seed, predictors=[predictor], n_knobs=n_knobs,
        target=target, confidence=confidence,
    )
    served = result.metrics[f"{predictor}/served"]
    sweeps = [k for k in result.learned_curves() if k.startswith(f"{predictor}/")]
    best_sweep = max(sweeps, key=lambda k: np.nan_to_num(result.metrics[k]["gap_closed"], nan=-np.inf)) if sweeps else None
    cert = result.meta["certificates"][predictor]
    floor = target.relative if target.relative is not None else None
    return {
        "dataset": dataset,
        "split": f"task {task}" if task else "30% of prompts",
        "task": task,
        "train_prompts": result.meta["train_prompts"],
        "test_prompts": result.meta["test_prompts"],
        "best_model": result.reference.best_model,
        "train_best_model": cert["best_model"],
        "certified": cert["certified"],
        "policy": cert["policy"],
        "knob": cert["knob"],
        "novelty_cut": cert["novelty_cut"],
        "success_vs_best": served["success_vs_best"],
        "cost_vs_best": served["cost_vs_best"],
        "target_met": bool(floor is None or served["success_vs_best"] >= floor - 1e-12),
        "expected_cost_vs_best": cert["cost_vs_best"],
        "best_sweep": best_sweep,
        "best_sweep_gap_closed": result.metrics[best_sweep]["gap_closed"] if best_sweep else None,
        "counted": dataset not in TWO_MODEL_DATASETS,
        "seconds": time.perf_counter() - start,
    }


def summarise(rows: list[dict], target) -> dict:
    """The targets, over the runs they count (two-model datasets are reported, not counted)."""
    rows = [r for r in rows if r.get("counted", True)]
    met = [r["target_met"] for r in rows]
    costs = [r["cost_vs_best"] for r in rows]
    rb = [r for r in rows if r["dataset"] == "routerbench-subset" and r["task"] is None]
    return {
        "runs": len(rows),
        "target": target.describe(),
        "target_met_share": float(np.mean(met)) if met else None,
        "target_met_goal": SHARE_OF_RUNS,
        "mean_cost_vs_best": float(np.mean(costs)) if costs else None,
        "mean_cost_goal": MEAN_COST_GOAL,
        "routerbench_split_cost_vs_best": rb[0]["cost_vs_best"] if rb else None,
        "routerbench_split_cost_goal": ROUTERBENCH_SPLIT_COST_GOAL,
        "certified_share": float(np.mean([r["certified"] for r in rows])) if rows else None,
    }


def markdown(rows: list[dict], summary: dict, command: str) -> str:
    lines = [
        f"Served default on held-out traffic (target: {summary['target']}); regenerate with `{command}`.",
        "",
        "| dataset | held out | train / test prompts | certified | served setting | success vs best | cost vs best | target kept | best sweep gap closed |",
        "|---|---|---:|---|---|---:|---:|---|---:|",
    ]
    for r in rows:
        setting = f"{r['policy']} {r['knob']:.3g}" + (f", novelty > {r['novelty_cut']:.2f} → best" if r["novelty_cut"] is not None else "")
        gap = "–" if r["best_sweep_gap_closed"] is None else f"{r['best_sweep_gap_closed']:+.3f}"
        lines.append(
            f"| {r['dataset']} | {r['split']}{'' if r.get('counted', True) else ' (2 models: not counted)'} | {r['train_prompts']} / {r['test_prompts']} | {'yes' if r['certified'] else 'no'} | {setting} "
            f"| {r['success_vs_best']:.3f} | {r['cost_vs_best']:.3f} | {'yes' if r['target_met'] else '**no**'} | {gap} |"
        )
    s = summary
    lines += [
        "",
        f"Over the {s['runs']} runs the targets count (two-model datasets excluded): "
        f"target kept in {s['target_met_share']:.0%} of them (goal ≥ {s['target_met_goal']:.0%}); "
        f"mean cost vs best {s['mean_cost_vs_best']:.3f} (goal ≤ {s['mean_cost_goal']:.2f}); "
        f"routerbench-subset 30% split cost vs best {s['routerbench_split_cost_vs_best']:.3f} (goal ≤ {s['routerbench_split_cost_goal']:.2f}); "
        f"certified in {s['certified_share']:.0%} of runs.",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    from models.catalog import load_catalog
    from models.settings import get_settings
    from training.logs import read_logs
    from training.outputs import write_json
    from training.served import DEFAULT_PREDICTOR
    from training.targets import Target

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--predictor", default=DEFAULT_PREDICTOR)
    ap.add_argument("--target-quality", default="98%")
    ap.add_argument("--confidence", type=float, default=0.9)
    ap.add_argument("--knobs", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--datasets", nargs="*", default=None, help="only these datasets")
    ap.add_argument("--resume", action="store_true", help="keep the runs already in OUT/results.json (same settings) and do the rest")
    args = ap.parse_args(argv)
    target = Target.parse(args.target_quality)
    data = get_settings().data_dir
    outcomes = data / "outcomes"
    prices = load_catalog([data / "prices.csv"]).prices()
    args.out.mkdir(parents=True, exist_ok=True)
    rows, frames = [], {}
    plan = runs(outcomes, set(args.datasets) if args.datasets else None)
    done = {}
    if args.resume and (args.out / "results.json").exists():
        done = {(r["dataset"], r["task"]): r for r in json.loads((args.out / "results.json").read_text())["rows"]}
    for k, (dataset, task) in enumerate(plan, 1):
        if (dataset, task) in done:
            rows.append({"counted": dataset not in TWO_MODEL_DATASETS, **done[(dataset, task)]})
            continue
        if dataset not in frames:
            frames = {dataset: read_logs([outcomes / f"{dataset}.parquet"], prices)}  # one dataset in memory at a time
        row = one_run(frames[dataset], prices, dataset, task, predictor=args.predictor, target=target, confidence=args.confidence,
                      n_knobs=args.knobs, seed=args.seed)
        rows.append(row)
        print(f"[{k}/{len(plan)}] {dataset} {row['split']}: success {row['success_vs_best']:.3f}x, cost {row['cost_vs_best']:.3f}x the best model; "
              f"certified {row['certified']} ({row['seconds']:.0f} s)", flush=True)
        write_json(args.out / "results.json", {"rows": rows, "summary": summarise(rows, target), "args": {k: str(v) for k, v in vars(args).items()}})
    summary = summarise(rows, target)
    command = "python -m training.holdout_study --out " + str(args.out) + ("" if args.predictor == DEFAULT_PREDICTOR else f" --predictor {args.predictor}")
    write_json(args.out / "results.json", {"rows": rows, "summary": summary, "args": {k: str(v) for k, v in vars(args).items()}})
    (args.out / "results.md").write_text(markdown(rows, summary, command))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
