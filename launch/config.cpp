// The configuration schema and its TOML / --set readers. Every key is declared once in
// schema(): its name, type, meaning and where it lives in Config; parsing, validation messages,
// printing and the reference text all come from that table.
#include "launch/config.h"

#include <charconv>
#include <cmath>
#include <functional>
#include <sstream>
#include <variant>

#define TOML_EXCEPTIONS 1
#include <toml++/toml.h>

#include "core/error.h"
#include "launch/train/stop_signals.h"

namespace meshtrain {
namespace {

using Value = std::variant<int64_t, double, std::string, bool>;
enum class Kind { integer, number, string, boolean };

struct Key {
  std::string name;  // "section.key"
  Kind kind;
  std::string help;
  std::function<void(Config&, const Value&)> set;
  std::function<Value(const Config&)> get;
  int64_t min = INT64_MIN;  // for integers
};

const char* kind_name(Kind k) {
  switch (k) {
    case Kind::integer: return "an integer";
    case Kind::number: return "a number";
    case Kind::string: return "a string";
    case Kind::boolean: return "true or false";
  }
  return "?";
}

template <class T>
Key make_key(std::string name, Kind kind, std::string help, T Config::*section, auto member, int64_t min = INT64_MIN) {
  Key k{std::move(name), kind, std::move(help), nullptr, nullptr, min};
  k.set = [section, member, kind](Config& c, const Value& v) {
    auto& field = (c.*section).*member;
    using F = std::decay_t<decltype(field)>;
    if constexpr (std::is_same_v<F, std::string>) field = std::get<std::string>(v);
    else if constexpr (std::is_same_v<F, bool>) field = std::get<bool>(v);
    else if constexpr (std::is_floating_point_v<F>) field = static_cast<F>(std::get<double>(v));
    else field = static_cast<F>(std::get<int64_t>(v));
    (void)kind;
  };
  k.get = [section, member](const Config& c) -> Value {
    const auto& field = (c.*section).*member;
    using F = std::decay_t<decltype(field)>;
    if constexpr (std::is_same_v<F, std::string>) return field;
    else if constexpr (std::is_same_v<F, bool>) return field;
    else if constexpr (std::is_floating_point_v<F>) return static_cast<double>(field);
    else return static_cast<int64_t>(field);
  };
  return k;
}

const std::vector<Key>& schema() {
  static const std::vector<Key> keys = [] {
    using C = Config;
    std::vector<Key> k;
    k.push_back(make_key("model.n_layer", Kind::integer, "transformer blocks", &C::model, &GptConfig::n_layer, 1));
    k.push_back(make_key("model.n_head", Kind::integer, "attention heads", &C::model, &GptConfig::n_head, 1));
    k.push_back(make_key("model.n_embd", Kind::integer, "channels (a multiple of n_head)", &C::model,
                         &GptConfig::n_embd, 1));
    k.push_back(make_key("model.seq_len", Kind::integer, "context length T", &C::model, &GptConfig::seq_len, 1));
    k.push_back(make_key("model.vocab_size", Kind::integer, "vocabulary size; 0 = the tokenizer's", &C::model,
                         &GptConfig::vocab_size, 0));
    k.push_back(make_key("model.pos_embedding", Kind::string,
                         "positions: learned (GPT-2's wpe table) or rope (rotary, half-split as in Llama/GPT-NeoX)",
                         &C::model, &GptConfig::pos_embedding));
    k.push_back(make_key("model.rope_theta", Kind::number, "RoPE base (pair i turns by position * theta^(-2i/hs))",
                         &C::model, &GptConfig::rope_theta));
    k.push_back(make_key("data.train", Kind::string, "training shards (paths or globs, comma-separated); "
                         "empty = the built-in corpus", &C::data, &DataConfig::train));
    k.push_back(make_key("data.val", Kind::string, "validation shards; empty = none (or the built-in corpus's)",
                         &C::data, &DataConfig::val));
    k.push_back(make_key("data.tokenizer", Kind::string, "tokenizer directory (encoder.json + vocab.bpe)",
                         &C::data, &DataConfig::tokenizer));
    k.push_back(make_key("train.batch_size", Kind::integer, "sequences per micro-batch", &C::train,
                         &TrainConfig::batch_size, 1));
    k.push_back(make_key("train.grad_accum", Kind::integer, "micro-batches per optimizer step", &C::train,
                         &TrainConfig::grad_accum, 1));
    k.push_back(make_key("train.steps", Kind::integer, "optimizer steps", &C::train, &TrainConfig::steps, 1));
    k.push_back(make_key("train.lr", Kind::number, "peak learning rate", &C::train, &TrainConfig::lr));
    k.push_back(make_key("train.min_lr", Kind::number, "learning rate at the end of the cosine decay", &C::train,
                         &TrainConfig::min_lr));
    k.push_back(make_key("train.warmup_steps", Kind::integer, "linear warm-up steps", &C::train,
                         &TrainConfig::warmup_steps, 0));
    k.push_back(make_key("train.weight_decay", Kind::number, "AdamW decoupled weight decay (matrices only)",
                         &C::train, &TrainConfig::weight_decay));
    k.push_back(make_key("train.grad_clip", Kind::number, "global gradient-norm clip; 0 = off", &C::train,
                         &TrainConfig::grad_clip));
    k.push_back(make_key("train.seed", Kind::integer, "seed for initialisation, shuffling and sampling", &C::train,
                         &TrainConfig::seed, 0));
    k.push_back(make_key("train.eval_every", Kind::integer, "steps between validation losses; 0 = at the end",
                         &C::train, &TrainConfig::eval_every, 0));
    k.push_back(make_key("train.eval_batches", Kind::integer, "validation micro-batches per evaluation", &C::train,
                         &TrainConfig::eval_batches, 1));
    k.push_back(make_key("train.sample_every", Kind::integer, "steps between samples; 0 = at the end only, -1 = never",
                         &C::train, &TrainConfig::sample_every, -1));
    k.push_back(make_key("train.sample_tokens", Kind::integer, "tokens per sample", &C::train,
                         &TrainConfig::sample_tokens, 1));
    k.push_back(make_key("train.checkpoint_every", Kind::integer, "steps between checkpoints; 0 = at the end",
                         &C::train, &TrainConfig::checkpoint_every, 0));
    k.push_back(make_key("train.keep_checkpoints", Kind::integer, "keep the newest K checkpoints; 0 = all",
                         &C::train, &TrainConfig::keep_checkpoints, 0));
    k.push_back(make_key("train.out_dir", Kind::string, "folder for checkpoints (and the built-in corpus)", &C::train,
                         &TrainConfig::out_dir));
    k.push_back(make_key("train.threads", Kind::integer, "CPU threads; 0 = the cores available", &C::train,
                         &TrainConfig::threads, 0));
    k.push_back(make_key("train.log_every", Kind::integer, "steps between plain log lines", &C::train,
                         &TrainConfig::log_every, 1));
    k.push_back(make_key("train.shuffle", Kind::boolean, "shuffle training windows each epoch", &C::train,
                         &TrainConfig::shuffle));
    k.push_back(make_key("train.recompute", Kind::string,
                         "activation recomputation: none, selective (attention, GELU) or full (whole blocks)",
                         &C::train, &TrainConfig::recompute));
    k.push_back(make_key("train.device", Kind::string, "auto (CUDA when a GPU is present), cpu or cuda", &C::train,
                         &TrainConfig::device));
    k.push_back(make_key("train.precision", Kind::string,
                         "fp32, or bf16 (CUDA: bf16 weights/activations/gradients, fp32 master weights and moments; "
                         "CPU: GEMMs in bf16 through oneDNN, everything else fp32)",
                         &C::train, &TrainConfig::precision));
    k.push_back(make_key("train.cuda_graph", Kind::boolean, "CUDA: capture the whole training step in a graph",
                         &C::train, &TrainConfig::cuda_graph));
    k.push_back(make_key("train.attention", Kind::string, "CUDA attention: flash (fused) or materialised",
                         &C::train, &TrainConfig::attention));
    k.push_back(make_key("train.resume_schedule", Kind::string,
                         "when a resume changes steps/warm-up/lr/min_lr: continue (decay on from the current "
                         "rate) or restart (jump to the new plan)", &C::train, &TrainConfig::resume_schedule));
    k.push_back(make_key("train.stop_signal", Kind::string,
                         "a signal besides SIGINT/SIGTERM that checkpoints and stops, e.g. USR1 for Slurm's "
                         "--signal=USR1@120; empty = none", &C::train, &TrainConfig::stop_signal));
    k.push_back(make_key("train.peak_tflops", Kind::number,
                         "dense TFLOP/s of one device for the MFU in the step log; 0 = known from the GPU's name "
                         "(H100/H200, A100), no MFU otherwise", &C::train, &TrainConfig::peak_tflops));
    k.push_back(make_key("train.trace_steps", Kind::string,
                         "with --trace: the steps recorded, FIRST:LAST (1-based, inclusive); empty = every step",
                         &C::train, &TrainConfig::trace_steps));
    k.push_back(make_key("parallel.dp", Kind::integer, "data-parallel ranks; 0 = the ranks left after tp",
                         &C::parallel, &ParallelConfig::dp, 0));
    k.push_back(make_key("parallel.tp", Kind::integer, "tensor-parallel ranks (divide model.n_head)", &C::parallel,
                         &ParallelConfig::tp, 1));
    k.push_back(make_key("parallel.pp", Kind::integer, "pipeline stages (at most model.n_layer)", &C::parallel,
                         &ParallelConfig::pp, 1));
    k.push_back(make_key("parallel.schedule", Kind::string, "pipeline schedule: gpipe or 1f1b", &C::parallel,
                         &ParallelConfig::schedule));
    k.push_back(make_key("parallel.zero", Kind::integer, "0 = replicated optimizer, 1 = ZeRO-1 (sharded state)",
                         &C::parallel, &ParallelConfig::zero, 0));
    k.push_back(make_key("parallel.bucket_mb", Kind::number, "gradient bucket size (MiB) for overlapped reduction",
                         &C::parallel, &ParallelConfig::bucket_mb));
    k.push_back(make_key("parallel.microbatches", Kind::integer,
                         "micro-batches per rank and step; 0 = train.grad_accum", &C::parallel,
                         &ParallelConfig::microbatches, 0));
    k.push_back(make_key("parallel.comm", Kind::string,
                         "how ranks exchange tensors: auto, mpi (GPU tensors staged through host memory; several "
                         "ranks may share a GPU) or nccl (GPU to GPU, one GPU per rank)", &C::parallel,
                         &ParallelConfig::comm));
    k.push_back(make_key("parallel.timeout_s", Kind::number,
                         "a rank blocked this many seconds in a collective or receive, or in a wait for its GPU's "
                         "stream (a peer died or hung) ends the job with a message; 0 = wait forever",
                         &C::parallel, &ParallelConfig::timeout_s));
    k.push_back(make_key("lora.rank", Kind::integer, "finetune: rank r of each adapter (A is r x C_in, B is C_out x r)",
                         &C::lora, &LoraConfig::rank, 1));
    k.push_back(make_key("lora.alpha", Kind::number, "finetune: the adapter branch is scaled by alpha / rank",
                         &C::lora, &LoraConfig::alpha));
    k.push_back(make_key("lora.targets", Kind::string,
                         "finetune: adapted layers, comma-separated from qkv, proj, fc, fc_proj", &C::lora,
                         &LoraConfig::targets));
    return k;
  }();
  return keys;
}

const Key* find_key(const std::string& name) {
  for (const auto& k : schema())
    if (k.name == name) return &k;
  return nullptr;
}

[[noreturn]] void unknown_key(const std::string& name, const std::string& origin) {
  std::string section = name.substr(0, name.find('.'));
  std::vector<std::string> known;
  for (const auto& k : schema())
    if (k.name.rfind(section + ".", 0) == 0) known.push_back(k.name);
  if (known.empty())
    MT_FAIL("[config] unknown key '{}'{}: sections are [model], [data], [train], [parallel] and [lora]", name, origin);
  MT_FAIL("[config] unknown key '{}'{}; known keys: {}", name, origin, fmt::join(known, ", "));
}

// Where s stops being well-formed UTF-8 (RFC 3629: no overlong forms, no surrogates, nothing past
// U+10FFFF), or npos. A configuration is stored as TOML in every checkpoint, and TOML is UTF-8.
size_t utf8_error_at(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto b = static_cast<unsigned char>(s[i]);
    const int n = b < 0x80 ? 0 : (b >> 5) == 0x6 ? 1 : (b >> 4) == 0xE ? 2 : (b >> 3) == 0x1E ? 3 : -1;
    if (n < 0 || i + n >= s.size() + (n == 0 ? 1 : 0)) return i;
    uint32_t cp = n == 0 ? b : b & (0x3F >> n);
    for (int k = 1; k <= n; ++k) {
      const auto c = static_cast<unsigned char>(s[i + k]);
      if ((c >> 6) != 0x2) return i;
      cp = (cp << 6) | (c & 0x3F);
    }
    const uint32_t lowest[] = {0, 0x80, 0x800, 0x10000};
    if (cp < lowest[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return i;
    i += n + 1;
  }
  return std::string::npos;
}

void set_checked(Config& cfg, const Key& key, const Value& v, const std::string& origin) {
  if (key.kind == Kind::string) {
    const std::string& text = std::get<std::string>(v);
    MT_CHECK(text.find('\0') == std::string::npos, "[config] {} contains a NUL character{}", key.name, origin);
    const size_t bad = utf8_error_at(text);
    MT_CHECK(bad == std::string::npos, "[config] {} is not valid UTF-8 (byte {} of the value){}", key.name, bad,
             origin);
  }
  if (key.kind == Kind::integer && std::get<int64_t>(v) < key.min)
    MT_FAIL("[config] {} must be an integer >= {} (got {}){}", key.name, key.min, std::get<int64_t>(v), origin);
  if (key.kind == Kind::integer && std::get<int64_t>(v) > INT32_MAX && key.name != "train.seed")
    MT_FAIL("[config] {} = {} is too large{}", key.name, std::get<int64_t>(v), origin);
  if (key.kind == Kind::number && !std::isfinite(std::get<double>(v)))
    MT_FAIL("[config] {} must be a finite number{}", key.name, origin);
  key.set(cfg, v);
}

Value parse_text_value(const Key& key, const std::string& text) {
  auto bad = [&]() -> Value {
    MT_FAIL("[config] {} expects {} (got '{}')", key.name, kind_name(key.kind), text);
  };
  switch (key.kind) {
    case Kind::integer: {
      int64_t v = 0;
      auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
      if (ec != std::errc() || end != text.data() + text.size() || text.empty()) return bad();
      return v;
    }
    case Kind::number: {
      char* end = nullptr;
      double v = std::strtod(text.c_str(), &end);
      if (text.empty() || end != text.c_str() + text.size()) return bad();
      return v;
    }
    case Kind::boolean:
      if (text == "true" || text == "1") return true;
      if (text == "false" || text == "0") return false;
      return bad();
    case Kind::string:
      if (text.size() >= 2 && (text.front() == '"' || text.front() == '\'') && text.back() == text.front())
        return text.substr(1, text.size() - 2);
      return text;
  }
  return bad();
}

Value toml_value(const Key& key, const toml::node& node, const std::string& origin) {
  switch (key.kind) {
    case Kind::integer:
      if (auto v = node.value_exact<int64_t>()) return *v;
      break;
    case Kind::number:
      if (auto v = node.value_exact<double>()) return *v;
      if (auto v = node.value_exact<int64_t>()) return static_cast<double>(*v);
      break;
    case Kind::string:
      if (auto v = node.value_exact<std::string>()) return *v;
      break;
    case Kind::boolean:
      if (auto v = node.value_exact<bool>()) return *v;
      break;
  }
  MT_FAIL("[config] {} expects {}{}", key.name, kind_name(key.kind), origin);
}

void apply_table(Config& cfg, const toml::table& root, const std::string& source) {
  for (const auto& [section, node] : root) {
    const toml::table* tbl = node.as_table();
    if (!tbl) unknown_key(std::string(section.str()), " in " + source);
    for (const auto& [name, value] : *tbl) {
      std::string full = std::string(section.str()) + "." + std::string(name.str());
      const Key* key = find_key(full);
      std::string origin = fmt::format(" ({} line {})", source, value.source().begin.line);
      if (!key) unknown_key(full, origin);
      set_checked(cfg, *key, toml_value(*key, value, origin), origin);
    }
  }
}

std::string value_to_toml(const Value& v) {
  if (auto* s = std::get_if<std::string>(&v)) {
    std::ostringstream os;
    os << toml::value<std::string>(*s);
    return os.str();
  }
  if (auto* b = std::get_if<bool>(&v)) return *b ? "true" : "false";
  if (auto* d = std::get_if<double>(&v)) return fmt::format("{:.17g}", *d).find_first_of(".e") == std::string::npos
                                                    ? fmt::format("{:.17g}.0", *d)
                                                    : fmt::format("{:.17g}", *d);
  return std::to_string(std::get<int64_t>(v));
}

}  // namespace

Config default_config() {
  Config c;
  c.model.n_layer = 4;
  c.model.n_head = 4;
  c.model.n_embd = 256;
  c.model.seq_len = 128;
  c.model.vocab_size = 0;
  return c;
}

void apply_override(Config& cfg, const std::string& assignment) {
  auto eq = assignment.find('=');
  MT_CHECK(eq != std::string::npos && eq > 0,
           "[config] --set expects section.key=value (got '{}'), e.g. --set train.steps=100", assignment);
  std::string name = assignment.substr(0, eq);
  const Key* key = find_key(name);
  if (!key) unknown_key(name, " in --set");
  set_checked(cfg, *key, parse_text_value(*key, assignment.substr(eq + 1)), " in --set");
}

Config config_from_toml(const std::string& text, const std::string& origin) {
  Config cfg = default_config();
  try {
    toml::table root = toml::parse(text, origin);
    apply_table(cfg, root, origin);
  } catch (const toml::parse_error& e) {
    MT_FAIL("[config] {} is not valid TOML: {} (line {}, column {})", origin, e.description(),
            e.source().begin.line, e.source().begin.column);
  }
  return cfg;
}

namespace {
toml::table parse_config_file(const std::string& file) {
  try {
    return toml::parse_file(file);
  } catch (const toml::parse_error& e) {
    MT_FAIL("[config] cannot read '{}': {} (line {}, column {})", file, e.description(), e.source().begin.line,
            e.source().begin.column);
  }
}
}  // namespace

void apply_config_file(Config& cfg, const std::string& file) { apply_table(cfg, parse_config_file(file), file); }

std::vector<std::string> keys_named(const std::string& file, const std::vector<std::string>& overrides) {
  std::vector<std::string> keys;
  if (!file.empty())
    for (const auto& [section, node] : parse_config_file(file))
      if (const toml::table* tbl = node.as_table())
        for (const auto& kv : *tbl) keys.push_back(std::string(section.str()) + "." + std::string(kv.first.str()));
  for (const auto& o : overrides) keys.push_back(o.substr(0, o.find('=')));
  return keys;
}

std::string config_value(const Config& cfg, const std::string& key) {
  const Key* k = find_key(key);
  MT_CHECK(k, "[config] no key '{}'", key);
  return value_to_toml(k->get(cfg));
}

Config load_config(const std::string& file, const std::vector<std::string>& overrides) {
  Config cfg = default_config();
  if (!file.empty()) apply_config_file(cfg, file);
  for (const auto& o : overrides) apply_override(cfg, o);
  validate_config(cfg);
  return cfg;
}

BatchSplit split_batch(const Config& cfg, int dp) {
  BatchSplit s;
  s.global_rows = cfg.train.batch_size * cfg.train.grad_accum;
  s.micro_count = cfg.parallel.microbatches > 0 ? cfg.parallel.microbatches : cfg.train.grad_accum;
  if (dp < 1 || s.micro_count < 1 || s.global_rows % (dp * s.micro_count) != 0) {
    s.error = fmt::format("a step's {} sequences (train.batch_size {} x train.grad_accum {}) must divide by "
                          "parallel.dp {} x micro-batches {} = {}", s.global_rows, cfg.train.batch_size,
                          cfg.train.grad_accum, dp, s.micro_count, dp * s.micro_count);
    return s;
  }
  s.rank_rows = s.global_rows / dp;
  s.micro_rows = s.rank_rows / s.micro_count;
  return s;
}

void validate_config(const Config& cfg) {
  const auto& m = cfg.model;
  MT_CHECK(m.n_embd % m.n_head == 0, "[config] model.n_embd ({}) must be a multiple of model.n_head ({})", m.n_embd,
           m.n_head);
  m.validate_positions();
  validate_lora(cfg.lora);
  const auto& t = cfg.train;
  MT_CHECK(t.lr > 0.0, "[config] train.lr must be > 0 (got {})", t.lr);
  MT_CHECK(t.min_lr >= 0.0 && t.min_lr <= t.lr, "[config] train.min_lr must be in [0, train.lr] (got {})", t.min_lr);
  MT_CHECK(t.weight_decay >= 0.0, "[config] train.weight_decay must be >= 0 (got {})", t.weight_decay);
  MT_CHECK(t.grad_clip >= 0.0, "[config] train.grad_clip must be >= 0 (got {})", t.grad_clip);
  MT_CHECK(!t.out_dir.empty(), "[config] train.out_dir must not be empty");
  MT_CHECK(t.recompute == "none" || t.recompute == "selective" || t.recompute == "full",
           "[config] train.recompute must be none, selective or full (got '{}')", t.recompute);
  MT_CHECK(t.device == "auto" || t.device == "cpu" || t.device == "cuda",
           "[config] train.device must be auto, cpu or cuda (got '{}')", t.device);
  MT_CHECK(t.precision == "fp32" || t.precision == "bf16", "[config] train.precision must be fp32 or bf16 (got '{}')",
           t.precision);
  MT_CHECK(t.attention == "flash" || t.attention == "materialised",
           "[config] train.attention must be flash or materialised (got '{}')", t.attention);
  MT_CHECK(t.resume_schedule == "continue" || t.resume_schedule == "restart",
           "[config] train.resume_schedule must be continue or restart (got '{}')", t.resume_schedule);
  MT_CHECK(t.stop_signal.empty() || signal_number(t.stop_signal) > 0,
           "[config] train.stop_signal must be a signal name such as USR1, USR2, HUP or QUIT (got '{}')",
           t.stop_signal);
  MT_CHECK(t.device != "cpu" || !t.cuda_graph,
           "[config] train.device = cpu runs without CUDA graphs (its kernels are function calls); set "
           "train.cuda_graph = false, or train.device = cuda");
  MT_CHECK(t.peak_tflops >= 0.0, "[config] train.peak_tflops must be >= 0 (0 = from the GPU's name; got {})",
           t.peak_tflops);
  const auto& p = cfg.parallel;
  MT_CHECK(p.zero <= 1, "[config] parallel.zero must be 0 or 1 (got {})", p.zero);
  MT_CHECK(p.schedule == "gpipe" || p.schedule == "1f1b", "[config] parallel.schedule must be gpipe or 1f1b (got '{}')",
           p.schedule);
  MT_CHECK(p.bucket_mb > 0.0, "[config] parallel.bucket_mb must be > 0 (got {})", p.bucket_mb);
  MT_CHECK(p.timeout_s >= 0.0, "[config] parallel.timeout_s must be >= 0 (0 = no limit; got {})", p.timeout_s);
  MT_CHECK(p.comm == "auto" || p.comm == "mpi" || p.comm == "nccl",
           "[config] parallel.comm must be auto, mpi or nccl (got '{}')", p.comm);
  MT_CHECK(p.comm != "nccl" || t.device != "cpu",
           "[config] parallel.comm = nccl moves GPU tensors, but train.device = cpu; use parallel.comm = mpi (or "
           "auto) on the CPU, or train.device = cuda");
}

std::string config_to_toml(const Config& cfg) {
  std::string out, section;
  for (const auto& k : schema()) {
    std::string sec = k.name.substr(0, k.name.find('.'));
    if (sec != section) {
      out += (section.empty() ? "[" : "\n[") + sec + "]\n";
      section = sec;
    }
    out += fmt::format("{} = {}\n", k.name.substr(sec.size() + 1), value_to_toml(k.get(cfg)));
  }
  return out;
}

std::string config_reference() {
  Config d = default_config();
  std::string out;
  for (const auto& k : schema())
    out += fmt::format("  {:<24} {:<12} default {:<16} {}\n", k.name, kind_name(k.kind), value_to_toml(k.get(d)),
                       k.help);
  return out;
}

ActivationSizing run_sizing(const Config& cfg, bool on_gpu) {
  if (!on_gpu) return {Device::cpu, DType::f32, AttentionKind::materialised};  // bf16 GEMMs keep fp32 activations
  return {Device::cuda, cfg.train.precision == "bf16" ? DType::bf16 : DType::f32,
          cfg.train.attention == "flash" ? AttentionKind::flash : AttentionKind::materialised};
}

std::unique_ptr<Backend> make_run_backend(const Config& cfg, bool on_gpu) {
  const ActivationSizing s = run_sizing(cfg, on_gpu);
  if (on_gpu) return make_cuda_backend(s.dtype, s.attention);
  return make_cpu_backend(cfg.train.precision == "bf16");
}

}  // namespace meshtrain
