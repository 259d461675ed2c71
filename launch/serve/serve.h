// `meshtrain serve`: an HTTP server (cpp-httplib) for one model, bound to 127.0.0.1 by default.
//   GET  /                 the chat page (launch/serve/chat_page.h)
//   GET  /health           {"status": "ok"}
//   GET  /v1/models        the model, OpenAI-shaped, with its context length
//   POST /v1/completions   OpenAI-shaped completions: prompt, max_tokens, temperature, top_p, stream,
//                          stop, seed, n (= 1), model (ignored), plus top_k and repetition_penalty
//                          as llama.cpp's server takes them; stream = true answers with server-sent
//                          events ("data: {chunk}" ... "data: [DONE]").
// One model serves one request at a time: concurrent requests wait their turn. Bad requests
// (malformed JSON, unknown fields, values out of range, a prompt longer than the context, a body
// over the size limit) get a 4xx answer with a JSON error and never reach the model. Ctrl-C or
// SIGTERM stops the server cleanly. `meshtrain chat` is the same generation in the terminal.
#pragma once

#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

#include "launch/generate.h"

namespace meshtrain {

struct ServeArgs {
  GenerateArgs model;             // checkpoint, adapter, tokenizer, device, precision, threads
  std::string host = "127.0.0.1";
  int port = 8080;                // 0 = any free port (printed)
  size_t max_body = 1 << 20;      // bytes
};

/// A request that failed validation: the message and the field at fault ("" for the body).
struct BadRequest {
  std::string message, param;
};

struct CompletionRequest {
  std::string prompt;
  int max_tokens = 100;
  SamplingParams sampling;
  std::vector<std::string> stop;
  bool stream = false;
  bool has_seed = false;
  uint64_t seed = 0;
};

/// Parses and checks a /v1/completions body; throws BadRequest. max_tokens is capped at seq_len.
CompletionRequest parse_completion_request(const std::string& body, int seq_len);

/// The model behind the endpoints: one generation at a time, in arrival order.
class CompletionService {
 public:
  explicit CompletionService(std::unique_ptr<InferenceModel> model, std::string name);
  const std::string& name() const { return name_; }
  int context_length() const { return model_->config.model.seq_len; }
  /// Throws BadRequest when the prompt is longer than the context.
  std::vector<int32_t> prompt_tokens_of(const std::string& prompt) const;
  /// Generates for a checked request, calling emit with each piece of text as it is produced (it
  /// may throw to abandon the request); returns the finished generation and the prompt's length.
  Generation run(const CompletionRequest& req, const TextSink& emit, int* prompt_len = nullptr);

 private:
  std::unique_ptr<InferenceModel> model_;
  std::string name_;
  std::mutex mutex_;        // one generation at a time
  uint64_t next_seed_ = 1;  // requests without a seed get distinct ones
};

/// Runs the server until SIGINT or SIGTERM.
void run_serve(const ServeArgs& args);

/// The `chat` command: a prompt per line on stdin, the continuation streamed to stdout.
void run_chat(const GenerateArgs& args);

}  // namespace meshtrain
