// Chapter 2: layout-invariant initialisation. A weight's element i is drawn from Philox, a
// counter-based generator, keyed by (seed, the parameter's name) with counter i. So any rank can
// draw exactly its shard of a tensor, without drawing the rest: the tensor-parallel shards of a
// model put side by side are the single-process model, bit for bit.
#include <cstdio>
#include <cstring>
#include <vector>

#include "core/rng.h"
#include "model/params.h"

using namespace meshtrain;

int main() {
  // ---- The generator: a value depends only on (key, counter), so they can be drawn in any order.
  CounterRng a(1337, 7);
  float first[4];
  for (float& x : first) x = a.uniform();
  CounterRng b(1337, 7, /*counter=*/2);  // jump straight to the third number
  std::printf("counter 0..3: %.6f %.6f %.6f %.6f\n", first[0], first[1], first[2], first[3]);
  std::printf("counter 2 drawn on its own: %.6f\n", b.uniform());

  // ---- A parameter's values: normal(0, 0.02) at global element indices [first, first + n).
  std::vector<float> whole(8), tail(4);
  fill_normal(whole.data(), 8, 1337, "h.0.mlp.c_fc.weight", 0, 0.02f);
  fill_normal(tail.data(), 4, 1337, "h.0.mlp.c_fc.weight", 4, 0.02f);
  std::printf("c_fc.weight[0..8):  ");
  for (float x : whole) std::printf("% .5f ", x);
  std::printf("\nc_fc.weight[4..8):                                          ");
  for (float x : tail) std::printf("% .5f ", x);
  std::printf("\n\n");

  // ---- The whole model, one process, against 2 and 4 tensor-parallel shards of it.
  GptConfig cfg;
  cfg.n_layer = 2, cfg.n_head = 4, cfg.n_embd = 64, cfg.seq_len = 32, cfg.vocab_size = 500;
  ParameterTable full(cfg);
  std::vector<float> w(full.total());
  full.initialize(w.data(), 1337);
  std::printf("one process: %lld parameters\n", (long long)full.total());
  bool same = true;
  for (int tp : {2, 4}) {
    int64_t compared = 0, differ = 0;
    for (int r = 0; r < tp; ++r) {
      ParameterTable shard(cfg, tp, r);  // what tensor-parallel rank r of tp holds
      std::vector<float> ws(shard.total());
      shard.initialize(ws.data(), 1337);
      for (const auto& s : shard.specs()) {
        const auto& g = full.get(s.name);
        for (int64_t i = 0; i < ParameterTable::shard_rows(s); ++i) {
          RowSlice row = shard.shard_row(s, r, i);  // where this row of the shard sits in the whole tensor
          const float* mine = ws.data() + s.offset + i * row.len;
          const float* global = w.data() + g.offset + row.global_offset;
          differ += std::memcmp(mine, global, row.len * sizeof(float)) != 0;
          compared += row.len;
        }
      }
    }
    std::printf("tp %d: %lld elements in %d shards compared with the whole model, %lld rows differ\n", tp,
                (long long)compared, tp, (long long)differ);
    same = same && differ == 0;
  }
  const auto& fc = full.get("h.0.mlp.c_fc.weight");
  const auto& proj = full.get("h.0.mlp.c_proj.weight");
  ParameterTable r1(cfg, 2, 1);
  std::printf("\nh.0.mlp.c_fc.weight   global [%lld, %lld], rank 1 of 2 holds [%lld, %lld] (rows: column-parallel)\n",
              (long long)fc.global_shape[0], (long long)fc.global_shape[1], (long long)r1.get(fc.name).shape[0],
              (long long)r1.get(fc.name).shape[1]);
  std::printf("h.0.mlp.c_proj.weight global [%lld, %lld], rank 1 of 2 holds [%lld, %lld] (columns: row-parallel)\n",
              (long long)proj.global_shape[0], (long long)proj.global_shape[1],
              (long long)r1.get(proj.name).shape[0], (long long)r1.get(proj.name).shape[1]);
  return same ? 0 : 1;
}
