"""The registered router's MLflow ``predict``: one batched call vs routing prompt by prompt.

Fits a LightGBM router on real logs (zeroeval-gsm8k, 8 models spread over the
price range), registers it in a temporary THRIFTY_HOME, loads it back with
``mlflow.pyfunc.load_model`` and times, on 500 logged prompts (median of 5
runs after a warm-up):

* ``pyfunc_predict_s``  ``model.predict(frame)``: one ``Router.score`` call, then a decision per row;
* ``score_s``           that one ``Router.score`` call alone;
* ``route_loop_s``      ``Router.route`` prompt by prompt (what ``predict`` did before batching).

Goal: predict within 1.5x of one batched score call. Run::

    .venv/bin/python -m bench.pyfunc_predict      # writes bench/results/pyfunc_predict.json
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from bench.common import DATA, ROOT, log, machine_info, write_json  # noqa: E402

LOGS = DATA / "outcomes" / "zeroeval-gsm8k.parquet"
N_PROMPTS, N_MODELS, REPEATS = 500, 8, 5
GOAL_RATIO = 1.5


def _median_s(fn, repeats: int = REPEATS) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run() -> dict:
    import mlflow
    import pandas as pd

    from bench.common import models_spread_by_price, outcome_matrix
    from models.catalog import load_catalog
    from models.settings import get_settings
    from router.predictors import LightGBMSuccess
    from router.router import Router
    from training.tracking import configure, register_router, start_run

    sys.path.insert(0, str(ROOT))
    prices = load_catalog([DATA / "prices.csv"]).prices()
    texts, success, tokens, models = outcome_matrix(LOGS)
    chosen = models_spread_by_price(models, prices, N_MODELS)
    cols = [models.index(m) for m in chosen]
    router = Router(success=LightGBMSuccess(n_jobs=1)).fit(texts, success[:, cols], tokens[:, cols], chosen, prices)
    prompts = texts[:N_PROMPTS]
    with tempfile.TemporaryDirectory() as home:
        os.environ["THRIFTY_HOME"] = home
        get_settings.cache_clear()
        configure()
        with start_run("bench-pyfunc"):
            register_router(router, "thrifty")
        model = mlflow.pyfunc.load_model("models:/thrifty@champion")
        loaded = model.unwrap_python_model().router
        frame = pd.DataFrame({"prompt": prompts})
        result = {
            "pyfunc_predict_s": _median_s(lambda: model.predict(frame)),
            "score_s": _median_s(lambda: loaded.score(prompts, loaded.prices_)),
            "route_loop_s": _median_s(lambda: [loaded.route(t, loaded.prices_) for t in prompts], repeats=3),
        }
    result["predict_over_score"] = result["pyfunc_predict_s"] / result["score_s"]
    result["loop_over_predict"] = result["route_loop_s"] / result["pyfunc_predict_s"]
    result["goal"] = {"predict_over_score_at_most": GOAL_RATIO, "met": result["predict_over_score"] <= GOAL_RATIO}
    log(f"pyfunc predict {N_PROMPTS} prompts: {result['pyfunc_predict_s']:.3f} s; one score call {result['score_s']:.3f} s "
        f"(x{result['predict_over_score']:.2f}); prompt by prompt {result['route_loop_s']:.3f} s")
    return {"part": "pyfunc_predict", "data": str(LOGS), "prompts": N_PROMPTS, "models": chosen, "repeats": REPEATS,
            "machine": machine_info(), **result}


if __name__ == "__main__":
    path = write_json("pyfunc_predict", run())
    print(path)
