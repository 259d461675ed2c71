// The completion server and the terminal chat (serve.h).
#include "launch/serve/serve.h"

#include <pthread.h>
#include <signal.h>

#include <chrono>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <iostream>
#include <thread>

#include <httplib.h>
#include <nlohmann/json.hpp>

#include "core/communicator.h"
#include "launch/serve/chat_page.h"
#include "model/gpt.h"

namespace meshtrain {

using json = nlohmann::json;

namespace {

[[noreturn]] void bad(const std::string& param, const std::string& message) { throw BadRequest{message, param}; }

double number_field(const json& body, const char* key, double lo, double hi, const char* range) {
  const json& v = body[key];
  if (!v.is_number()) bad(key, fmt::format("'{}' must be a number {}", key, range));
  const double x = v.get<double>();
  if (!(x >= lo && x <= hi)) bad(key, fmt::format("'{}' must be {} (got {})", key, range, x));
  return x;
}

int64_t int_field(const json& body, const char* key, int64_t lo, int64_t hi) {
  const json& v = body[key];
  if (!v.is_number_integer()) bad(key, fmt::format("'{}' must be an integer", key));
  const int64_t x = v.get<int64_t>();
  if (x < lo || x > hi) bad(key, fmt::format("'{}' must be in [{}, {}] (got {})", key, lo, hi, x));
  return x;
}

}  // namespace

CompletionRequest parse_completion_request(const std::string& text, int seq_len) {
  json body;
  try {
    body = json::parse(text);
  } catch (const json::exception& e) {  // a syntax error, or a number past double's range
    bad("", fmt::format("the body is not valid JSON: {}", e.what()));
  }
  if (!body.is_object()) bad("", "the body must be a JSON object, e.g. {\"prompt\": \"Hello\", \"max_tokens\": 20}");
  static const char* kKnown[] = {"prompt", "max_tokens", "temperature", "top_p",  "top_k", "repetition_penalty",
                                 "stop",   "seed",       "stream",      "n",      "model"};
  for (const auto& [key, value] : body.items()) {
    bool known = false;
    for (const char* k : kKnown) known = known || key == k;
    if (!known)
      bad(key, fmt::format("unknown field '{}'; this server takes prompt, max_tokens, temperature, top_p, top_k, "
                           "repetition_penalty, stop, seed, stream, n and model", key));
  }
  CompletionRequest r;
  if (!body.contains("prompt") || !body["prompt"].is_string()) bad("prompt", "'prompt' (a string) is required");
  r.prompt = body["prompt"].get<std::string>();
  if (body.contains("max_tokens")) r.max_tokens = static_cast<int>(int_field(body, "max_tokens", 1, 1 << 20));
  r.max_tokens = std::min(r.max_tokens, seq_len);  // capped by the model's context
  if (body.contains("temperature"))
    r.sampling.temperature = static_cast<float>(number_field(body, "temperature", 0.0, 100.0, "in [0, 100]"));
  if (body.contains("top_p")) {
    r.sampling.top_p = static_cast<float>(number_field(body, "top_p", 0.0, 1.0, "in (0, 1]"));
    if (r.sampling.top_p <= 0.0f) bad("top_p", "'top_p' must be in (0, 1] (got 0)");
  }
  if (body.contains("top_k")) r.sampling.top_k = static_cast<int>(int_field(body, "top_k", 0, 1 << 24));
  if (body.contains("repetition_penalty")) {
    r.sampling.repetition_penalty =
        static_cast<float>(number_field(body, "repetition_penalty", 0.0, 100.0, "in (0, 100]"));
    if (r.sampling.repetition_penalty <= 0.0f) bad("repetition_penalty", "'repetition_penalty' must be > 0");
  }
  if (body.contains("stop")) {
    const json& s = body["stop"];
    if (s.is_string()) {
      r.stop.push_back(s.get<std::string>());
    } else if (s.is_array() && s.size() <= 4) {
      for (const json& x : s) {
        if (!x.is_string()) bad("stop", "'stop' must be a string or an array of up to 4 strings");
        r.stop.push_back(x.get<std::string>());
      }
    } else if (!s.is_null()) {
      bad("stop", "'stop' must be a string or an array of up to 4 strings");
    }
    for (const auto& x : r.stop)
      if (x.empty()) bad("stop", "a 'stop' string is empty");
  }
  if (body.contains("seed")) {
    r.has_seed = true;
    r.seed = static_cast<uint64_t>(int_field(body, "seed", 0, INT64_MAX));
  }
  if (body.contains("stream")) {
    if (!body["stream"].is_boolean()) bad("stream", "'stream' must be true or false");
    r.stream = body["stream"].get<bool>();
  }
  if (body.contains("n") && int_field(body, "n", 1, 1) != 1) bad("n", "'n' must be 1");
  if (body.contains("model") && !body["model"].is_string()) bad("model", "'model' must be a string");
  return r;
}

CompletionService::CompletionService(std::unique_ptr<InferenceModel> model, std::string name)
    : model_(std::move(model)), name_(std::move(name)) {}

std::vector<int32_t> CompletionService::prompt_tokens_of(const std::string& prompt) const {
  std::vector<int32_t> tokens = prompt_tokens(*model_->tokenizer, prompt);
  if (static_cast<int>(tokens.size()) > context_length())
    bad("prompt", fmt::format("the prompt is {} tokens; this model's context is {}", tokens.size(), context_length()));
  return tokens;
}

Generation CompletionService::run(const CompletionRequest& req, const TextSink& emit, int* prompt_len) {
  std::vector<int32_t> context = prompt_tokens_of(req.prompt);
  if (prompt_len) *prompt_len = static_cast<int>(context.size());
  SampleOptions opt;
  opt.max_new_tokens = req.max_tokens;
  opt.sampling = req.sampling;
  opt.stop = req.stop;
  std::lock_guard<std::mutex> one_at_a_time(mutex_);
  CounterRng rng(req.has_seed ? req.seed : next_seed_++, 2);
  return stream_sample(model_->logits(true), model_->config.model, *model_->tokenizer, std::move(context), opt, rng,
                       emit);
}

namespace {

std::string finish_reason(const std::string& finish) { return finish == "length" ? "length" : "stop"; }

json error_body(const std::string& message, const std::string& type, const std::string& param = "") {
  json e = {{"message", message}, {"type", type}};
  e["param"] = param.empty() ? json(nullptr) : json(param);
  return {{"error", e}};
}

void send_error(httplib::Response& res, int status, const std::string& message, const std::string& type,
                const std::string& param = "") {
  res.status = status;
  res.set_content(error_body(message, type, param).dump(), "application/json");
}

/// Thrown by a stream's sink when the client has gone: the generation stops.
struct ClientGone {};

}  // namespace

void run_serve(const ServeArgs& args) {
  // Signals go to one waiting thread (blocked everywhere else), which stops the server.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  LocalCommunicator world;
  std::unique_ptr<InferenceModel> im = load_inference_model(args.model, world);
  const std::string name = std::filesystem::path(im->checkpoint).filename().string() +
                           (args.model.adapter.empty() ? "" : " + " +
                                std::filesystem::path(args.model.adapter).filename().string());
  const std::string describe = im->model->backend().describe();
  CompletionService service(std::move(im), name);
  httplib::Server server;
  server.set_payload_max_length(args.max_body);
  std::atomic<uint64_t> ids{0};

  server.Get("/", [](const httplib::Request&, httplib::Response& res) { res.set_content(kChatPage, "text/html"); });
  server.Get("/health", [](const httplib::Request&, httplib::Response& res) {
    res.set_content(R"({"status":"ok"})", "application/json");
  });
  server.Get("/v1/models", [&](const httplib::Request&, httplib::Response& res) {
    json m = {{"object", "list"},
              {"data", json::array({{{"id", service.name()}, {"object", "model"}, {"owned_by", "meshtrain"},
                                     {"context_length", service.context_length()}}})}};
    res.set_content(m.dump(), "application/json");
  });
  server.Post("/v1/completions", [&](const httplib::Request& req, httplib::Response& res) {
    CompletionRequest cr;
    try {
      cr = parse_completion_request(req.body, service.context_length());
      service.prompt_tokens_of(cr.prompt);  // a prompt too long for the context is the client's error
    } catch (const BadRequest& e) {
      return send_error(res, 400, e.message, "invalid_request_error", e.param);
    }
    const std::string id = fmt::format("cmpl-{}", ++ids);
    const int64_t created = static_cast<int64_t>(std::time(nullptr));
    auto chunk = [&service, id, created](const std::string& text, const json& finish) {
      json c = {{"id", id},
                {"object", "text_completion"},
                {"created", created},
                {"model", service.name()},
                {"choices", json::array({{{"text", text}, {"index", 0}, {"logprobs", nullptr},
                                          {"finish_reason", finish}}})}};
      return "data: " + c.dump() + "\n\n";
    };
    if (!cr.stream) {
      int prompt_len = 0;
      Generation g = service.run(cr, nullptr, &prompt_len);
      json body = {{"id", id},
                   {"object", "text_completion"},
                   {"created", created},
                   {"model", service.name()},
                   {"choices", json::array({{{"text", g.text}, {"index", 0}, {"logprobs", nullptr},
                                             {"finish_reason", finish_reason(g.finish)}}})},
                   {"usage", {{"prompt_tokens", prompt_len},
                              {"completion_tokens", g.tokens.size()},
                              {"total_tokens", prompt_len + static_cast<int>(g.tokens.size())}}}};
      res.set_content(body.dump(), "application/json");
      return;
    }
    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider("text/event-stream", [&service, cr, chunk](size_t, httplib::DataSink& sink) {
      auto send = [&sink](const std::string& s) {
        if (!sink.write(s.data(), s.size())) throw ClientGone{};
      };
      try {
        Generation g = service.run(cr, [&](std::string_view piece) { send(chunk(std::string(piece), nullptr)); });
        send(chunk("", finish_reason(g.finish)));
        send("data: [DONE]\n\n");
      } catch (const ClientGone&) {
        return false;  // the client left: nothing more to send
      } catch (const std::exception& e) {
        try {
          send("data: " + error_body(e.what(), "server_error").dump() + "\n\n");
        } catch (const ClientGone&) {
        }
      }
      sink.done();
      return true;
    });
  });
  server.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;  // a handler's own error answer
    if (res.status == 404)
      return send_error(res, 404, fmt::format("no route {} {}; try GET / or POST /v1/completions", req.method, req.path),
                        "not_found");
    if (res.status == 413) return send_error(res, 413, "the request body is too large", "invalid_request_error");
    send_error(res, res.status, fmt::format("HTTP status {}", res.status), "invalid_request_error");
  });
  server.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
    std::string what = "internal error";
    try {
      std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      what = e.what();
    } catch (...) {
    }
    send_error(res, 500, what, "server_error");
  });

  int port = args.port;
  if (port == 0) {
    port = server.bind_to_any_port(args.host);
    MT_CHECK(port > 0, "[serve] cannot bind to {}", args.host);
  } else {
    MT_CHECK(server.bind_to_port(args.host, port),
             "[serve] cannot listen on {}:{} (in use, or not an address of this machine); pick another --port",
             args.host, port);
  }
  fmt::print("[serve] {} ({}) on http://{}:{}/ (Ctrl-C stops)\n", service.name(), describe, args.host, port);
  std::fflush(stdout);
  std::thread watcher([&] {
    int sig = 0;
    sigwait(&stop_signals, &sig);
    if (sig != 0) server.stop();
  });
  server.listen_after_bind();
  // Wake the watcher if the server ended for another reason, then say goodbye.
  pthread_kill(watcher.native_handle(), SIGTERM);
  watcher.join();
  fmt::print("[serve] stopped\n");
  std::fflush(stdout);
}

void run_chat(const GenerateArgs& args) {
  LocalCommunicator world;
  std::unique_ptr<InferenceModel> im = load_inference_model(args, world);
  const bool tty = isatty(fileno(stdin)) != 0;
  if (tty)
    fmt::print("meshtrain chat: {} ({}). Each line you type is continued by the model; the conversation so far is "
               "its context. /reset forgets it, Ctrl-D ends.\n", im->checkpoint, im->model->backend().describe());
  CounterRng rng(static_cast<uint64_t>(args.seed), 2);
  std::string transcript;
  std::string line;
  while (true) {
    if (tty) {
      fmt::print("> ");
      std::fflush(stdout);
    }
    if (!std::getline(std::cin, line)) break;
    if (line == "/reset") {
      transcript.clear();
      continue;
    }
    if (line.empty()) continue;
    transcript += line + "\n";
    std::vector<int32_t> context = prompt_tokens(*im->tokenizer, transcript);
    Generation g = stream_sample(im->logits(args.sample.kv_cache), im->config.model, *im->tokenizer,
                                 std::move(context), args.sample, rng, file_sink(stdout));
    transcript += g.text;
    fmt::print("\n");
    std::fflush(stdout);
  }
  if (tty) fmt::print("\n");
}

}  // namespace meshtrain
