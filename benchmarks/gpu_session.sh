#!/usr/bin/env bash
# The GPU checks of the kernels, as one script for a machine with an NVIDIA GPU:
#   1. build the CUDA kernel the install-time way (SNNC_BUILD_CUDA=1 setup.py build_ext),
#   2. run tests/kernels there (CUDA and Triton parity against the reference, gradients,
#      SpikingJelly parity on the GPU),
#   3. run benchmarks/kernels.py --gpu-only (throughput vs the device copy and SpikingJelly),
#   4. run benchmarks/end_to_end.py --device cuda (both tools' converted models on the GPU),
#   5. time a TET training step on the GPU (benchmarks/tet_training.py --speed-only --device cuda),
#   6. time populations on the GPU: the fused Triton kernel against the composition, whole models
#      at B = 1, 2, 4 (benchmarks/population_speed.py --device cuda),
#   7. time a fine-tuning step against SpikingJelly's on the same converted networks
#      (benchmarks/finetune_speed.py --device cuda).
#
#   bash benchmarks/gpu_session.sh [OUTDIR]
#   SNNC_GPU_STEPS=build,tests,bench bash benchmarks/gpu_session.sh OUTDIR   # then e2e,tet,pop,ft
#
# Logs and the benchmark JSON go to OUTDIR (default benchmarks/results). Each step has its own
# time limit so that one hang does not eat the others. The python used is $PYTHON (python3).
# SNNC_GPU_STEPS (default build,tests,bench,e2e,tet,pop,ft) picks steps, so that the whole session can
# be split over calls that each stay under a per-command limit (the device tool allows 10
# minutes a command); the build's .so stays in the tree for the later calls.
set -u
out=${1:-benchmarks/results}
py=${PYTHON:-python3}
steps=",${SNNC_GPU_STEPS:-build,tests,bench,e2e,tet,pop,ft},"
want() { [[ "$steps" == *",$1,"* ]]; }
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

nvidia-smi -L
$py -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, torch.cuda.get_device_name())"

if want build; then
  echo "== build (SNNC_BUILD_CUDA=1 setup.py build_ext --inplace)"
  SNNC_BUILD_CUDA=1 timeout 240 $py setup.py -q build_ext --inplace >"$out/gpu_build.log" 2>&1
  echo "build exit $?"; tail -5 "$out/gpu_build.log"; ls snncompiler/kernels/*.so
  $py -m snncompiler.cli env --json >"$out/gpu_env.json" 2>&1; $py -m snncompiler.cli env | tail -5  # what ran where (the CUDA library and its source)
fi

if want tests; then
  echo "== tests/kernels, the GPU runtime and direct training on the GPU"
  timeout "${SNNC_GPU_TEST_TIMEOUT:-300}" $py -m pytest -q -p no:cacheprovider --maxfail=20 tests/kernels \
      tests/test_gpu_runtime.py tests/test_cuda_graphs.py tests/test_train.py tests/test_population.py \
      -k "not test_cpu_matches_reference" 2>&1 | tee "$out/gpu_pytest.log" | tail -40
  echo "pytest exit ${PIPESTATUS[0]}"
fi

if want bench; then
  echo "== benchmarks/kernels.py --gpu-only"
  timeout "${SNNC_GPU_BENCH_TIMEOUT:-240}" $py benchmarks/kernels.py --gpu-only --out "$out/kernels_gpu.json" 2>&1 \
      | tee "$out/gpu_bench.log"
  echo "bench exit ${PIPESTATUS[0]}"
fi

if want e2e && [ "${SNNC_GPU_E2E:-1}" != 0 ]; then  # SNNC_GPU_E2E=0: skip the end-to-end step too
  echo "== benchmarks/end_to_end.py --device cuda"
  timeout "${SNNC_GPU_E2E_TIMEOUT:-240}" $py benchmarks/end_to_end.py --device cuda --threads 16 --out "$out" 2>&1 \
      | tee "$out/gpu_e2e.log" | tail -8
  echo "e2e exit ${PIPESTATUS[0]}"
fi

if want tet; then
  echo "== benchmarks/tet_training.py --speed-only --device cuda"
  timeout "${SNNC_GPU_TET_TIMEOUT:-180}" $py -m benchmarks.tet_training --speed-only --device cuda --threads 16 \
      --out "$out/tet_training_gpu.json" 2>&1 | tee "$out/gpu_tet.log" | tail -12
  echo "tet exit ${PIPESTATUS[0]}"
fi

if want pop; then
  echo "== benchmarks/population_speed.py --device cuda"
  timeout "${SNNC_GPU_POP_TIMEOUT:-180}" $py -m benchmarks.population_speed --device cuda \
      --out "$out/population_speed_gpu.json" 2>&1 | tee "$out/gpu_pop.log" | tail -16
  echo "pop exit ${PIPESTATUS[0]}"
fi

if want ft; then
  echo "== benchmarks/finetune_speed.py --device cuda"
  timeout "${SNNC_GPU_FT_TIMEOUT:-180}" $py -m benchmarks.finetune_speed --device cuda --threads 16 \
      --out "$out/finetune_speed_gpu.json" 2>&1 | tee "$out/gpu_ft.log" | tail -8
  echo "ft exit ${PIPESTATUS[0]}"
fi
