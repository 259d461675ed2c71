#!/usr/bin/env python3
"""CUDA emulation: does it catch bugs? Injects one bug at a time into the CUDA sources (an
off-by-one index, a removed barrier, a wrong shuffle mask, a misaligned vector load, a swapped
cuBLASLt epilogue, a swapped WMMA layout, a barrier dropped from the vocabulary-parallel row
reduction that tensor-parallel GPU training runs, the tensor-parallel embedding backward writing into
the wrong rank's rows, a barrier dropped from the key/value-cache attention), rebuilds the emulated
test that covers it, and checks that the test now fails. The source is restored after each one
(also on Ctrl-C or an error). Prints how many of how many were caught; exits non-zero unless all were.

Usage: mutation_check.py [BUILD_DIR]   (default build/emulation, configured with --preset emulation)
"""
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# (what, file, text to find (must occur), replacement, test target, gtest filter)
MUTATIONS = [
    ("off-by-one start index in residual_forward_kernel", "model/kernels/residual.cu",
     "for (int64_t p = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; p < n_packs;",
     "for (int64_t p = blockIdx.x * int64_t{blockDim.x} + threadIdx.x + 1; p < n_packs;",
     "kernels_cuda_test", "ResidualCuda.*"),
    ("removed __syncthreads in cross-entropy's block merge", "model/kernels/crossentropy.cu",
     "  __syncthreads();\n  // Every thread merges",
     "  // Every thread merges",
     "kernels_cuda_test", "CrossEntropyCuda.*"),
    ("wrong shuffle mask in LayerNorm's warp sum", "model/kernels/layernorm.cu",
     "v += __shfl_xor_sync(0xffffffffu, v, offset);",
     "v += __shfl_xor_sync(0x0000ffffu, v, offset);",
     "kernels_cuda_test", "LayerNormCuda.*"),
    ("misaligned 16-byte vector loads (alignment check dropped)", "model/kernels/convert.cuh",
     "return n % kPack<T> == 0 && ((reinterpret_cast<uintptr_t>(ptrs) % 16 == 0) && ...);",
     "return n % kPack<T> == 0 && ((reinterpret_cast<uintptr_t>(ptrs) % 2 == 0) && ...);",
     "kernels_cuda_test", "GeluCuda.*:ResidualCuda.*"),
    ("swapped cuBLASLt epilogue (GELU_AUX for GELU_AUX_BIAS)", "model/kernels/matmul.cu",
     "bias != nullptr ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_GELU_AUX",
     "bias != nullptr ? CUBLASLT_EPILOGUE_GELU_AUX : CUBLASLT_EPILOGUE_GELU_AUX_BIAS",
     "matmul_cuda_test", "*"),
    ("swapped WMMA fragment layout in flash attention", "model/kernels/flash_attention.cu",
     "using LayoutA = std::conditional_t<kTransA, wmma::col_major, wmma::row_major>;",
     "using LayoutA = std::conditional_t<kTransA, wmma::row_major, wmma::col_major>;",
     "attention_cuda_test", "*Bf16*"),
    ("removed __syncthreads in the vocabulary-parallel row reduction (tp2 on the GPU)",
     "model/kernels/vocab_parallel.cu",
     "  sh[threadIdx.x] = x;\n  __syncthreads();\n",
     "  sh[threadIdx.x] = x;\n",
     "kernels_cuda_test", "VocabParallelCuda.*"),
    ("the tp embedding backward adds every token into rank 0's rows (v0 ignored)", "model/kernels/encoder.cu",
     "  const int64_t local = token - v0;",
     "  const int64_t local = token;",
     "kernels_cuda_test", "VocabParallelCuda.*"),
    ("removed __syncthreads in the key/value-cache attention's softmax reduction", "model/kernels/kv_cache.cu",
     "  sh[threadIdx.x] = x;\n  __syncthreads();\n",
     "  sh[threadIdx.x] = x;\n",
     "kernels_cuda_test", "AttentionCachedCuda.*"),
]


def run(cmd, timeout):
    try:
        p = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)
        return p.returncode, p.stdout
    except subprocess.TimeoutExpired as e:
        return 124, (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")


def build(build_dir, target):
    code, out = run(["cmake", "--build", build_dir, "-j2", "--target", target], 1800)
    if code != 0:
        sys.stdout.write(out[-3000:])
    return code == 0


def main():
    build_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "build", "emulation")
    targets = sorted({m[4] for m in MUTATIONS})
    for t in targets:  # the unmutated tests must pass first, or a failure proves nothing
        if not build(build_dir, t):
            print(f"mutation check: cannot build {t}")
            return 2
        # (the cases the mutations run, not the whole file: the emulated suite runs that)
        cases = ":".join(sorted({m[5] for m in MUTATIONS if m[4] == t}))
        code, out = run([os.path.join(build_dir, "tests", t), "--gtest_brief=1", "--gtest_filter=" + cases], 1200)
        if code != 0:
            sys.stdout.write(out[-3000:])
            print(f"mutation check: {t} fails before any mutation")
            return 2
    caught = 0
    for what, rel, find, replace, target, gtest_filter in MUTATIONS:
        path = os.path.join(ROOT, rel)
        with open(path) as f:
            original = f.read()
        if original.count(find) < 1:
            print(f"mutation check: the text to mutate for '{what}' is no longer in {rel}; update the mutation")
            return 2
        t0 = time.time()
        try:
            with open(path, "w") as f:
                f.write(original.replace(find, replace, 1))
            if not build(build_dir, target):
                verdict, ok = "does not compile (not counted as caught)", False
            else:
                code, out = run([os.path.join(build_dir, "tests", target), "--gtest_brief=1",
                                 "--gtest_filter=" + gtest_filter], 1200)
                ok = code != 0
                verdict = "caught" if ok else "NOT CAUGHT: the emulated tests still pass"
                if ok:  # the first line that says why
                    why = [l.strip() for l in out.splitlines()
                           if "runtime error" in l or "emulation]" in l or "Expected" in l or "Which is" in l]
                    if why:
                        verdict += ": " + why[0][:160]
        finally:
            with open(path, "w") as f:
                f.write(original)
        caught += ok
        print(f"  {'ok ' if ok else 'BAD'} {what} ({rel}, {target}): {verdict} [{time.time() - t0:.0f} s]", flush=True)
    for t in targets:  # leave the build as the sources are
        build(build_dir, t)
    print(f"mutation check: {caught} of {len(MUTATIONS)} injected bugs caught by the emulated tests")
    return 0 if caught == len(MUTATIONS) else 1


if __name__ == "__main__":
    sys.exit(main())
