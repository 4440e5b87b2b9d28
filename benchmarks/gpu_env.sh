# Sourced (not run) by the one-call GPU scripts (benchmarks/gpu_run.sh, research/shapes/gpu_recipe.sh) from the
# repository root: makes diffusers importable on the device machine, whose image has torch and transformers but no
# diffusers, from wheels carried in .whl/ (ignored by git; made here, where the package index is reachable, with
# `python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp -d .whl
# diffusers==0.42.1`, and passed to the run with carry=[".whl"]); then puts this checkout's src/
# first on PYTHONPATH. Uses python3: the device image's plain `python3` is the one that holds torch.
if ! python3 -c "import diffusers" 2>/dev/null; then
  if ! ls .whl/diffusers-*.whl >/dev/null 2>&1; then
    echo "diffusers is not installed and there is no .whl/diffusers-*.whl to install it from (benchmarks/gpu_env.sh)" >&2
    return 1 2>/dev/null || exit 1
  fi
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/*.whl || { return 1 2>/dev/null || exit 1; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
