#!/usr/bin/env bash
# The GPU check: one command, offline, under 8 minutes on one H100/H200. On a random
# MPNet-base-sized model (benchmarks/configs/mpnet-base.json) and packaged corpora it runs
#   1. fit      a bf16 `lightning fit` of configs/paper/crop.yaml for 40 steps (probes, MTEB offline-fast)
#   2. train_throughput[_compile]  benchmarks/train_throughput.py --device cuda, eager and --compile
#   3. cached_memory  benchmarks/cached_memory.py --device cuda: plain 64 pairs vs GradCache 1024 pairs
# each under its own time limit, going on after a failed step, and writes every figure (step time,
# samples/s, tokens/s, MFU, peak memory) and the targets into one JSON file.
#
#   bash benchmarks/gpu_check.sh [--out gpu_check.json]     # one GPU
#   bash benchmarks/gpu_check.sh --smoke [--out FILE]       # the same steps on the CPU, tiny model, ~1-2 min
#
# Options: --out FILE (default gpu_check.json), --smoke, --help. Details: docs/performance.md#gpu-check
set -uo pipefail

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; }
out=gpu_check.json
smoke=0
while [ $# -gt 0 ]; do
    case $1 in
        --smoke) smoke=1 ;;
        --out) [ $# -ge 2 ] || { echo "error: --out: expected a file name after it" >&2; exit 2; }; out=$2; shift ;;
        --out=*) out=${1#--out=} ;;
        -h|--help) usage; exit 0 ;;
        *) echo "error: $1: expected --smoke, --out FILE or --help" >&2; exit 2 ;;
    esac
    shift
done
case $out in /*) ;; *) out=$PWD/$out ;; esac
cd "$(dirname "$0")/.." || exit 1
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python=${PYTHON:-python}
work=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX") || exit 1
trap 'rm -rf "$work"' EXIT
model=$work/model

if [ $smoke = 1 ]; then
    device=cpu
    model_config=benchmarks/configs/tiny-bert.json
    fit_args=(--trainer.accelerator cpu --trainer.precision 32-true
              --trainer.max_steps 12 --trainer.val_check_interval 6 --trainer.log_every_n_steps 2
              --trainer.limit_val_batches 2 --data.batch_size 8 --data.max_length 32 --data.num_workers 1
              --data.val_documents 64 --probe.corpora '[{max_documents: 200}]' --probe.max_length 32
              --probe.geometry_pairs 16 --probe.linear_probe false
              --mteb.tasks LeeDocumentSimilarity --mteb.max_length 32 --mteb.every_n_steps 12)
    bench_args=(--device cpu --batch-size 8 --max-length 32 --steps 2 --repeats 1 --views dropout)
    # inductor's C++ build takes minutes on a CPU: the smoke run checks the --compile path with
    # torch.compile switched off
    compile_env=(env TORCH_COMPILE_DISABLE=1)
    compile_args=(--warmup 2)
    cached_args=(--device cpu --plain 4 --cached 16 --chunk 8 --max-length 32)
    limits=(180 120 180 90)
else
    device=cuda
    model_config=benchmarks/configs/mpnet-base.json
    fit_args=(--trainer.max_steps 40 --trainer.val_check_interval 20 --trainer.log_every_n_steps 5)
    bench_args=(--device cuda --views crops --repeats 2)
    compile_env=()
    compile_args=(--warmup 3 --repeats 1)
    cached_args=(--device cuda)
    limits=(180 100 120 60)
fi

$python benchmarks/gpu_check.py prepare --out "$out" --work "$work" --model-config "$model_config" \
    $([ $smoke = 1 ] && echo --smoke) || exit $?
# Each step is followed by the JSON file so far: a check cut short still leaves the steps it ran.
step() {
    $python benchmarks/gpu_check.py step --work "$work" --device $device --name "$1" --limit "$2" -- "${@:3}"
    $python benchmarks/gpu_check.py report --work "$work" --out "$out" --quiet
}

# configs/paper/crop.yaml with its hub and hardware dependencies replaced: the random model, the
# packaged BBC News as jsonl files for data/*.jsonl, every output under the work folder (events
# flushed every 5 s, so a step cut short keeps its figures).
step fit "${limits[0]}" $python -m lightning_app fit --config configs/paper/crop.yaml \
    --model.model "$model" --data.source "$work/data/*.jsonl" \
    --trainer.default_root_dir "$work/runs" --trainer.logger.init_args.save_dir "$work/runs" \
    --trainer.logger.init_args.flush_secs 5 "${fit_args[@]}"
step train_throughput "${limits[1]}" $python benchmarks/train_throughput.py --model "$model" "${bench_args[@]}"
step train_throughput_compile "${limits[2]}" "${compile_env[@]}" $python benchmarks/train_throughput.py --model "$model" \
    "${bench_args[@]}" --compile "${compile_args[@]}"
step cached_memory "${limits[3]}" $python benchmarks/cached_memory.py --model "$model" "${cached_args[@]}"

$python benchmarks/gpu_check.py report --work "$work" --out "$out"
