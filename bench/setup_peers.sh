#!/usr/bin/env bash
# Create bench/.venv: a benchmark-only environment for the peer gateways
# (LiteLLM proxy, RouteLLM's OpenAI-compatible server). They never enter the
# project's own dependencies or its .venv.
#
# Idempotent: a venv whose packages already match the pins is left alone.
#
#   bash bench/setup_peers.sh            # create / complete bench/.venv
#   FORCE=1 bash bench/setup_peers.sh    # reinstall the pinned packages
#
# Pins:
#   torch==2.13.0   first, so that routellm's torch requirement is met by the
#                   CPU wheel this machine holds locally (/opt/wheels, allowed
#                   by /etc/xdg/pip/constraints.txt) and not by a multi-GB CUDA
#                   build from PyPI.
#   litellm==1.82.6 pinned on purpose: litellm 1.82.7/1.82.8 (March 2026) and
#                   later 1.107.0 were published by an attacker with a
#                   credential stealer. 1.82.6 is the last release widely
#                   vetted as clean; override with LITELLM_VERSION=... only
#                   after checking the release.
#   routellm==0.2.0 with the `serve` extra (fastapi, uvicorn, shortuuid) that
#                   routellm.openai_server imports.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${BENCH_VENV:-$HERE/.venv}"
PYTHON="${BENCH_BASE_PYTHON:-python3.11}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
LITELLM_VERSION="${LITELLM_VERSION:-1.82.6}"
ROUTELLM_VERSION="${ROUTELLM_VERSION:-0.2.0}"
# litellm[proxy] 1.82.6 asks for litellm-proxy-extras>=0.4.60,<0.5; take the oldest
# allowed (it predates 1.82.6; the proxy imports it only when a database is configured)
PROXY_EXTRAS_VERSION="${PROXY_EXTRAS_VERSION:-0.4.60}"

command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3

log() { printf '[setup_peers] %s\n' "$*" >&2; }

if [[ ! -x "$VENV/bin/python" ]]; then
  log "creating $VENV with $($PYTHON --version 2>&1)"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip install --quiet --disable-pip-version-check)
# pip here warns once per package about this machine's partial local indexes; keep the rest of stderr
pip_install() { "${PIP[@]}" "$@" 2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2); }

have() {  # have DIST VERSION-PREFIX: installed with that version?
  "$PY" - "$1" "$2" <<'EOF' 2>/dev/null
import sys
from importlib.metadata import version
sys.exit(0 if version(sys.argv[1]).startswith(sys.argv[2]) else 1)
EOF
}

# 1. torch, CPU build, before anything that depends on it.
if [[ -n "${FORCE:-}" ]] || ! have torch "$TORCH_VERSION"; then
  log "installing torch==$TORCH_VERSION (CPU wheel from the local find-links)"
  pip_install "torch==$TORCH_VERSION"
fi
TV="$("$PY" -c 'import importlib.metadata as m; print(m.version("torch"))')"
if [[ "$TV" != *"+cpu"* ]]; then
  log "WARNING: torch $TV is not the +cpu build; check /opt/wheels and /etc/xdg/pip/constraints.txt"
fi

# 2. the peers, in one resolve so that routellm takes the pinned litellm.
if [[ -n "${FORCE:-}" ]] || ! have litellm "$LITELLM_VERSION" || ! have routellm "$ROUTELLM_VERSION" \
   || ! have litellm-proxy-extras "$PROXY_EXTRAS_VERSION" || ! have shortuuid "" || ! have backoff ""; then
  log "installing routellm[serve]==$ROUTELLM_VERSION and litellm[proxy]==$LITELLM_VERSION"
  pip_install "torch==$TORCH_VERSION" "routellm[serve]==$ROUTELLM_VERSION" "litellm[proxy]==$LITELLM_VERSION" \
    "litellm-proxy-extras==$PROXY_EXTRAS_VERSION" aiohttp uvloop httptools psutil
fi

# 2b. py-spy, for bench/profile_server.py (a sampling profiler; optional)
if ! have py-spy ""; then
  pip_install py-spy || log "py-spy not installed: bench/profile_server.py will not run"
fi

# 3. guard against the known malicious payload (a .pth that runs at every start-up).
SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
if ls "$SITE"/litellm_init.pth >/dev/null 2>&1; then
  log "ERROR: $SITE/litellm_init.pth exists (known malicious litellm payload); delete $VENV"
  exit 1
fi

# 4. smoke: both servers' modules import without reaching the network.
export LITELLM_LOCAL_MODEL_COST_MAP=True HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 \
       OPENAI_API_KEY="${OPENAI_API_KEY:-sk-bench}" TOKENIZERS_PARALLELISM=false
"$PY" - <<'EOF'
import importlib.metadata as m
import litellm  # noqa: F401  (cost map from the local copy)
import routellm.routers.routers  # noqa: F401  (imports torch/transformers; random router needs no weights)
import litellm.proxy.proxy_server  # noqa: F401
print("[setup_peers] ok:", ", ".join(f"{d} {m.version(d)}" for d in ("torch", "litellm", "routellm", "fastapi", "uvicorn")))
EOF
