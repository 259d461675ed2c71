// HDF5 checkpoints. One file = one step. Every tensor is stored whole under its global name as a
// float32 dataset (model weights under /model, AdamW moments under /optim/m and /optim/v), with
// metadata as attributes of the root group. Files are written under a temporary name and renamed
// into place only when complete, so a failed save never damages an existing checkpoint.
// The schema is in docs/checkpoint-format.md.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace meshtrain {

inline constexpr const char* kCheckpointFormat = "meshtrain-checkpoint";
/// Version 2 added the root attribute meta_crc32 (version 1 files, which lack it, still load).
inline constexpr int64_t kCheckpointVersion = 2;
/// Attribute of every dataset: the CRC-32 (zlib) of its little-endian float32 data.
inline constexpr const char* kChecksumAttribute = "crc32";
/// Root attribute: the CRC-32 of every other root attribute (see meta_checksum).
inline constexpr const char* kMetaChecksumAttribute = "meta_crc32";

/// Scalars and strings stored beside the tensors (step, RNG counters, loader position, config).
struct CheckpointMeta {
  std::map<std::string, int64_t> ints;
  std::map<std::string, std::string> strings;
};

/// A tensor to save: its dataset path inside the file ("model/wte") and the data (f32, on the CPU).
struct CheckpointEntry {
  std::string path;
  Tensor tensor;
};

/// CRC-32 of root attributes: for each key in sorted order, the key, a NUL, 'i' and the decimal
/// value (integers) or 's' and the bytes (strings), and a newline. Keys of both maps are distinct.
int64_t meta_checksum(const std::map<std::string, int64_t>& ints, const std::map<std::string, std::string>& strings);
/// Writes the root attributes of a checkpoint file: format, format_version, meta, and meta_crc32
/// over all of them.
void write_checkpoint_attributes(int64_t file, const CheckpointMeta& meta);
/// Asks HDF5 for the 1.8 file format (superblock and object headers version 2, which carry their
/// own checksums; every HDF5 from 1.8 on reads it) on a file-access property list.
void use_checksummed_file_format(int64_t fapl);

/// Writes entries and meta to path atomically (path + ".tmp" then rename). Creates parent folders.
void save_checkpoint(const std::string& path, const std::vector<CheckpointEntry>& entries, const CheckpointMeta& meta);

/// Reads a checkpoint; every failure is a meshtrain::Error naming the file and the tensor or
/// attribute at fault (not HDF5, truncated, not a meshtrain checkpoint, missing tensor, wrong shape).
class CheckpointReader {
 public:
  explicit CheckpointReader(const std::string& path);
  ~CheckpointReader();
  CheckpointReader(const CheckpointReader&) = delete;
  CheckpointReader& operator=(const CheckpointReader&) = delete;

  const CheckpointMeta& meta() const { return meta_; }
  /// Integer attribute; throws naming it when absent.
  int64_t get_int(const std::string& key) const;
  /// String attribute; throws naming it when absent.
  const std::string& get_string(const std::string& key) const;
  bool has(const std::string& dataset_path) const;
  Shape shape(const std::string& dataset_path) const;
  /// Reads the dataset into dst, whose shape must equal the stored one.
  void read(const std::string& dataset_path, Tensor& dst) const;
  /// Reads boxes of a dataset (offset and count per dimension, row-major, one after another) into
  /// dst, which holds exactly their elements. No checksum check: see sharded_checkpoint.h.
  void read_blocks(const std::string& dataset_path, const std::vector<std::vector<int64_t>>& offsets,
                   const std::vector<std::vector<int64_t>>& counts, Tensor& dst) const;
  /// The CRC-32 stored with a dataset, or -1 when it has none.
  int64_t stored_crc(const std::string& dataset_path) const;
  /// Every dataset path in the file, sorted.
  std::vector<std::string> list() const;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  int64_t file_ = -1;  // hid_t
  CheckpointMeta meta_;
};

/// Checkpoint file name for a step inside out_dir: out_dir/ckpt_000010.h5.
std::string checkpoint_path(const std::string& out_dir, int64_t step);
/// The newest checkpoint in out_dir (highest step), or "" when there is none. A file only gets a
/// checkpoint's name once it is complete (written as .tmp, then renamed), so the newest name is the
/// newest complete state, even when re-pointing `latest` after it failed (folder turned read-only,
/// process killed between the two). With no ckpt_NNNNNN.h5 in the folder, the file `latest` names.
std::string find_latest_checkpoint(const std::string& out_dir);
/// The checkpoint out_dir/latest names, when that file exists and names an existing file; else "".
std::string read_latest_pointer(const std::string& out_dir);
/// Makes out_dir/latest name checkpoint_path (atomically: temporary file, fsync, rename). Called
/// last, after the checkpoint itself is complete.
void update_latest(const std::string& out_dir, const std::string& checkpoint_path);
/// The checkpoints of out_dir past step, as (step, path) in increasing step order.
std::vector<std::pair<int64_t, std::string>> checkpoints_after(const std::string& out_dir, int64_t step);
/// Moves the checkpoints of out_dir past step (and a latest pointer naming one of them) into a new
/// folder out_dir/superseded_after_<step>_<time>, deleting nothing; returns that folder.
std::string set_aside_checkpoints_after(const std::string& out_dir, int64_t step);
/// Deletes all but the newest keep checkpoints of out_dir (never the one latest names); keep <= 0
/// keeps everything. Returns the paths removed.
std::vector<std::string> prune_checkpoints(const std::string& out_dir, int keep);

}  // namespace meshtrain
