"""Small synthetic outcome logs whose right answer is known.

Three models: ``small`` (cheap, solves easy prompts only), ``medium`` (solves
easy and arithmetic prompts), ``large`` (expensive, solves everything). Easy
prompts are greetings and trivia; arithmetic prompts contain numbers; hard
prompts ask for proofs. A good router sends each kind to the cheapest model
that solves it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

PRICES = {"small": (0.1, 0.4), "medium": (1.0, 4.0), "large": (10.0, 40.0)}
OUT_TOKENS = {"small": 20, "medium": 60, "large": 200}

_EASY = ["What is the capital of {c}?", "Say hello to {c} politely.", "Name a famous dish from {c}."]
_MATH = ["Compute {a} * {b} + {a} and give the number.", "What is {a} plus {b} times {b}?"]
_HARD = ["Prove that there are infinitely many primes of the form {a}k+1 using {c} notation.", "Prove rigorously the theorem about {c} manifolds of dimension {a}."]
_COUNTRIES = ["France", "Peru", "Japan", "Kenya", "Chile", "Norway", "Egypt", "India", "Canada", "Italy", "Spain", "Brazil"]


def synthetic_logs(n_prompts: int = 240, seed: int = 0, dataset: str = "synthetic") -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_prompts):
        kind = ("easy", "math", "hard")[i % 3]
        template = rng.choice({"easy": _EASY, "math": _MATH, "hard": _HARD}[kind])
        text = template.format(c=rng.choice(_COUNTRIES), a=int(rng.integers(2, 99)), b=int(rng.integers(2, 99))) + f" (case {i})"
        solves = {"easy": {"small", "medium", "large"}, "math": {"medium", "large"}, "hard": {"large"}}[kind]
        for model, (pin, pout) in PRICES.items():
            noise_flip = rng.random() < 0.05  # outcomes are never perfectly predictable
            success = float((model in solves) != noise_flip)
            tin = len(text.split()) * 2
            tout = int(OUT_TOKENS[model] * (1 + (kind == "hard")) * rng.uniform(0.8, 1.2))
            rows.append(
                {
                    "dataset": dataset,
                    "task": kind,
                    "prompt_id": f"p{i}",
                    "prompt": text,
                    "model": model,
                    "success": success,
                    "score_raw": None,
                    "input_tokens": tin,
                    "output_tokens": tout,
                    "cost_usd": (tin * pin + tout * pout) / 1e6,
                    "cost_source": "priced",
                    "answer": None,
                    "response": None,
                    "latency_s": None,
                }
            )
    return pd.DataFrame(rows)


def prices_csv(path) -> str:
    lines = ["model,provider,input_usd_per_mtok,output_usd_per_mtok,note"]
    lines += [f"{m},together,{pin},{pout},synthetic" for m, (pin, pout) in PRICES.items()]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def price_table():
    """``PRICES`` as the price table routers take."""
    from models.prices import Price, PriceTable

    return PriceTable({m: Price(*p) for m, p in PRICES.items()})


def synthetic_router(kind: str, matrix, *, n_estimators: int):
    """A small router fitted on ``matrix`` (an OutcomeMatrix of synthetic logs): ``kind`` logistic or lightgbm, threshold 0.6."""
    from router import LightGBMSuccess, LogisticSuccess, Router, TextFeaturizer, Threshold

    success = LogisticSuccess() if kind == "logistic" else LightGBMSuccess(min_child_samples=5, n_estimators=n_estimators)
    router = Router(featurizer=TextFeaturizer(n_components=16), success=success, policy=Threshold(0.6))
    return router.fit(matrix.texts, matrix.success, matrix.output_tokens, matrix.models, price_table())
