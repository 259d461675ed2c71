#!/usr/bin/env bash
# `meshtrain plan`'s predictions for GPU clusters, from the shipped descriptions (hardware/*.toml,
# published figures; nothing here needs a GPU): GPT-2 124M on one node of 8 GPUs (dp 8, llm.c's
# 0.5M-token step) and a 1.3B model (GPT-3 XL shape) on 2 nodes x 8 GPUs, every layout of each.
# docs/performance.md shows the output beside published anchors.
# Usage: bench/plan_gpu.sh [BUILD_DIR] [HARDWARE.toml]
set -euo pipefail
build=${1:-build/release}
hw=${2:-hardware/gpu-h100-sxm-8x.toml}
bin=$build/meshtrain
[ -x "$bin" ] || { echo "plan_gpu: $bin not found: build first (cmake --preset release && cmake --build build/release)" >&2; exit 1; }
gpt2="--set model.n_layer=12 --set model.n_head=12 --set model.n_embd=768 --set model.seq_len=1024
      --set model.vocab_size=50257 --set train.batch_size=512 --set train.grad_accum=1 --set train.precision=bf16"
xl="--set model.n_layer=24 --set model.n_head=16 --set model.n_embd=2048 --set model.seq_len=2048
    --set model.vocab_size=50257 --set train.batch_size=512 --set train.grad_accum=1 --set train.precision=bf16
    --set parallel.microbatches=16"
for recompute in none selective; do
  echo "== GPT-2 124M, 512 x 1024 tokens per step, 8 GPUs, recompute $recompute ($hw)"
  # shellcheck disable=SC2086
  "$bin" plan $gpt2 --set train.recompute=$recompute --ranks 8 --hardware "$hw"
done
echo "== 1.3B (L24 C2048 H16 T2048), 512 x 2048 tokens per step in 16 micro-batches, 16 GPUs, recompute selective ($hw)"
# shellcheck disable=SC2086
"$bin" plan $xl --set train.recompute=selective --ranks 16 --hardware "$hw"
