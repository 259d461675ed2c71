// Parallel HDF5 writer for sharded checkpoints. Creating the file, its attributes and its datasets is
// collective (every rank makes the same calls in the same order); each dataset's data go in one
// collective H5Dwrite where a rank selects its blocks (or nothing), which parallel HDF5 requires for
// filtered (checksummed) datasets.
#include "parallel/sharded_checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>

#include "core/h5.h"
#include "parallel/mpi_communicator.h"

namespace fs = std::filesystem;

namespace meshtrain {

namespace {

std::vector<hsize_t> dims_of(const std::vector<int64_t>& v) { return std::vector<hsize_t>(v.begin(), v.end()); }

/// Chunks of about 1 MiB along the first dimension, whole along the others.
std::vector<hsize_t> chunk_dims(const Shape& shape) {
  std::vector<hsize_t> chunk = dims_of(shape);
  int64_t row = 1;
  for (size_t i = 1; i < shape.size(); ++i) row *= shape[i];
  chunk[0] = static_cast<hsize_t>(std::clamp<int64_t>((1 << 18) / std::max<int64_t>(row, 1), 1, shape[0]));
  return chunk;
}

void write_dataset(hid_t file, hid_t lcpl, hid_t dxpl, const ShardedEntry& e) {
  MT_CHECK(!e.global_shape.empty() && shape_numel(e.global_shape) > 0,
           "[checkpoint] sharded dataset '{}' must have a non-empty shape", e.path);
  const std::vector<hsize_t> dims = dims_of(e.global_shape);
  h5::Dataspace file_space(H5_CHECK(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr)));
  h5::PropList dcpl(H5_CHECK(H5Pcreate(H5P_DATASET_CREATE)));
  const std::vector<hsize_t> chunk = chunk_dims(e.global_shape);
  H5_CHECK(H5Pset_chunk(dcpl.get(), static_cast<int>(chunk.size()), chunk.data()));
  H5_CHECK(H5Pset_fletcher32(dcpl.get()));
  h5::Dataset dset(
      H5_CHECK(H5Dcreate2(file, e.path.c_str(), H5T_IEEE_F32LE, file_space.get(), lcpl, dcpl.get(), H5P_DEFAULT)));
  int64_t n = 0;
  for (size_t b = 0; b < e.blocks.size(); ++b) {
    const auto off = dims_of(e.blocks[b].offset), cnt = dims_of(e.blocks[b].count);
    MT_CHECK(off.size() == dims.size() && cnt.size() == dims.size(),
             "[checkpoint] block {} of '{}' has the wrong rank", b, e.path);
    H5_CHECK(H5Sselect_hyperslab(file_space.get(), b == 0 ? H5S_SELECT_SET : H5S_SELECT_OR, off.data(), nullptr,
                                 cnt.data(), nullptr));
    n += shape_numel(Shape(e.blocks[b].count.begin(), e.blocks[b].count.end()));
  }
  const hsize_t mem_n = static_cast<hsize_t>(std::max<int64_t>(n, 1));
  h5::Dataspace mem_space(H5_CHECK(H5Screate_simple(1, &mem_n, nullptr)));
  const float* data = nullptr;
  if (n == 0) {
    H5_CHECK(H5Sselect_none(file_space.get()));
    H5_CHECK(H5Sselect_none(mem_space.get()));
  } else {
    MT_CHECK(e.data.defined() && e.data.dtype() == DType::f32 && e.data.device() == Device::cpu &&
                 e.data.numel() == n,
             "[checkpoint] '{}': this rank's blocks hold {} elements but its data tensor does not match", e.path, n);
    data = e.data.f32();
  }
  H5_CHECK(H5Dwrite(dset.get(), H5T_NATIVE_FLOAT, mem_space.get(), file_space.get(), dxpl, data));
}

}  // namespace

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
    h5::File file(H5_CHECK(H5Fcreate(tmp.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.get())));
    h5::PropList lcpl(H5_CHECK(H5Pcreate(H5P_LINK_CREATE)));
    H5_CHECK(H5Pset_create_intermediate_group(lcpl.get(), 1));
    h5::PropList dxpl(H5_CHECK(H5Pcreate(H5P_DATASET_XFER)));
    H5_CHECK(H5Pset_dxpl_mpio(dxpl.get(), H5FD_MPIO_COLLECTIVE));
    h5::write_attribute(file.get(), "format", std::string(kCheckpointFormat));
    h5::write_attribute(file.get(), "format_version", kCheckpointVersion);
    for (const auto& [key, value] : meta.ints) h5::write_attribute(file.get(), key, value);
    for (const auto& [key, value] : meta.strings) h5::write_attribute(file.get(), key, value);
    for (const auto& e : entries) {
      try {
        write_dataset(file.get(), lcpl.get(), dxpl.get(), e);
      } catch (const Error& err) {
        MT_FAIL("[checkpoint] rank {} cannot write dataset '{}' to '{}': {}", world.rank(), e.path, tmp, err.what());
      }
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
