#!/usr/bin/env bash
# One GPU session's measurements for issue 6, most informative first, each step bounded so a slow one cannot eat
# the others' time. Writes JSON and logs to ${OUT:-gpu-out}/.
#
#   bash benchmarks/gpu_session.sh                # on the GPU machine, from the repository root
#
# Knobs (environment): DECODERS, BATCHES and AGREEMENT=0 for gpu_generate.py; SAMPLING=0 skips the sampler alone,
# compiled; SHARDED=0 skips the FSDP checks; DS=1 runs the DeepSpeed presets (needs .gpu-carry/ds-wheels, below);
# STEP=1 adds gpu_step.py. Run D in GPU.md was
#   DECODERS=pobench,pobench-radix,w-radix,w-sort BATCHES=64 AGREEMENT=0 SAMPLING=1 SHARDED=0 DS=1
#   and the next one (rejection draws against the sort, the sampler alone; FSDP and DeepSpeed were measured in C, D)
#   is AGREEMENT=0 SHARDED=0 BATCHES=64,256 with the DECODERS default below.
#
# The device machines have torch with CUDA but no internet: put a transformers wheel in .whl/ and the tokenizer
# files in .gpu-carry/ (both carried with the working tree: run with carry [".whl", ".gpu-carry"]); the wheel is
# installed into /tmp/site without touching the machine's torch. For DS=1, .gpu-carry/ds-wheels/ holds a DeepSpeed
# wheel built here (`DS_BUILD_OPS=0 pip wheel --no-deps --no-build-isolation` of the 0.19.8 sdist) and its
# dependencies for Python 3.12 (`pip download --no-deps --only-binary=:all: --python-version 3.12 ...` of einops
# hjson msgpack ninja py-cpuinfo pydantic pydantic-core annotated-types typing-inspection typing-extensions),
# installed into /tmp/ds-site for that step only.
set -u
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  pip install -q --no-deps --target /tmp/site .whl/*.whl 2>&1 | tail -2
fi
export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python -c "import torch, transformers; print(torch.__version__, transformers.__version__)" | tee -a "$OUT/gpu.txt"
git rev-parse HEAD 2>/dev/null | sed 's/^/pobench commit /' | tee -a "$OUT/gpu.txt"
# the decoders need transformers 5.x (StaticDecoder's cache=): without the carried wheel every step would fail late
python -c "import transformers, sys; sys.exit(int(transformers.__version__.split('.')[0]) < 5)" || {
  echo "transformers 5.x needed: carry .whl/ (pip download transformers==5.24.0 --no-deps -d .whl)" | tee -a "$OUT/gpu.txt"
  exit 2; }

export PYTHONUNBUFFERED=1
# 1. generation at batch 64 and 256: plain generate, the graph-replayed decoder, and the whole step compiled (one
#    compilation per batch, ~30-60 s each): rejection draws (no nucleus search, new since run D) first, then the
#    sort at 64 for a same-run ratio. Measured before (GPU.md): w-greedy@64 (the forward-only ceiling, 36.5k),
#    w-kary (slower than the sort), w-sort@256, w-radix (as fast as w-sort, run D), backend (26.2k at 256, run C).
DECODERS=${DECODERS:-pobench@64,w-reject,w-sort@64,pobench-reject@64}
AGREEMENT_FLAG=$([ "${AGREEMENT:-1}" = 0 ] && echo --no-agreement)
timeout ${GEN_TIMEOUT:-320} python benchmarks/gpu_generate.py --batches "${BATCHES:-64,256}" --decoders "$DECODERS" \
  $AGREEMENT_FLAG --json "$OUT/gen.json" > "$OUT/gen.log" 2>&1; echo "gpu_generate rc=$?" | tee -a "$OUT/gpu.txt"
grep -E "^(64|256|backend) " "$OUT/gen.log"

# 2. the sampler alone, compiled as the compiled step holds it: no nucleus, the sort, the radix select, rejection
if [ "${SAMPLING:-1}" = 1 ]; then
  # (rejection right after the baseline: four compilations may not all fit, and it is the new measurement)
  timeout ${SAMPLING_TIMEOUT:-150} python benchmarks/sampling_step.py --device cuda --rows 64 --compile \
    --methods none,reject,sort,radix \
    --json "$OUT/sampling.json" > "$OUT/sampling.log" 2>&1; echo "sampling_step rc=$?" | tee -a "$OUT/gpu.txt"
  grep "^rows" "$OUT/sampling.log"
fi

# 3. FSDP on the GPUs at hand against one process; needs SmolLM2's tokenizer files in .gpu-carry/smollm2-tokenizer
#    (tokenizer.json, tokenizer_config.json, chat_template.jinja from the converted model in ~/.cache/pobench/models)
print_sharded() {
python - "$1" <<'PY' 2>/dev/null
import json, sys
report = json.load(open(sys.argv[1]))
# step 1's rewards are scored before its update, against the reference cache (computed under the policy's bf16
# autocast, before prepare): ~0 where cache and prepared policy agree
print("one process, training rewards at step 1:", report.get("one_process", {}).get("step1_rewards"))
for name, entry in report["presets"].items():
    print(name, {k: entry.get(k) for k in ("rc", "wall_s", "distributed", "step1_rewards",
                                           "largest_relative_difference", "skipped")})
    print(entry.get("error", "")[-3000:])
PY
}
if [ "${SHARDED:-1}" = 1 ]; then
  timeout 90 python benchmarks/gpu_sharded_check.py --tokenizer .gpu-carry/smollm2-tokenizer --presets fsdp \
    --json "$OUT/sharded.json" > "$OUT/sharded.log" 2>&1; echo "gpu_sharded_check rc=$?" | tee -a "$OUT/gpu.txt"
  print_sharded "$OUT/sharded.json"
  # MC-PO under FSDP with pools of 2-4 candidates by row: the ranks score unequal numbers of candidates, and every
  # rank must join every scoring forward of the sharded weights (commit 601cb05; a hang before it)
  timeout 90 python benchmarks/gpu_sharded_check.py --tokenizer .gpu-carry/smollm2-tokenizer --presets fsdp --algo mcpo \
    --json "$OUT/sharded-mcpo.json" > "$OUT/sharded-mcpo.log" 2>&1; echo "gpu_sharded_check mcpo rc=$?" | tee -a "$OUT/gpu.txt"
fi

# 4. DeepSpeed ZeRO-2 and ZeRO-3 presets against one process (DeepSpeed is not installed on the device machines)
if [ "${DS:-0}" = 1 ] && ! ls .gpu-carry/ds-wheels/*.whl >/dev/null 2>&1; then
  echo "DS=1: no wheels in .gpu-carry/ds-wheels (see the header); DeepSpeed presets not run" | tee -a "$OUT/gpu.txt"
elif [ "${DS:-0}" = 1 ]; then
  pip install -q --no-deps --target /tmp/ds-site .gpu-carry/ds-wheels/*.whl 2>&1 | tail -2
  PYTHONPATH=/tmp/ds-site:$PYTHONPATH timeout ${DS_TIMEOUT:-90} python benchmarks/gpu_sharded_check.py \
    --tokenizer .gpu-carry/smollm2-tokenizer --presets deepspeed-zero2,deepspeed-zero3 \
    --json "$OUT/sharded-ds.json" > "$OUT/sharded-ds.log" 2>&1; echo "gpu_sharded_check deepspeed rc=$?" | tee -a "$OUT/gpu.txt"
  print_sharded "$OUT/sharded-ds.json"
fi

# 5. the training step (measured 2026-11-26 and -27, GPU.md)
if [ "${STEP:-0}" = 1 ]; then
  timeout 60 python benchmarks/gpu_step.py --variants shared,compile --json "$OUT/step.json" > "$OUT/step.log" 2>&1
  echo "gpu_step rc=$?" | tee -a "$OUT/gpu.txt"
fi
