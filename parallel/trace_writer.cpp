// Merging every rank's trace into one Chrome Trace Event file (trace_writer.h).
#include "parallel/trace_writer.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "core/communicator.h"
#include "core/error.h"
#include "core/trace.h"

namespace meshtrain {

using json = nlohmann::json;

double clock_offset_us(Communicator& world) {
  if (world.size() == 1) return 0.0;
  // Processes on one host read one steady clock (CLOCK_MONOTONIC is system-wide): no offset there.
  char host[256] = {0};
  ::gethostname(host, sizeof(host) - 1);
  Tensor root_host = Tensor::zeros({sizeof(host)}, DType::u8);
  if (world.rank() == 0) std::memcpy(root_host.raw(), host, sizeof(host));
  world.broadcast(root_host, 0);
  const bool same_host = std::strncmp(static_cast<const char*>(root_host.raw()), host, sizeof(host)) == 0;
  // Ping-pong with rank 0, one rank at a time: rank r notes t1, asks rank 0 for its clock t0, notes
  // t2 when the answer is back; t0 was read between t1 and t2, so offset = t0 - (t1 + t2) / 2 is off
  // by at most half the round trip. The round with the shortest trip wins.
  constexpr int kRounds = 16;
  Tensor msg = Tensor::empty({sizeof(double)}, DType::u8);
  double best_rtt = 1e300, best = 0.0;
  for (int r = 1; r < world.size(); ++r) {
    for (int round = 0; round < kRounds; ++round) {
      if (world.rank() == 0) {
        world.recv(msg, r, 7000 + round);
        const double t0 = Tracer::now_us();
        std::memcpy(msg.raw(), &t0, sizeof(double));
        world.isend(msg, r, 7100 + round)->wait();
      } else if (world.rank() == r) {  // (every rank measures, so rank 0's loop needs no host list)
        const double t1 = Tracer::now_us();
        world.isend(msg, 0, 7000 + round)->wait();
        world.recv(msg, 0, 7100 + round);
        const double t2 = Tracer::now_us();
        double t0 = 0.0;
        std::memcpy(&t0, msg.raw(), sizeof(double));
        if (t2 - t1 < best_rtt) {
          best_rtt = t2 - t1;
          best = t0 - (t1 + t2) / 2;
        }
      }
    }
  }
  world.barrier();
  return world.rank() == 0 || same_host ? 0.0 : best;
}

namespace {

/// This rank's part of the file: metadata and events, clock moved by offset_us.
json rank_events(int pid, const std::string& process_name, double offset_us) {
  json out = json::array();
  out.push_back({{"name", "process_name"}, {"ph", "M"}, {"pid", pid}, {"args", {{"name", process_name}}}});
  out.push_back({{"name", "process_sort_index"}, {"ph", "M"}, {"pid", pid}, {"args", {{"sort_index", pid}}}});
  const auto threads = Tracer::get().thread_names();
  for (size_t t = 0; t < threads.size(); ++t)
    out.push_back({{"name", "thread_name"}, {"ph", "M"}, {"pid", pid}, {"tid", t}, {"args", {{"name", threads[t]}}}});
  for (const TraceEvent& e : Tracer::get().take()) {
    const double ts = e.ts_us + offset_us;
    json args = json::object();
    if (e.step >= 0) args["step"] = e.step;
    if (e.bytes >= 0) args["bytes"] = e.bytes;
    out.push_back({{"name", e.name}, {"cat", e.cat}, {"ph", "X"}, {"ts", ts}, {"dur", e.dur_us}, {"pid", pid},
                   {"tid", e.tid}, {"args", args}});
    // Flow ends sit inside their region, which the viewer binds them to: a send's arrow leaves at
    // its start, a receive's arrives at its end (when the data was there).
    if (e.flow_out)
      out.push_back({{"name", "pipeline transfer"}, {"cat", "pp_flow"}, {"ph", "s"}, {"id", e.flow_out},
                     {"ts", ts + std::min(1.0, e.dur_us / 2)}, {"pid", pid}, {"tid", e.tid}});
    if (e.flow_in)
      out.push_back({{"name", "pipeline transfer"}, {"cat", "pp_flow"}, {"ph", "f"}, {"bp", "e"}, {"id", e.flow_in},
                     {"ts", ts + e.dur_us - std::min(1.0, e.dur_us / 2)}, {"pid", pid}, {"tid", e.tid}});
  }
  return out;
}

}  // namespace

void write_trace(const std::string& path, Communicator& world, const std::string& process_name, double offset_us) {
  const std::string mine = rank_events(world.rank(), process_name, offset_us).dump();
  json all = json::array();
  if (world.rank() == 0) all = json::parse(mine);
  // Rank by rank, each part's length then its bytes (parts differ in size).
  for (int r = 1; r < world.size(); ++r) {
    Tensor len = Tensor::empty({1}, DType::i32);
    len.data<int32_t>()[0] = static_cast<int32_t>(mine.size());
    world.broadcast(len, r);
    Tensor bytes = Tensor::zeros({std::max(1, len.data<int32_t>()[0])}, DType::u8);
    if (world.rank() == r) std::copy(mine.begin(), mine.end(), bytes.data<uint8_t>());
    world.broadcast(bytes, r);
    if (world.rank() == 0) {
      const json part = json::parse(std::string(reinterpret_cast<const char*>(bytes.data<uint8_t>()),
                                                static_cast<size_t>(len.data<int32_t>()[0])));
      all.insert(all.end(), part.begin(), part.end());
    }
  }
  if (world.rank() != 0) return;
  // Times from the earliest region on, so the numbers stay small.
  double t0 = 1e300;
  for (const json& e : all)
    if (e.contains("ts")) t0 = std::min(t0, e["ts"].get<double>());
  for (json& e : all)
    if (e.contains("ts")) e["ts"] = e["ts"].get<double>() - t0;
  json file = {{"traceEvents", all},
               {"displayTimeUnit", "ms"},
               {"otherData", {{"producer", "meshtrain"}, {"ranks", world.size()},
                              {"clock", "steady clock of each rank, offset onto rank 0's at start-up"}}}};
  namespace fs = std::filesystem;
  const fs::path target(path);
  if (target.has_parent_path()) fs::create_directories(target.parent_path());
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp);
    MT_CHECK(out, "[trace] cannot write '{}'", tmp);
    out << file.dump() << "\n";
    out.close();
    MT_CHECK(out, "[trace] writing '{}' failed (disk full?)", tmp);
  }
  fs::rename(tmp, path);
}

}  // namespace meshtrain
