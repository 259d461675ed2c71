// CUDA emulation: cub::DeviceRadixSort::SortPairs (the one cub call meshtrain makes), as a stable
// sort by key on the host, in stream order. A first call with d_temp_storage == nullptr asks for the
// temporary storage size, as with cub.
#pragma once

#include <algorithm>
#include <cstddef>
#include <numeric>
#include <vector>

#include "cuda_runtime.h"

namespace cub {

struct DeviceRadixSort {
  template <class K, class V>
  static cudaError_t SortPairs(void* d_temp_storage, size_t& temp_storage_bytes, const K* keys_in, K* keys_out,
                               const V* values_in, V* values_out, int num_items, int begin_bit = 0,
                               int end_bit = sizeof(K) * 8, cudaStream_t stream = nullptr) {
    if (d_temp_storage == nullptr) {
      temp_storage_bytes = 256;  // unused, but a real sort needs some: keep callers honest about it
      return cudaSuccess;
    }
    ::mt_emu::enqueue_host(stream, [=] {
      const unsigned long long mask =
          end_bit - begin_bit >= 64 ? ~0ull : (((1ull << (end_bit - begin_bit)) - 1) << begin_bit);
      std::vector<int> order(static_cast<size_t>(num_items));
      std::iota(order.begin(), order.end(), 0);
      auto key = [&](int i) { return static_cast<unsigned long long>(keys_in[i]) & mask; };
      std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return key(a) < key(b); });
      std::vector<K> k(static_cast<size_t>(num_items));
      std::vector<V> v(static_cast<size_t>(num_items));
      for (int i = 0; i < num_items; ++i) {
        k[i] = keys_in[order[i]];
        v[i] = values_in[order[i]];
      }
      std::copy(k.begin(), k.end(), keys_out);
      std::copy(v.begin(), v.end(), values_out);
    });
    return cudaSuccess;
  }
};

}  // namespace cub
