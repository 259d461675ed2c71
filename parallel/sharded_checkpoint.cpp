// Parallel HDF5 writer for sharded checkpoints. Creating the file, its attributes and its datasets is
// collective (every rank makes the same calls in the same order); each rank then writes its blocks
// with independent MPI-IO transfers into contiguous datasets. The per-tensor CRC-32 a single writer
// would store is combined from CRCs of the runs each rank wrote (crc32_concat, core/checksum.h), so readers
// check sharded and single-process files alike.
#include "parallel/sharded_checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstring>
#include <filesystem>

#include "core/checksum.h"
#include "core/fault.h"
#include "core/h5.h"
#include "parallel/mpi_communicator.h"

namespace fs = std::filesystem;

namespace meshtrain {

namespace {

std::vector<hsize_t> dims_of(const std::vector<int64_t>& v) { return std::vector<hsize_t>(v.begin(), v.end()); }

/// A contiguous run of a tensor's row-major elements that one rank wrote, and the CRC-32 of its bytes.
struct Run {
  int64_t entry, start, len;
  uint32_t crc;
};

/// Creates e's dataset (collective) and writes this rank's blocks of it (independent).
void write_dataset(hid_t file, hid_t lcpl, const ShardedEntry& e) {
  MT_CHECK(!e.global_shape.empty() && shape_numel(e.global_shape) > 0,
           "[checkpoint] sharded dataset '{}' must have a non-empty shape", e.path);
  const std::vector<hsize_t> dims = dims_of(e.global_shape);
  h5::Dataspace file_space(H5_CHECK(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr)));
  h5::Dataset dset(
      H5_CHECK(H5Dcreate2(file, e.path.c_str(), H5T_IEEE_F32LE, file_space.get(), lcpl, H5P_DEFAULT, H5P_DEFAULT)));
  if (e.blocks.empty()) return;
  int64_t n = 0;
  for (size_t b = 0; b < e.blocks.size(); ++b) {
    const auto off = dims_of(e.blocks[b].offset), cnt = dims_of(e.blocks[b].count);
    MT_CHECK(off.size() == dims.size() && cnt.size() == dims.size(),
             "[checkpoint] block {} of '{}' has the wrong rank", b, e.path);
    H5_CHECK(H5Sselect_hyperslab(file_space.get(), b == 0 ? H5S_SELECT_SET : H5S_SELECT_OR, off.data(), nullptr,
                                 cnt.data(), nullptr));
    n += shape_numel(Shape(e.blocks[b].count.begin(), e.blocks[b].count.end()));
  }
  MT_CHECK(e.data.defined() && e.data.dtype() == DType::f32 && e.data.device() == Device::cpu && e.data.numel() == n,
           "[checkpoint] '{}': this rank's blocks hold {} elements but its data tensor does not match", e.path, n);
  const hsize_t mem_n = static_cast<hsize_t>(n);
  h5::Dataspace mem_space(H5_CHECK(H5Screate_simple(1, &mem_n, nullptr)));
  H5_CHECK(H5Dwrite(dset.get(), H5T_NATIVE_FLOAT, mem_space.get(), file_space.get(), H5P_DEFAULT, e.data.f32()));
}

/// The contiguous runs of the global tensor that e's blocks cover, with the CRC of each.
void add_runs(int64_t index, const ShardedEntry& e, std::vector<Run>& runs) {
  const int64_t row = e.global_shape.size() == 2 ? e.global_shape[1] : 1;
  const float* data = e.data.defined() ? e.data.f32() : nullptr;
  auto crc_of = [](const float* p, int64_t len) { return crc32_update(0, p, static_cast<size_t>(len) * sizeof(float)); };
  for (const TensorBlock& b : e.blocks) {
    const int64_t rows = b.count[0], cols = b.count.size() == 2 ? b.count[1] : 1;
    const int64_t col0 = b.offset.size() == 2 ? b.offset[1] : 0;
    if (cols == row) {  // whole rows: one run
      runs.push_back({index, b.offset[0] * row, rows * cols, crc_of(data, rows * cols)});
      data += rows * cols;
      continue;
    }
    for (int64_t r = 0; r < rows; ++r, data += cols)
      runs.push_back({index, (b.offset[0] + r) * row + col0, cols, crc_of(data, cols)});
  }
}

}  // namespace

std::vector<int64_t> combined_crcs(const std::vector<ShardedEntry>& entries, Communicator& world) {
  std::vector<Run> mine;
  for (size_t i = 0; i < entries.size(); ++i) add_runs(static_cast<int64_t>(i), entries[i], mine);
  Tensor count = Tensor::empty({world.size()}, DType::i32), one = Tensor::empty({1}, DType::i32);
  one.data<int32_t>()[0] = static_cast<int32_t>(mine.size());
  world.all_gather(one, count);
  int64_t most = 0;
  for (int r = 0; r < world.size(); ++r) most = std::max<int64_t>(most, count.data<int32_t>()[r]);
  const int64_t bytes = std::max<int64_t>(most, 1) * static_cast<int64_t>(sizeof(Run));
  Tensor send = Tensor::zeros({bytes}, DType::u8), all = Tensor::empty({bytes * world.size()}, DType::u8);
  if (!mine.empty()) std::memcpy(send.data<uint8_t>(), mine.data(), mine.size() * sizeof(Run));  // never from null
  world.all_gather(send, all);
  std::vector<Run> runs;
  for (int r = 0; r < world.size(); ++r) {
    const auto* p = reinterpret_cast<const Run*>(all.data<uint8_t>() + r * bytes);
    runs.insert(runs.end(), p, p + count.data<int32_t>()[r]);
  }
  std::sort(runs.begin(), runs.end(),
            [](const Run& a, const Run& b) { return a.entry != b.entry ? a.entry < b.entry : a.start < b.start; });
  std::vector<int64_t> crcs(entries.size(), 0);
  size_t i = 0;
  for (size_t e = 0; e < entries.size(); ++e) {
    uint32_t crc = 0;
    int64_t covered = 0;
    for (; i < runs.size() && runs[i].entry == static_cast<int64_t>(e); ++i) {
      MT_CHECK(runs[i].start == covered, "[checkpoint] the ranks' blocks of '{}' do not tile it once (gap or overlap "
                                         "at element {})", entries[e].path, covered);
      crc = crc32_concat(crc, runs[i].crc, runs[i].len * static_cast<int64_t>(sizeof(float)));
      covered += runs[i].len;
    }
    MT_CHECK(covered == shape_numel(entries[e].global_shape),
             "[checkpoint] the ranks wrote {} of the {} elements of '{}'", covered,
             shape_numel(entries[e].global_shape), entries[e].path);
    crcs[e] = static_cast<int64_t>(crc);
  }
  return crcs;
}

void save_checkpoint_sharded(const std::string& path, const std::vector<ShardedEntry>& entries,
                             const CheckpointMeta& meta, Communicator& world) {
  auto* mpi = dynamic_cast<MpiCommunicator*>(&world);
  MT_CHECK(mpi, "[checkpoint] sharded saves need an MPI communicator (got '{}')", world.name());
  h5::silence_errors();
  const std::string tmp = path + ".tmp";
  if (world.rank() == 0) {
    std::error_code ec;
    fs::path parent = fs::path(path).parent_path();
    if (!parent.empty()) fs::create_directories(parent, ec);
    MT_CHECK(!ec, "[checkpoint] cannot create folder '{}': {}", parent.string(), ec.message());
  }
  world.barrier();
  {
    h5::PropList fapl(H5_CHECK(H5Pcreate(H5P_FILE_ACCESS)));
    H5_CHECK(H5Pset_fapl_mpio(fapl.get(), mpi->native(), MPI_INFO_NULL));
    H5_CHECK(H5Pset_fclose_degree(fapl.get(), H5F_CLOSE_STRONG));
    use_checksummed_file_format(fapl.get());
    h5::File file(H5_CHECK(H5Fcreate(tmp.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.get())));
    h5::PropList lcpl(H5_CHECK(H5Pcreate(H5P_LINK_CREATE)));
    H5_CHECK(H5Pset_create_intermediate_group(lcpl.get(), 1));
    write_checkpoint_attributes(file.get(), meta);
    for (size_t i = 0; i < entries.size(); ++i) {
      try {
        write_dataset(file.get(), lcpl.get(), entries[i]);
      } catch (const Error& err) {
        MT_FAIL("[checkpoint] rank {} cannot write dataset '{}' to '{}': {}", world.rank(), entries[i].path, tmp,
                err.what());
      }
    }
    // (Tests of a rank dying mid-save: core/fault.h.)
    const auto step = meta.ints.find("step");
    if (test_fault("kill_in_save", world.rank(), step == meta.ints.end() ? -1 : step->second)) ::raise(SIGKILL);
    // Each tensor's checksum, combined from the pieces the ranks wrote, as a single writer stores it.
    const std::vector<int64_t> crcs = combined_crcs(entries, world);
    for (size_t i = 0; i < entries.size(); ++i) {
      h5::Dataset dset(H5_CHECK(H5Dopen2(file.get(), entries[i].path.c_str(), H5P_DEFAULT)));
      h5::write_attribute(dset.get(), kChecksumAttribute, crcs[i]);
    }
    file.close();
  }
  world.barrier();
  if (world.rank() == 0) {
    int fd = ::open(tmp.c_str(), O_RDONLY);
    if (fd >= 0) {
      ::fsync(fd);
      ::close(fd);
    }
    std::error_code ec;
    fs::rename(tmp, path, ec);
    MT_CHECK(!ec, "[checkpoint] cannot rename '{}' to '{}': {}", tmp, path, ec.message());
  }
  world.barrier();
}

}  // namespace meshtrain
