// Chapter 4: rotary position embeddings make an attention score depend on where the query and the
// key are only through their distance. The same query vector q and key vector k are placed at
// positions (m, n); after rotation, q_m . k_n is printed for several pairs with the same offset.
#include <cmath>
#include <cstdio>
#include <vector>

#include "core/rng.h"
#include "model/kernels/rope.h"

using namespace meshtrain;

int main() {
  const int hs = 8, T = 64;  // one head of 8 channels (4 rotating pairs), positions 0..63
  const double theta = 10000.0;
  std::vector<float> table = rope_table(T, hs, theta);
  std::printf("pair i turns by position * theta^(-2i/hs): angles per position");
  for (int i = 0; i < hs / 2; ++i) std::printf(" %.4f", std::pow(theta, -2.0 * i / hs));
  std::printf(" rad\n");

  CounterRng rng(3, 0);
  float q[hs], k[hs];
  for (int c = 0; c < hs; ++c) q[c] = rng.uniform() - 0.5f, k[c] = rng.uniform() - 0.5f;
  // Score of q at position m against k at position n: build a 2-row qkv (B=1, T=2, C=hs, one head),
  // q in row 0 and k in row 1 rotate by the rows' positions; so rotate twice with pos0 = m and pos0 = n.
  auto score = [&](int m, int n) {
    std::vector<float> rq(3 * hs, 0.0f), rk(3 * hs, 0.0f);
    for (int c = 0; c < hs; ++c) rq[c] = q[c], rk[hs + c] = k[c];  // [q | k | v] layout
    rope_cpu(rq.data(), table.data(), 1, 1, hs, 1, m, false);
    rope_cpu(rk.data(), table.data(), 1, 1, hs, 1, n, false);
    double s = 0.0;
    for (int c = 0; c < hs; ++c) s += double(rq[c]) * rk[hs + c];
    return s;
  };
  double plain = 0.0;
  for (int c = 0; c < hs; ++c) plain += double(q[c]) * k[c];
  std::printf("q . k without rotation: %.6f\n\n", plain);
  std::printf("%6s %6s %8s %12s\n", "m", "n", "m - n", "q_m . k_n");
  double spread = 0.0;  // the largest difference between scores at the same offset
  for (int off : {0, 3, 10})
    for (int m : {off, off + 7, off + 40}) {
      std::printf("%6d %6d %8d %12.6f\n", m, m - off, off, score(m, m - off));
      spread = std::max(spread, std::fabs(score(m, m - off) - score(off, 0)));
    }
  std::printf("same offset, same score: largest difference %.1e\n", spread);

  // The inverse rotation undoes the forward one (backward uses it on dq and dk).
  std::vector<float> x(3 * hs), y;
  for (auto& v : x) v = rng.uniform();
  y = x;
  rope_cpu(y.data(), table.data(), 1, 1, hs, 1, 17, false);
  rope_cpu(y.data(), table.data(), 1, 1, hs, 1, 17, true);
  double err = 0.0;
  for (int c = 0; c < 3 * hs; ++c) err = std::max(err, double(std::fabs(x[c] - y[c])));
  std::printf("\nrotate by position 17, then turn back: largest change %.1e\n", err);
  return spread < 1e-5 && err < 1e-5 ? 0 : 1;
}
