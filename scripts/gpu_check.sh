#!/usr/bin/env bash
# GPU check: the fast test suite on the GPU, the quickstart (as written: its contrastive stage, then the classifier)
# and the SST-2 recipe (EPOCHS epochs), bf16 on ONE GPU, printing training throughput; then a 2-process (DDP) run
# where the machine has two GPUs or more; then FSDP (training.sharding, through an Accelerate config) over one process
# per GPU (at most 2) and a bit-exact resume of its sharded checkpoint (SKIP_SUITE=1 leaves the suite out).
#
#   TEXTXFER_DATA=/path/to/data scripts/gpu_check.sh          # data holds sst2/train.tsv and sst2/dev.tsv
#   PY=/opt/venv/bin/python EPOCHS=2 scripts/gpu_check.sh     # another interpreter, more SST-2 epochs
#   GPU_CHECK_ALLOW_CPU=1 EXTRA="--set data.max_train_examples=64" PY=.venv/bin/python scripts/gpu_check.sh  # dry run
#
# Needs a Python with a CUDA build of torch and textxfer importable (pip install -e ".[quickstart]"), offline
# like everywhere else. CPU stays the default elsewhere: only this script asks for bf16 on a GPU.
# Output: one line per recipe: "<name>: <N> examples/s in the training loop (...), <s> s end to end, ...", after
# "<name>: contrastive stage <steps> steps in <s> s" where the recipe has a stage (the loop is then the classifier).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
EPOCHS=${EPOCHS:-1}
OUTDIR=${OUTDIR:-$(mktemp -d /tmp/textxfer-gpu-check.XXXX)}
mkdir -p "$OUTDIR"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}
export TEXTXFER_DATA=${TEXTXFER_DATA:-$(cd .. && pwd)/shared/data}

"$PY" - <<'PYEOF'
import os, sys, torch
if not torch.cuda.is_available():
    if os.environ.get("GPU_CHECK_ALLOW_CPU"):
        print("gpu: none (GPU_CHECK_ALLOW_CPU is set: a dry run of this script on the CPU)")
        sys.exit(0)
    sys.exit(f"gpu_check: torch {torch.__version__} sees no CUDA GPU; run this on a GPU machine with a CUDA build of torch")
p = torch.cuda.get_device_properties(0)
print(f"gpu: {p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"bf16 {'yes' if torch.cuda.is_bf16_supported() else 'NO'}")
PYEOF

run() {  # run NAME RECIPE [--set KEY=VALUE ...]
  local name=$1 recipe=$2
  shift 2
  local out="$OUTDIR/$name"
  local t0 t1
  t0=$(date +%s.%N)
  # shellcheck disable=SC2086  # EXTRA is a list of options
  if ! "$PY" -m textxfer train "$recipe" --set training.mixed_precision=bf16 "$@" \
       --set training.checkpoint_every=null ${EXTRA:-} --output-dir "$out" --overwrite > "$out.log" 2>&1; then
    echo "$name: FAILED (last lines of $out.log):"; tail -5 "$out.log"; return 1
  fi
  t1=$(date +%s.%N)
  "$PY" - "$name" "$out" "$t0" "$t1" <<'PYEOF'
import json, sys
from datetime import datetime

import yaml

name, out, t0, t1 = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
run = json.load(open(f"{out}/run.json"))
metrics = json.load(open(f"{out}/metrics.json"))
history = json.load(open(f"{out}/history.json"))
batch = yaml.safe_load(open(f"{out}/recipe.yaml"))["training"]["batch_size"]
# the training loop: from the "batch:" line (training starts) to the last step/evaluation line of train.log
stamps = [datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f") for line in open(f"{out}/train.log", encoding="utf-8")
          if line[:4].isdigit() and (" batch: " in line or " step " in line)]
loop_s = (stamps[-1] - stamps[0]).total_seconds() if len(stamps) > 1 else float("nan")
steps = history["train"][-1]["step"] if history["train"] else 0
accuracy = metrics.get("validation", {}).get("accuracy", float("nan"))
stage = history.get("contrastive_stage") or {}
if stage.get("steps"):  # the loop timed below is then the classifier on cached embeddings, after the stage
    print(f"{name}: contrastive stage {stage['steps']} steps in {stage['seconds']:.1f} s")
print(f"{name}: {steps * batch / loop_s:,.0f} examples/s in the training loop ({steps} steps x {batch} in "
      f"{loop_s:.1f} s, evaluation included), {t1 - t0:.1f} s end to end, {run['data']['train']['rows']} train "
      f"rows, validation accuracy {accuracy:.4f}, {run['hardware'].get('gpu') or 'no GPU'}")
PYEOF
}

status=0
if [ -z "${SKIP_SUITE:-}" ]; then
  if "$PY" -m pytest -q -p no:cacheprovider tests > "$OUTDIR/suite.log" 2>&1; then
    echo "suite: $(tail -1 "$OUTDIR/suite.log")"
  else
    echo "suite: FAILED"; grep -E "^(FAILED|ERROR)" "$OUTDIR/suite.log" | head -20; tail -1 "$OUTDIR/suite.log"; status=1
  fi
fi
run quickstart recipes/quickstart.yaml || status=1
run sst2 recipes/sst2.yaml --set "training.epochs=$EPOCHS" || status=1
gpus=$("$PY" -c 'import torch; print(torch.cuda.device_count())')
if [ "$gpus" -ge 2 ]; then
  run sst2-2proc recipes/sst2.yaml --num-processes 2 --set "training.epochs=$EPOCHS" || status=1
else
  echo "sst2-2proc: skipped ($gpus GPU: a 2-process run needs one GPU per process)"
fi

# Sharded (training.sharding, issue 30): FSDP2 on the GPUs, one process per GPU (at most 2), set up by an Accelerate
# config file (so the config path is the one checked: its settings stand), a full fine-tune with a checkpoint every
# 20 steps, then a resume from the first checkpoint in another folder: its training losses after step 20 must equal
# the uninterrupted run's bit for bit. On one GPU FSDP runs as a process group of one (sharding over one process:
# the GPU code paths, nccl, bf16 mixed precision, save_state/load_state), on two it really shards.
sharded_check() {
  local n=$(( gpus >= 2 ? 2 : 1 )) cfg="$OUTDIR/fsdp-accelerate.yaml" out="$OUTDIR/fsdp" resumed="$OUTDIR/fsdp-resumed"
  cat > "$cfg" <<CFGEOF
compute_environment: LOCAL_MACHINE
distributed_type: FSDP
num_machines: 1
num_processes: $n
machine_rank: 0
main_training_function: main
mixed_precision: 'no'
use_cpu: false
fsdp_config:
  fsdp_version: 2
  fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP
  fsdp_state_dict_type: SHARDED_STATE_DICT
  fsdp_reshard_after_forward: true
  fsdp_offload_params: false
CFGEOF
  local opts=(--set strategy.name=full --set training.sharding=fsdp --set training.mixed_precision=bf16
              --set data.max_train_examples=2000 --set training.epochs=1 --set training.checkpoint_every=20
              --set training.keep_checkpoints=10)
  # shellcheck disable=SC2086
  if ! "$PY" -m textxfer train recipes/sst2.yaml --accelerate-config "$cfg" "${opts[@]}" ${EXTRA:-} \
       --output-dir "$out" --overwrite > "$out.log" 2>&1; then
    echo "fsdp-$n: FAILED (last lines of $out.log):"; tail -5 "$out.log"; return 1
  fi
  mkdir -p "$resumed/checkpoints" && cp -r "$out/checkpoints/step-0000020" "$resumed/checkpoints/"
  # shellcheck disable=SC2086
  if ! "$PY" -m textxfer train recipes/sst2.yaml --accelerate-config "$cfg" "${opts[@]}" ${EXTRA:-} \
       --output-dir "$resumed" --resume > "$resumed.log" 2>&1; then
    echo "fsdp-$n resume: FAILED (last lines of $resumed.log):"; tail -5 "$resumed.log"; return 1
  fi
  "$PY" - "$n" "$out" "$resumed" <<'PYEOF'
import json, sys
n, out, resumed = sys.argv[1:]
a, b = (json.load(open(f"{d}/history.json")) for d in (out, resumed))
after = lambda h: [(x["step"], x["loss"]) for x in h["train"] if x["step"] > 20]
state = json.load(open(f"{out}/checkpoints/step-0000020/state.json"))
log = open(f"{out}/train.log", encoding="utf-8").read()
units = next((line.split("sharding: ", 1)[1].strip() for line in log.splitlines() if "sharding: FSDP2" in line), "?")
same = after(a) == after(b) and bool(after(a))
acc = json.load(open(f"{out}/metrics.json"))["validation"]["accuracy"]
print(f"fsdp-{n}: {units}; checkpoint sharding {state['sharding']}, {len(state['files'])} files; resume from step 20 "
      f"{'bit-exact' if same else 'DIFFERS'} over {len(after(a))} logged steps; validation accuracy {acc:.4f}")
sys.exit(0 if same and state["sharding"] == "FSDP" else 1)
PYEOF
}
sharded_check || status=1
echo "runs and logs: $OUTDIR"
exit $status
