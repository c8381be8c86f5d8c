#!/usr/bin/env bash
# One prepared check for a CUDA machine, in under 9 minutes:
#   1. the kernel tests, GPU ones included (tests/kernels), and the captured decode graphs'
#      GPU tests (tests/unit/engine/test_decode_graphs_cuda.py),
#   2. the kernel benchmark (python -m bench.kernels),
#   3. decode step time, eager against CUDA graphs (python -m bench.decode_graphs),
#   4. the adapter-count benchmark on a dummy Llama-3-8B, if bench/adapters.py exists,
#   5. the paged attention kernels' GB/s against the copy bandwidth (python -m bench.attention),
#   6. the dummy Llama-3-8B decode step at batch 1/16/64 x context 512/2k/8k beside the cost
#      model's figure (python -m bench.step_time),
#   7. the int4 dequantize-GEMM against bf16 at Llama-3-8B shapes (python -m bench.int4_gemm).
# It installs nothing heavy: torch and triton must be there already, and the repository
# goes in editable without dependencies (works offline). Every part has its own time limit
# and its own log; a part that fails or runs out of time does not stop the next one.
# Logs and JSON results go to $OUT (or a temporary folder); one table at the end.
#
#   bash bench/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."

out="${OUT:-$(mktemp -d)}"
python="${PYTHON:-python3}"
mkdir -p "$out"
summary="$out/summary.txt"
: >"$summary"

# run_part NAME SECONDS COMMAND...: runs COMMAND under `timeout`, logs to $out/NAME.log
run_part() {
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS
  echo "== $name (limit ${limit}s): $*"
  timeout --signal=INT --kill-after=10 "$limit" "$@" 2>&1 | tee "$out/$name.log"
  local rc=${PIPESTATUS[0]}
  local status=ok
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    status="TIMEOUT"
  elif [ "$rc" -ne 0 ]; then
    status="FAILED rc=$rc"
  fi
  local note
  note=$(grep -E "passed|failed|error" "$out/$name.log" | tail -n 1 | cut -c1-70)
  printf "%-16s %-14s %6ss  %s\n" "$name" "$status" "$((SECONDS - start))" "$note" >>"$summary"
}

"$python" - <<'PY'
import torch
print("torch", torch.__version__, "| cuda:", torch.cuda.is_available(),
      torch.cuda.get_device_name() if torch.cuda.is_available() else "(GPU tests will skip)")
PY

run_part install 20 "$python" -m pip install --quiet --no-deps --no-build-isolation -e .
run_part kernel-tests 95 "$python" -m pytest tests/kernels \
  tests/unit/engine/test_decode_graphs_cuda.py -q -p no:cacheprovider --timeout 90
run_part bench-kernels 75 "$python" -m bench.kernels --out "$out"
run_part decode-graphs 50 "$python" -m bench.decode_graphs --new-tokens 16 \
  --out "$out/decode_graphs.json"
if [ -f bench/adapters.py ]; then
  run_part bench-adapters 50 "$python" -m bench.adapters --model llama-3-8b \
    --load-format dummy --quick
else
  printf "%-16s %-14s %6ss  %s\n" bench-adapters skipped 0 "bench/adapters.py not found" \
    >>"$summary"
fi
run_part bench-attention 60 "$python" -m bench.attention
run_part step-time 150 "$python" -m bench.step_time
run_part bench-int4 30 "$python" -m bench.int4_gemm --quick

echo
echo "== gpu_check summary (logs and JSON in $out)"
printf "%-16s %-14s %7s  %s\n" part status time "last result line"
cat "$summary"
echo
echo "== bench.kernels table"
sed -n '/^device /,/^wrote /p' "$out/bench-kernels.log"
echo
echo "== bench.decode_graphs table"
sed -n '/^decode step, /,/^wrote /p' "$out/decode-graphs.log"
echo
echo "== bench.attention table"
sed -n '/^copy bandwidth/,$p' "$out/bench-attention.log"
echo
echo "== bench.step_time table"
sed -n '/^ *batch/,$p' "$out/step-time.log"
echo
echo "== bench.int4_gemm table"
sed -n '/^device /,/^wrote /p' "$out/bench-int4.log"
