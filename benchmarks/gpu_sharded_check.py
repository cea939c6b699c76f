"""FSDP and DeepSpeed on GPUs (issue 6): the shipped launch presets against one process, same global batch.

    python benchmarks/gpu_sharded_check.py --tokenizer DIR [--presets fsdp,deepspeed-zero2,deepspeed-zero3]
                                           [--steps 4] [--algo dpo|mcpo] [--json PATH]

The CPU tests run these presets on 2 CPU processes over gloo (tests/test_distributed.py); what only a GPU exercises is
NCCL, bf16 autocast, `fsdp_sync_module_states`, and FSDP's offload of the gathered checkpoint to the CPU. This script
runs `pobench run --algo dpo` on a small random Llama (SmolLM2's tokenizer, from --tokenizer: nothing can be
downloaded on a device machine) once without a launch and once under each preset on every visible GPU
(--num-processes = the GPU count, per-process batch = 4 / count), 4 steps each, and compares the logged loss,
gradient norm and margins step by step, the held-out metrics, and the checkpoints. bf16 autocast rounds differently
under different shardings, so the differences are reported, not asserted; a preset whose launch fails reports its
error. DeepSpeed presets are skipped where DeepSpeed is not installed.

`--device cpu --presets ddp` runs the same comparison on CPU processes (a smoke test of the script).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
GLOBAL_BATCH = 4
COMPARED = ("loss", "grad_norm", "rewards/margins", "rewards/chosen", "logps/chosen")


def build_model(tokenizer_dir: str, target: Path) -> Path:
    """A random 4-layer Llama with SmolLM2's vocabulary and chat template (the tests' tiny model, a little wider)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def uneven_pools(target: Path) -> Path:
    """UltraFeedback sample rows in the on-policy schema with 2, 3 or 4 candidates by row: under a sharded launch the
    ranks' MC-PO pools then need different numbers of scoring forwards, which every rank must join (a forward of
    sharded weights is a collective; before commit 601cb05 a rank with fewer would leave the others waiting)."""
    import gzip
    sample = ROOT / "pobench" / "data" / "samples" / "ultrafeedback" / "train_prefs-1000.jsonl.gz"
    with gzip.open(sample, "rt") as f, open(target, "w") as out:
        for i, line in zip(range(80), f):
            row = json.loads(line)
            chosen, rejected = row["chosen"][-1]["content"], row["rejected"][-1]["content"]
            if not chosen.strip() or not rejected.strip():
                continue
            responses = [chosen, rejected, "I am not sure.", chosen[:40] + "..."][:2 + i % 3]
            out.write(json.dumps({"prompt_id": row["prompt_id"], "prompt": row["prompt"],
                                  "all_generated_responses": responses,
                                  "all_rm_scores": [4.0, 1.0, 0.5, 2.0][:len(responses)]}) + "\n")
    return target


def run(out: Path, model: Path, device: str, steps: int, processes: int, preset: str | None,
        algo: str = "dpo", data: str = "sample") -> dict:
    settings = {"model.device": device, "data.max_train_records": 64, "data.eval_size": 8, "train.lr": 1e-3,
                "train.max_prompt_length": 64, "train.max_completion_length": 32, "train.eval_every": 2,
                "train.batch_size": GLOBAL_BATCH // processes}
    suite = "hh-rlhf" if algo == "dpo" else "ultrafeedback"
    cmd = [sys.executable, "-m", "pobench.cli", "run", "--algo", algo, "--suite", suite, "--model", str(model),
           "--data", data, "--out", str(out), "--no-eval", "--max-steps", str(steps)]
    if algo == "mcpo":
        settings["mcpo.num_candidates"] = 4
    for key, value in settings.items():
        cmd += ["--set", f"{key}={value}"]
    if preset:
        cmd += ["--launch-config", preset, "--num-processes", str(processes)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "POBENCH_DEBUG": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    result = {"preset": preset or "none", "processes": processes, "rc": proc.returncode,
              "wall_s": round(time.perf_counter() - started, 1)}
    if proc.returncode != 0:
        # the launcher's own traceback ends stderr; the rank's error (with POBENCH_DEBUG=1, its traceback) is above it
        text = proc.stderr or proc.stdout
        launcher = text.find("failed (exitcode")
        result["error"] = text[:launcher][-6000:] if launcher > 0 else text[-6000:]
        return result
    folder = out / suite / algo / "seed1"
    result["rows"] = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    result["summary"] = json.loads((folder / "train_summary.json").read_text())
    result["checkpoint"] = str(folder / "checkpoints" / "latest" / "trainable.safetensors")
    return result


def first_step_rewards(result: dict) -> dict:
    """The implicit rewards of step 1, scored before its update: the policy is still the initial weights, so they
    measure how far the reference cache (fp32 weights under autocast, before accelerate's prepare) is from the
    policy as prepared (FSDP's bf16 parameters): ~0 when they agree."""
    row = result["rows"][0] if result.get("rows") else {}
    return {k: v for k, v in row.items() if k.startswith("rewards/")}


def compare(base: dict, other: dict) -> dict:
    from safetensors.torch import load_file
    worst = {}
    for a, b in zip(base["rows"], other["rows"]):
        for key in COMPARED + tuple(k for k in a if k.startswith("eval/")):
            if key in a and key in b:
                scale = max(abs(a[key]), 1e-8)
                worst[key] = max(worst.get(key, 0.0), abs(a[key] - b[key]) / scale)
    one, sharded = load_file(base["checkpoint"]), load_file(other["checkpoint"])
    return {"steps": [r["step"] for r in other["rows"]], "step1_rewards": first_step_rewards(other),
            "distributed": other["summary"].get("distributed"),
            "largest_relative_difference": {k: float(f"{v:.3g}") for k, v in sorted(worst.items())},
            "checkpoint_same_names": sorted(one) == sorted(sharded),
            "checkpoint_largest_abs_difference": float(max((one[k].float() - sharded[k].float()).abs().max()
                                                           for k in one if k in sharded)),
            "held_out_final": {k: (base["summary"]["held_out_final"][k], other["summary"]["held_out_final"][k])
                               for k in base["summary"]["held_out_final"]}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer", required=True, help="a folder with SmolLM2's tokenizer files")
    ap.add_argument("--presets", default="fsdp,deepspeed-zero2,deepspeed-zero3")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--processes", type=int, default=None, help="default: the number of visible GPUs")
    ap.add_argument("--algo", default="dpo", choices=("dpo", "mcpo"),
                    help="mcpo: MC-PO on pools of 2-4 candidates by row (ranks score unequal numbers of them)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_sharded_check.py needs a CUDA device (or --device cpu --presets ddp)")
    processes = args.processes or (torch.cuda.device_count() if args.device == "cuda" else 2)
    if GLOBAL_BATCH % processes:
        sys.exit(f"{processes} processes do not divide the global batch of {GLOBAL_BATCH}")
    report = {"device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
              "gpus": torch.cuda.device_count() if args.device == "cuda" else 0, "torch": torch.__version__,
              "processes": processes, "global_batch": GLOBAL_BATCH, "steps": args.steps, "presets": {}}

    def save() -> None:
        print(json.dumps(report, indent=1), flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=1))

    with tempfile.TemporaryDirectory(prefix="pobench-sharded-") as tmp:
        model = build_model(args.tokenizer, Path(tmp) / "model")
        data = str(uneven_pools(Path(tmp) / "pools.jsonl")) if args.algo == "mcpo" else "sample"
        report["algo"] = args.algo
        base = run(Path(tmp) / "one", model, args.device, args.steps, 1, None, args.algo, data)
        report["one_process"] = {**{k: v for k, v in base.items() if k not in ("rows", "checkpoint")},
                                 "step1_rewards": first_step_rewards(base)}
        if base["rc"] != 0:
            save()
            sys.exit("the one-process run failed")
        for preset in args.presets.split(","):
            if preset.startswith("deepspeed") and importlib.util.find_spec("deepspeed") is None:
                report["presets"][preset] = {"skipped": "DeepSpeed is not installed"}
                continue
            other = run(Path(tmp) / preset, model, args.device, args.steps, processes, preset, args.algo, data)
            entry = {k: v for k, v in other.items() if k not in ("rows", "summary", "checkpoint")}
            if other["rc"] == 0:
                entry.update(compare(base, other))
            report["presets"][preset] = entry
            save()
    save()


if __name__ == "__main__":
    main()
