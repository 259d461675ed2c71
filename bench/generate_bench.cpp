// Generation speed with and without the key/value cache on the benchmark model (random weights,
// greedy): tokens/s of each and the speed-up, and whether the two gave the same tokens while the
// context fits seq_len. Prints numbers, never fails on a slow machine.
// Usage: generate_bench [--new N] [--prompt N] [--threads N] [--device cpu|cuda] [--set key=value]...
#include <algorithm>
#include <cstddef>
#include <cstdio>
#include <string>
#include <vector>

#include "core/communicator.h"
#include "core/device.h"
#include "core/rng.h"
#include "core/threads.h"
#include "core/timer.h"
#include "launch/config.h"
#include "launch/generate.h"
#include "model/backend.h"
#include "model/gpt.h"

using namespace meshtrain;

namespace {

struct Run {
  std::vector<int32_t> tokens;
  double seconds = 0.0;
};

Run greedy(Gpt& model, bool kv_cache, const std::vector<int32_t>& prompt, int new_tokens, Profiler* prof = nullptr) {
  const int V = model.config().vocab_size;
  NextLogits next = model_logits(model, nullptr, kv_cache);
  std::vector<int32_t> context = prompt;
  Run r;
  model.set_profiler(prof);
  const double t0 = now_seconds();
  for (int i = 0; i < new_tokens; ++i) {
    const float* l = next(context);
    context.push_back(static_cast<int32_t>(std::max_element(l, l + V) - l));
  }
  r.seconds = now_seconds() - t0;
  model.set_profiler(nullptr);
  r.tokens.assign(context.begin() + static_cast<std::ptrdiff_t>(prompt.size()), context.end());
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  Config cfg = default_config();
  cfg.model = GptConfig{};  // n_layer 4, n_head 4, n_embd 256, seq_len 256, vocab 50257
  int new_tokens = 256, prompt_len = 1, threads = 2;
  std::string device = "cpu";
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--new" && i + 1 < argc) new_tokens = std::stoi(argv[++i]);
    else if (a == "--prompt" && i + 1 < argc) prompt_len = std::stoi(argv[++i]);
    else if (a == "--threads" && i + 1 < argc) threads = std::stoi(argv[++i]);
    else if (a == "--device" && i + 1 < argc) device = argv[++i];
    else if (a == "--set" && i + 1 < argc) apply_override(cfg, argv[++i]);
    else {
      std::fprintf(stderr, "usage: %s [--new N] [--prompt N] [--threads N] [--device cpu|cuda] [--set key=value]...\n",
                   argv[0]);
      return 2;
    }
  }
  if (device != "cpu" && device != "cuda") {
    std::fprintf(stderr, "generate_bench: --device is cpu or cuda, not '%s'\n", device.c_str());
    return 2;
  }
  if (device == "cuda" && cuda_device_count() == 0) {
    std::printf("generate_bench: no CUDA device; skipped\n");
    return 0;
  }
  set_num_threads(threads);
  LocalCommunicator comm;
  Gpt model(cfg.model, comm, nullptr, 1, 0, device == "cuda" ? make_cuda_backend(DType::f32) : nullptr);
  model.initialize(1);
  CounterRng rng(7, 0);
  std::vector<int32_t> prompt(static_cast<size_t>(prompt_len));
  for (auto& t : prompt) t = static_cast<int32_t>(rng.below(cfg.model.vocab_size));
  std::printf("model: L=%d H=%d C=%d seq_len=%d vocab=%d, %s, %d threads, %s positions; prompt %d token(s), %d new\n",
              cfg.model.n_layer, cfg.model.n_head, cfg.model.n_embd, cfg.model.seq_len, cfg.model.vocab_size,
              model.backend().describe().c_str(), threads, cfg.model.pos_embedding.c_str(), prompt_len, new_tokens);
  greedy(model, true, prompt, 4);  // warm-up: allocations, page faults
  const Run cached = greedy(model, true, prompt, new_tokens);
  const Run full = greedy(model, false, prompt, new_tokens);
  Profiler prof;  // a second cached run, timed per region (waits at region ends slow a GPU down)
  greedy(model, true, prompt, new_tokens, &prof);
  // While the context fits seq_len both see the same window, so greedy tokens must agree.
  const size_t fits = static_cast<size_t>(std::max(0, std::min(new_tokens, cfg.model.seq_len - prompt_len + 1)));
  const bool same = std::equal(cached.tokens.begin(), cached.tokens.begin() + static_cast<std::ptrdiff_t>(fits),
                               full.tokens.begin());
  std::printf("%-18s %10s %12s\n", "", "seconds", "tokens/s");
  std::printf("%-18s %10.3f %12.1f\n", "key/value cache", cached.seconds, new_tokens / cached.seconds);
  std::printf("%-18s %10.3f %12.1f\n", "full recompute", full.seconds, new_tokens / full.seconds);
  std::printf("speed-up: %.1fx; greedy tokens identical over the first %zu: %s\n", full.seconds / cached.seconds, fits,
              same ? "yes" : "NO");
  std::printf("cached decoding, ms per token by region:");
  for (const auto& [region, seconds] : prof.totals()) std::printf(" %s %.3f", region.c_str(), 1e3 * seconds / new_tokens);
  std::printf("\n");
  return 0;
}
