// Sharded checkpoint writes: every rank writes only its own blocks of each global tensor into one
// HDF5 file through MPI-IO (parallel HDF5), replicas write nothing, and the file is the same
// whole-tensor schema a single process writes (docs/checkpoint-format.md), so any layout — and
// h5py — reads it. Every dataset carries the CRC-32 of the whole tensor, verified on read.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "parallel/checkpoint.h"

namespace meshtrain {

class Communicator;

/// A box of a global tensor: offset and count per dimension.
struct TensorBlock {
  std::vector<int64_t> offset;
  std::vector<int64_t> count;
};

/// One dataset of a sharded save. Every rank lists every dataset, in the same order; blocks are
/// what this rank writes (none = nothing), with their elements back to back in data, block after
/// block, each in row-major order.
struct ShardedEntry {
  std::string path;
  Shape global_shape;
  std::vector<TensorBlock> blocks;
  Tensor data;
};

/// CRC-32 of each entry's whole tensor, combined from the blocks every rank passes (collective over
/// world; the same result on every rank). The ranks' blocks must tile each tensor exactly once.
std::vector<int64_t> combined_crcs(const std::vector<ShardedEntry>& entries, Communicator& world);

/// Collective over world (an MpiCommunicator): writes path + ".tmp" with every rank's blocks, then
/// rank 0 makes it visible by rename. Throws (on the failing rank) naming the dataset.
void save_checkpoint_sharded(const std::string& path, const std::vector<ShardedEntry>& entries,
                             const CheckpointMeta& meta, Communicator& world);

}  // namespace meshtrain
