// Checkpoint save and load time of GPT-2 124M with its AdamW state (about 1.5 GB), on one process or
// under mpiexec with the model split tensor-parallel over the ranks (each rank writes its own
// blocks through parallel HDF5), set beside a plain `dd` of the same size to the same folder.
// Usage: [mpiexec -n N] ckpt_bench [--dir DIR] [--set section.key=value]...
#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "core/checksum.h"
#include "core/timer.h"
#include "launch/config.h"
#include "launch/train/train_state.h"
#include "model/gpt.h"
#include "parallel/mesh.h"
#include "parallel/mpi_runtime.h"

using namespace meshtrain;
namespace fs = std::filesystem;

int main(int argc, char** argv) {
  auto runtime = MpiRuntime::init_if_launched(&argc, &argv);
  auto world = world_communicator(runtime.get());
  const bool lead = world->rank() == 0;
  Config cfg = default_config();
  cfg.model.n_layer = 12;
  cfg.model.n_head = 12;
  cfg.model.n_embd = 768;
  cfg.model.seq_len = 1024;
  cfg.model.vocab_size = 50257;
  std::string dir = (fs::temp_directory_path() / "meshtrain_ckpt_bench").string();
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--dir" && i + 1 < argc) dir = argv[++i];
    else if (a == "--set" && i + 1 < argc) apply_override(cfg, argv[++i]);
    else {
      if (lead) std::fprintf(stderr, "usage: %s [--dir DIR] [--set section.key=value]...\n", argv[0]);
      return 2;
    }
  }
  const int n = world->size();
  cfg.train.out_dir = dir + "/np" + std::to_string(n);
  if (lead) fs::remove_all(cfg.train.out_dir);
  world->barrier();
  Mesh mesh(*world, MeshShape{1, n, 1});
  Gpt model(cfg.model, mesh.dp(), &mesh.tp());
  model.initialize(1);
  MomentBuffers moments{Tensor::zeros({model.params().numel()}), Tensor::zeros({model.params().numel()}), 1};
  moments.m.copy_from(model.params());  // real-looking values (no all-zero pages)
  moments.v.copy_from(model.params());
  RunCounters counters;
  counters.step = 1;
  world->barrier();
  double t0 = now_seconds();
  std::string path = n == 1 ? save_run(cfg, model, moments, counters)
                            : save_run_sharded(cfg, model, moments, counters, *world, 0, "tp=" + std::to_string(n));
  world->barrier();
  double save_s = now_seconds() - t0;
  t0 = now_seconds();
  if (n == 1) load_run(path, model, &moments);
  else load_run_sharded(path, model, &moments, *world, 0);
  world->barrier();
  double load_s = now_seconds() - t0;
  // What the checksums cost: this rank's CRC-32 of everything it saved (weights and both moments),
  // computed as save and load compute it (core/checksum.h), as a share of the save and load times.
  t0 = now_seconds();
  uint32_t crc = 0;
  for (const Tensor* t : {&model.params(), &moments.m, &moments.v}) crc = crc32_update(crc, t->raw(), t->nbytes());
  const double crc_s = now_seconds() - t0;
  if (lead) {
    const double bytes = static_cast<double>(fs::file_size(path));
    std::string dd = "dd if=/dev/zero of=" + dir + "/dd.bin bs=1M count=" +
                     std::to_string(static_cast<long>(bytes / 1048576.0)) + " conv=fsync status=none";
    double d0 = now_seconds();
    int rc = std::system(dd.c_str());
    double dd_s = now_seconds() - d0;
    fs::remove(dir + "/dd.bin");
    std::printf("ranks %d | checkpoint %.2f GB | save %.2f s (%.2f GB/s) | load %.2f s (%.2f GB/s) | dd %.2f s "
                "(%.2f GB/s)%s | save / dd = %.2f\n",
                n, bytes / 1e9, save_s, bytes / save_s / 1e9, load_s, bytes / load_s / 1e9, dd_s, bytes / dd_s / 1e9,
                rc == 0 ? "" : " (dd failed)", save_s / dd_s);
    std::printf("checksums: CRC-32 of rank 0's %.2f GB in %.3f s (%.1f GB/s) = %.1f%% of save, %.1f%% of load "
                "(crc %08x)\n",
                3.0 * static_cast<double>(model.params().nbytes()) / 1e9, crc_s,
                3.0 * static_cast<double>(model.params().nbytes()) / crc_s / 1e9, 100.0 * crc_s / save_s,
                100.0 * crc_s / load_s, crc);
    fs::remove_all(cfg.train.out_dir);
  }
  return 0;
}
