#!/usr/bin/env bash
# One GPU session's measurements for issue 6, most informative first, each step bounded so a slow one cannot eat
# the others' time. Writes JSON and logs to ${OUT:-gpu-out}/.
#
#   bash benchmarks/gpu_session.sh                # on the GPU machine, from the repository root
#
# The device machines have torch with CUDA but no internet: put a transformers wheel in .whl/ and the tokenizer
# files in .gpu-carry/ (both carried with the working tree: run with carry [".whl", ".gpu-carry"]); the wheel is
# installed into /tmp/site without touching the machine's torch.
set -u
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  pip install -q --no-deps --target /tmp/site .whl/*.whl 2>&1 | tail -2
fi
export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python -c "import torch, transformers; print(torch.__version__, transformers.__version__)" | tee -a "$OUT/gpu.txt"

export PYTHONUNBUFFERED=1
# 1. generation at batch 64 and 256: plain generate, the backend as pools use it (auto batch), the graph-replayed
#    decoder, and the whole step compiled (one compilation per batch, ~40 s each): the 16-way nucleus search first
#    (not yet measured on a GPU), then the sort at 64 (measured before: 24.4k, 8.7x plain) for a same-run ratio.
#    The forward-only ceiling (w-greedy@64: 36.5k) and the sort at 256 were measured before; add them with FULL=1.
DECODERS=backend,pobench@64,w-kary,w-sort@64
[ "${FULL:-0}" = 1 ] && DECODERS=$DECODERS,w-sort@256,w-greedy@64
timeout 320 python benchmarks/gpu_generate.py --decoders $DECODERS \
  --json "$OUT/gen.json" > "$OUT/gen.log" 2>&1; echo "gpu_generate rc=$?" | tee -a "$OUT/gpu.txt"
grep -E "^(64|256|backend) " "$OUT/gen.log"

# 2. FSDP on the GPUs at hand against one process (DeepSpeed is not installed there); needs SmolLM2's tokenizer
#    files in .gpu-carry/smollm2-tokenizer (tokenizer.json, tokenizer_config.json, chat_template.jinja from the
#    converted model in ~/.cache/pobench/models), carried with the working tree
timeout 90 python benchmarks/gpu_sharded_check.py --tokenizer .gpu-carry/smollm2-tokenizer --presets fsdp \
  --json "$OUT/sharded.json" > "$OUT/sharded.log" 2>&1; echo "gpu_sharded_check rc=$?" | tee -a "$OUT/gpu.txt"
python - "$OUT/sharded.json" <<'PY' 2>/dev/null
import json, sys
report = json.load(open(sys.argv[1]))
# step 1's rewards are scored before its update, against the reference cache (computed under the policy's bf16
# autocast, before prepare): ~0 where cache and prepared policy agree (the held-out evaluation before training is
# exactly 0 by construction, so it cannot show this)
print("one process, training rewards at step 1:", report.get("one_process", {}).get("step1_rewards"))
for name, entry in report["presets"].items():
    print(name, {k: entry.get(k) for k in ("rc", "wall_s", "distributed", "step1_rewards",
                                           "largest_relative_difference", "skipped")})
    print(entry.get("error", "")[-3000:])
PY

# 2b. MC-PO under FSDP with pools of 2-4 candidates by row: the ranks score unequal numbers of candidates, and every
#     rank must join every scoring forward of the sharded weights (commit 601cb05; a hang before it)
timeout 90 python benchmarks/gpu_sharded_check.py --tokenizer .gpu-carry/smollm2-tokenizer --presets fsdp --algo mcpo \
  --json "$OUT/sharded-mcpo.json" > "$OUT/sharded-mcpo.log" 2>&1; echo "gpu_sharded_check mcpo rc=$?" | tee -a "$OUT/gpu.txt"

# 3. with FULL=1: the sampler alone, compiled as the compiled step holds it (sort, bisection, 16-way search; the
#    eager sampler was measured on 2026-11-27, see GPU.md), and the training step (measured then too)
if [ "${FULL:-0}" = 1 ]; then
  timeout 90 python benchmarks/sampling_step.py --device cuda --rows 64,256 --compile --methods sort,bisect,kary \
    --json "$OUT/sampling.json" > "$OUT/sampling.log" 2>&1; echo "sampling_step rc=$?" | tee -a "$OUT/gpu.txt"
  grep "^rows" "$OUT/sampling.log"
  timeout 60 python benchmarks/gpu_step.py --variants shared,compile --json "$OUT/step.json" > "$OUT/step.log" 2>&1
  echo "gpu_step rc=$?" | tee -a "$OUT/gpu.txt"
fi
