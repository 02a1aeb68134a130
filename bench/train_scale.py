"""Part 3 — training scale: ``thrifty train`` wall time and peak memory at 10k, 100k and 1M outcome rows.

Inputs are built by resampling whole prompts of the real MMLU-Pro log
(``/work/shared/data/outcomes/mmlu-pro.parquet``: 12,032 prompts × 29 models,
347k rows, read in place): each drawn prompt keeps all of its model rows and
gets a new ``prompt_id`` (``<id>~<draw>``), so the sizes above 347k repeat
real prompts under new ids. Files go to ``bench/work/train/`` (git-ignored).

Each size runs ``thrifty train --logs FILE --prices prices.csv`` (see
``bench/hooks.py``) as a subprocess with its own THRIFTY_HOME / MLflow store
under bench/work, and records wall time and peak RSS: the kernel's
``ru_maxrss`` of the reaped process (``os.wait4``) and a 0.2 s psutil sample
of the whole process tree (the larger is reported). If ``thrifty train`` is not
importable, the row is an in-process ``Router.fit`` on the same matrix in a
subprocess, labelled ``fallback``.

Goal: 1M rows in under 5 minutes within the machine's 24 GiB.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench import hooks
from bench.common import DATA, PROJECT_PY, ROOT, WORK, CpuWindow, log, machine_info, md_table, write_json

SOURCE = DATA / "outcomes" / "mmlu-pro.parquet"
SIZES = {"10k": 10_000, "100k": 100_000, "1M": 1_000_000}
GOAL = {"rows": 1_000_000, "wall_s": 300.0, "rss_gib": 24.0}
TIMEOUT_S = {"10k": 300, "100k": 600, "1M": 900}


def build_input(label: str, target_rows: int, seed: int = 0) -> tuple[Path, int, int]:
    """Resample whole prompts until about ``target_rows`` rows; (file, rows, prompts)."""
    import numpy as np
    import pandas as pd

    out = WORK / "train" / f"mmlu-pro-{label}.parquet"
    if out.exists():
        meta = pd.read_parquet(out, columns=["prompt_id"])
        return out, len(meta), meta["prompt_id"].nunique()
    df = pd.read_parquet(SOURCE)
    if "response" in df:
        df = df.drop(columns=["response"])  # all null in this file
    groups = df.groupby("prompt_id", sort=True).indices  # prompt_id -> row positions
    pids = np.array(sorted(groups))
    sizes = np.array([len(groups[p]) for p in pids])
    rng = np.random.default_rng(seed)
    n_prompts = int(round(target_rows / sizes.mean()))
    draw = rng.choice(len(pids), size=n_prompts, replace=n_prompts > len(pids))
    positions = np.concatenate([groups[pids[i]] for i in draw])
    draw_of_row = np.repeat(np.arange(n_prompts), sizes[draw])
    sample = df.iloc[positions].reset_index(drop=True)
    sample["prompt_id"] = sample["prompt_id"].astype(str) + "~" + pd.Series(draw_of_row).astype(str)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    sample.to_parquet(tmp, compression="zstd", index=False)
    tmp.replace(out)
    return out, len(sample), n_prompts


def build_input_subprocess(label: str) -> tuple[Path, int, int]:
    """``build_input`` in a child process, so the orchestrator does not keep the frames' memory."""
    res = subprocess.run([str(PROJECT_PY), "-m", "bench.train_scale", "--build", label], cwd=ROOT, capture_output=True, text=True, timeout=600)
    if res.returncode != 0:
        raise RuntimeError(f"building the {label} input failed: {res.stderr[-2000:]}")
    path, rows, prompts = res.stdout.strip().splitlines()[-1].split("\t")
    return Path(path), int(rows), int(prompts)


class PeakSampler(threading.Thread):
    """Peak summed RSS of a process and its descendants, sampled every ``interval`` seconds."""

    def __init__(self, pid: int, interval: float = 0.2):
        super().__init__(daemon=True)
        self.pid, self.interval, self.peak = pid, interval, 0
        self.stop_event = threading.Event()

    def run(self):
        import psutil

        try:
            root = psutil.Process(self.pid)
        except psutil.Error:
            return
        while not self.stop_event.is_set():
            try:
                procs = [root] + root.children(recursive=True)
                rss = 0
                for p in procs:
                    try:
                        rss += p.memory_info().rss
                    except psutil.Error:
                        pass
                self.peak = max(self.peak, rss)
            except psutil.Error:
                return
            self.stop_event.wait(self.interval)


def run_measured(cmd: list[str], env: dict, timeout: float, log_path: Path) -> dict:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as fh:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)
        sampler = PeakSampler(proc.pid)
        sampler.start()
        deadline = t0 + timeout
        timed_out = False
        while True:
            pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                timed_out = True
                os.killpg(proc.pid, 9)  # our own session
                pid, status, ru = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05)
        wall = time.perf_counter() - t0
        sampler.stop_event.set()
        sampler.join(2)
    proc.returncode = os.waitstatus_to_exitcode(status)
    peak_kernel = ru.ru_maxrss * 1024  # KiB on Linux
    tail = log_path.read_text(errors="replace").splitlines()[-12:]
    return {
        "exit_code": proc.returncode,
        "timed_out": timed_out,
        "wall_s": wall,
        "cpu_s": ru.ru_utime + ru.ru_stime,
        "peak_rss_gib": max(peak_kernel, sampler.peak) / 2**30,
        "peak_rss_gib_kernel": peak_kernel / 2**30,
        "peak_rss_gib_sampled_tree": sampler.peak / 2**30,
        "log": str(log_path.relative_to(ROOT)),
        "log_tail": tail,
    }


def fallback_fit(path: Path) -> None:
    """In-process ``Router.fit`` on a long outcome file (used only while ``thrifty train`` is missing)."""
    from bench.common import outcome_matrix
    from models.catalog import load_catalog
    from router.router import Router

    prices = load_catalog([DATA / "prices.csv"]).prices()
    t0 = time.perf_counter()
    texts, success, tokens, models = outcome_matrix(path)
    t1 = time.perf_counter()
    Router().fit(texts, success, tokens, models, prices)
    print(f"fallback fit: {len(texts)} prompts x {len(models)} models; read {t1 - t0:.1f} s, fit {time.perf_counter() - t1:.1f} s", flush=True)


def run(quick: bool = False) -> dict:
    labels = ["10k", "100k"] if quick else list(SIZES)
    available, why = hooks.train_available()
    home = WORK / "train"
    shutil.rmtree(home / "train_home", ignore_errors=True)
    rows = []
    for label in labels:
        t0 = time.perf_counter()
        path, n_rows, n_prompts = build_input_subprocess(label)
        build_s = time.perf_counter() - t0
        if available:
            cmd, mode = hooks.train_command(path), "thrifty train"
            env = hooks.clean_env(hooks.train_env(home))
        else:
            cmd = [str(PROJECT_PY), "-m", "bench.train_scale", "--fallback-fit", str(path)]
            mode = f"fallback: in-process Router.fit (thrifty train not available: {why})"
            env = hooks.clean_env()
        log(f"train scale {label}: {n_rows} rows, {n_prompts} prompts — {mode}")
        window = CpuWindow()
        r = run_measured(cmd, env, TIMEOUT_S[label], home / "logs" / f"train-{label}.log")
        r["interference"] = window.close(0.0)  # the reaped training process counts as ours
        r.update(label=label, rows=n_rows, prompts=n_prompts, input=str(path.relative_to(ROOT)), input_mib=path.stat().st_size / 2**20,
                 build_input_s=build_s, mode=mode, command=" ".join(cmd))
        r["status"] = "ok" if r["exit_code"] == 0 else ("timeout" if r["timed_out"] else "failed")
        log(f"  {label}: {r['status']} in {r['wall_s']:.1f} s (CPU {r['cpu_s']:.0f} s), peak RSS {r['peak_rss_gib']:.2f} GiB; "
            f"other procs {r['interference']['other_cores']:.2f} cores")
        rows.append(r)
    goal = None
    big = next((r for r in rows if r["label"] == "1M"), None)
    if big:
        goal = {**GOAL, "wall_s_measured": big["wall_s"], "rss_gib_measured": big["peak_rss_gib"],
                "met": big["status"] == "ok" and big["wall_s"] < GOAL["wall_s"] and big["peak_rss_gib"] < GOAL["rss_gib"],
                "mode": big["mode"]}
    return {"part": "train_scale", "quick": quick, "source": str(SOURCE), "rows": rows, "goal": goal}


def table(result: dict) -> str:
    rows = [[r["label"], f"{r['rows']:,}", f"{r['prompts']:,}", r["status"], f"{r['wall_s']:.1f}", f"{r['cpu_s']:.0f}",
             f"{r['peak_rss_gib']:.2f}", f"{r.get('interference', {}).get('other_cores', float('nan')):.2f}", r["mode"][:60]]
            for r in result["rows"]]
    out = md_table(["size", "rows", "prompts", "status", "wall s", "CPU s", "peak RSS GiB", "other cores", "mode"], rows)
    g = result.get("goal")
    if g:
        out += (f"\n\nGoal: 1M rows in < {g['wall_s']:.0f} s within {g['rss_gib']:.0f} GiB — measured {g['wall_s_measured']:.0f} s, "
                f"{g['rss_gib_measured']:.2f} GiB: **{'met' if g['met'] else 'NOT met'}**.")
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="10k and 100k only")
    ap.add_argument("--fallback-fit", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--build", default=None, choices=list(SIZES), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.build:
        path, rows, prompts = build_input(args.build, SIZES[args.build])
        print(f"{path}\t{rows}\t{prompts}")
        return
    if args.fallback_fit:
        fallback_fit(Path(args.fallback_fit))
        return
    result = run(args.quick)
    result["machine"] = machine_info()
    write_json("train_scale", result)
    print(table(result))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
