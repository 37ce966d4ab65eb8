#!/usr/bin/env bash
# Run HERE (a machine with pip access), before a GPU session: collects what the offline GPU machine lacks
# into .whl/ (git-ignored; name it in the device tool's `carry`): soundfile (+cffi, pycparser), julius,
# and for bench/e2e.py audiocraft 1.3.0 (no deps), omegaconf, num2words (+docopt), plus audiocraft's
# config folder (.whl/ac-config). bench/gpu_check.sh installs them from there (pip --no-index).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
rm -rf .whl && mkdir -p .whl
plat=(--python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64 --platform any)
python3 -m pip download -q --no-deps --only-binary=:all: "${plat[@]}" -d .whl \
    soundfile==0.14.0 cffi pycparser omegaconf==2.4.0 num2words==0.5.14
python3 -m pip wheel -q --no-deps -w .whl audiocraft==1.3.0 julius==0.2.8 docopt==0.6.2
[ -d .ac-dl/audiocraft-1.3.0/config ] || bash tests/fixtures/setup_audiocraft.sh
cp -r .ac-dl/audiocraft-1.3.0/config .whl/ac-config
du -sh .whl && ls .whl
