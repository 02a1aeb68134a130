"""The holdout study's plan, summary and table (the runs themselves are replays, tested in test_replay)."""

from __future__ import annotations

from training.holdout_study import markdown, runs, summarise
from training.targets import Target


def _row(dataset, task, success, cost, counted=True):
    return {"dataset": dataset, "task": task, "split": f"task {task}" if task else "30% of prompts", "train_prompts": 10, "test_prompts": 5,
            "certified": True, "policy": "tradeoff", "knob": 1.0, "novelty_cut": None, "success_vs_best": success, "cost_vs_best": cost,
            "target_met": success >= 0.98, "best_sweep_gap_closed": 0.1, "counted": counted}


def test_the_plan_holds_out_every_task_and_splits_every_dataset(data_dir):
    plan = runs(data_dir / "outcomes")
    assert sum(d == "llmrouter-14task" and t is not None for d, t in plan) == 14
    assert sum(d == "routerbench-subset" and t is not None for d, t in plan) == 3
    assert {d for d, t in plan if t is None} >= {"zeroeval-gsm8k", "zeroeval-math-l5", "mmlu-pro", "routerbench-subset", "llmrouter-14task", "routellm-mmlu"}


def test_summary_counts_the_runs_the_targets_count_and_the_table_says_so():
    rows = [_row("routerbench-subset", None, 0.99, 0.3), _row("llmrouter-14task", "gsm8k", 0.95, 1.0), _row("routellm-mmlu", None, 0.5, 0.1, counted=False)]
    summary = summarise(rows, Target(relative=0.98))
    assert summary["runs"] == 2 and summary["target_met_share"] == 0.5 and summary["mean_cost_vs_best"] == 0.65
    assert summary["routerbench_split_cost_vs_best"] == 0.3
    table = markdown(rows, summary, "python -m training.holdout_study --out x")
    assert "| routellm-mmlu | 30% of prompts (2 models: not counted) |" in table and "**no**" in table
    assert "target kept in 50% of them (goal ≥ 90%)" in table and "python -m training.holdout_study --out x" in table
