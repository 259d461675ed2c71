// Tokenizer throughput on one core: GPT-2 encoding of a text file with a cold word cache (a fresh
// tokenizer per run) and a warm one (the same tokenizer again), then BPE training to vocab 4096.
// Usage: tokenizer_bench [gpt2_dir] [text_file]; defaults come from the shared data folder.
#include <pthread.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/threads.h"
#include "core/timer.h"
#include "model/text/tokenizer.h"

namespace {

namespace fs = std::filesystem;
using meshtrain::now_seconds;

// One core, so the numbers mean "per core" whatever else the machine is doing with the others.
void pin_to_one_core() {
  meshtrain::set_num_threads(1);
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) != 0) return;
  for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
    if (CPU_ISSET(cpu, &set)) {
      cpu_set_t one;
      CPU_ZERO(&one);
      CPU_SET(cpu, &one);
      pthread_setaffinity_np(pthread_self(), sizeof(one), &one);
      std::printf("pinned to cpu %d\n", cpu);
      return;
    }
  }
}

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

int run(const std::string& vocab_dir, const std::string& text_path) {
  pin_to_one_core();
  const std::string text = read_text(text_path);
  const double mb = static_cast<double>(text.size()) / 1e6;
  std::printf("text: %s (%.2f MB)\n", text_path.c_str(), mb);

  constexpr int kRuns = 5;
  std::vector<double> load_s, cold_s, warm_s;
  size_t tokens = 0;
  for (int r = 0; r < kRuns; ++r) {
    double t0 = now_seconds();
    meshtrain::Tokenizer tok = meshtrain::Tokenizer::load(vocab_dir);
    double t1 = now_seconds();
    tokens = tok.encode(text).size();
    double t2 = now_seconds();
    tok.encode(text);
    double t3 = now_seconds();
    load_s.push_back(t1 - t0);
    cold_s.push_back(t2 - t1);
    warm_s.push_back(t3 - t2);
  }
  std::printf("load %s: %.1f ms (median of %d)\n", vocab_dir.c_str(), 1e3 * median(load_s), kRuns);
  std::printf("encode, cold cache: %.1f ms = %.1f MB/s, %zu tokens (median of %d)\n", 1e3 * median(cold_s),
              mb / median(cold_s), tokens, kRuns);
  std::printf("encode, warm cache: %.1f ms = %.1f MB/s (median of %d)\n", 1e3 * median(warm_s), mb / median(warm_s),
              kRuns);

  fs::path out = fs::temp_directory_path() / ("meshtrain_tokenizer_bench_" + std::to_string(::getpid()));
  double t0 = now_seconds();
  meshtrain::train_bpe({text_path}, 4096, out.string());
  double t1 = now_seconds();
  meshtrain::Tokenizer trained = meshtrain::Tokenizer::load(out.string());
  size_t trained_tokens = trained.encode(text).size();
  std::printf("train_bpe vocab 4096: %.2f s; that vocabulary encodes the text to %zu tokens\n", t1 - t0,
              trained_tokens);
  std::error_code ec;
  fs::remove_all(out, ec);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  fs::path data = fs::path(MESHTRAIN_SOURCE_DIR).parent_path() / "shared" / "data";
  std::string vocab_dir = argc > 1 ? argv[1] : (data / "gpt2").string();
  std::string text_path = argc > 2 ? argv[2] : (data / "tinyshakespeare" / "input.txt").string();
  if (!fs::is_regular_file(fs::path(vocab_dir) / "encoder.json") || !fs::is_regular_file(text_path)) {
    std::printf("tokenizer_bench: data not found (%s, %s); nothing to measure\n", vocab_dir.c_str(), text_path.c_str());
    return 0;
  }
  try {
    return run(vocab_dir, text_path);
  } catch (const meshtrain::Error& e) {
    std::fprintf(stderr, "tokenizer_bench: %s\n", e.what());
    return 1;
  }
}
