// Checkpoint tests: bit-exact round trips, atomic saves that leave an existing file alone, and
// clear errors (never crashes) for truncated, foreign, random and mismatched files.
// Set MESHTRAIN_KEEP_CHECKPOINT=<file> to keep a copy of the round-trip checkpoint (for h5py/h5dump).
#include "parallel/checkpoint.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>

#include <zlib.h>

#include "core/checksum.h"
#include "core/h5.h"
#include "tests/test_util.h"

// HDF5's checksum of metadata (Jenkins' lookup3), exported by the library though not in its headers:
// the test edits a superblock and must re-seal it as a writer would.
extern "C" uint32_t H5_checksum_metadata(const void* data, size_t len, uint32_t initval);

namespace meshtrain {
namespace {

namespace fs = std::filesystem;
using testing::ScratchDir;

Tensor random_tensor(Shape shape, uint64_t seed) {
  Tensor t = Tensor::empty(std::move(shape));
  std::vector<float> v = testing::random_floats(static_cast<size_t>(t.numel()), seed, -3.0f, 3.0f);
  if (!v.empty()) std::memcpy(t.f32(), v.data(), v.size() * sizeof(float));
  return t;
}

bool bit_equal(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && (a.nbytes() == 0 || std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0);
}

// Runs fn, which must throw meshtrain::Error whose message contains every needle.
void expect_error(const std::function<void()>& fn, const std::vector<std::string>& needles) {
  try {
    fn();
  } catch (const Error& e) {
    std::string what = e.what();
    for (const std::string& n : needles) EXPECT_NE(what.find(n), std::string::npos) << "'" << n << "' not in: " << what;
    return;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "threw a non-meshtrain exception: " << e.what();
    return;
  }
  ADD_FAILURE() << "did not throw";
}

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// Past 64 KiB: an attribute that HDF5 keeps in dense storage rather than in the object header.
std::string big_config() {
  std::string s = "# run config ✓ — UTF-8: héllo, 日本語, ελληνικά\n[model]\n";
  for (int i = 0; s.size() < 70000; ++i) s += fmt::format("key_{} = \"value {} ünïcödé\"\n", i, i * 7919);
  return s;
}

struct Sample {
  std::vector<CheckpointEntry> entries;
  CheckpointMeta meta;
};

Sample make_sample(uint64_t seed) {
  Sample s;
  s.entries = {
      {"model/wte", random_tensor({11, 8}, seed + 1)},
      {"model/wpe", random_tensor({6, 8}, seed + 2)},
      {"model/h.0.attn.c_attn.weight", random_tensor({24, 8}, seed + 3)},
      {"model/h.0.attn.c_attn.bias", random_tensor({24}, seed + 4)},
      {"model/h.10.ln_1.weight", random_tensor({8}, seed + 5)},
      {"optim/m/wte", random_tensor({11, 8}, seed + 6)},
      {"optim/v/wte", random_tensor({11, 8}, seed + 7)},
      {"deep/a/b/c.d/e", random_tensor({2, 3, 4}, seed + 8)},
      {"misc/scalar", random_tensor({}, seed + 9)},
      {"misc/empty", Tensor::empty({0, 4})},
  };
  s.meta.ints = {{"step", 1234},
                 {"seed", 42},
                 {"rng_counter", std::numeric_limits<int64_t>::max()},
                 {"most_negative", std::numeric_limits<int64_t>::min()},
                 {"loader_cursor", -17}};
  s.meta.strings = {{"config", big_config()}, {"tokenizer", "/data/gpt2/tokenizer.json"}, {"empty", ""}};
  return s;
}

TEST(Checkpoint, RoundTripIsBitExact) {
  ScratchDir dir("ckpt");
  Sample s = make_sample(100);
  std::string path = dir.str("run/nested/ckpt_000007.h5");  // parent folders are created
  save_checkpoint(path, s.entries, s.meta);
  ASSERT_TRUE(fs::exists(path));
  EXPECT_FALSE(fs::exists(path + ".tmp"));
  if (const char* keep = std::getenv("MESHTRAIN_KEEP_CHECKPOINT"))
    fs::copy_file(path, keep, fs::copy_options::overwrite_existing);

  CheckpointReader r(path);
  EXPECT_EQ(r.path(), path);
  for (const auto& e : s.entries) {
    ASSERT_TRUE(r.has(e.path)) << e.path;
    EXPECT_EQ(r.shape(e.path), e.tensor.shape()) << e.path;
    Tensor back = Tensor::empty(e.tensor.shape());
    std::vector<float> poison = testing::random_floats(static_cast<size_t>(back.numel()), 9);
    if (!poison.empty()) std::memcpy(back.f32(), poison.data(), poison.size() * sizeof(float));
    r.read(e.path, back);
    EXPECT_TRUE(bit_equal(back, e.tensor)) << e.path;
  }
  for (const auto& [k, v] : s.meta.ints) EXPECT_EQ(r.get_int(k), v) << k;
  for (const auto& [k, v] : s.meta.strings) EXPECT_EQ(r.get_string(k), v) << k;
  EXPECT_EQ(r.get_string("format"), kCheckpointFormat);
  EXPECT_EQ(r.get_int("format_version"), kCheckpointVersion);
  EXPECT_EQ(r.meta().ints.size(), s.meta.ints.size() + 1);
  EXPECT_EQ(r.meta().strings.size(), s.meta.strings.size() + 1);

  std::vector<std::string> expected;
  for (const auto& e : s.entries) expected.push_back(e.path);
  std::sort(expected.begin(), expected.end());
  EXPECT_EQ(r.list(), expected);

  // Groups, missing names and paths through a dataset are not datasets.
  EXPECT_TRUE(r.has("/model/wte"));
  EXPECT_FALSE(r.has("model"));
  EXPECT_FALSE(r.has("optim/m"));
  EXPECT_FALSE(r.has("model/nope"));
  EXPECT_FALSE(r.has("model/wte/x"));
  EXPECT_FALSE(r.has("nope/wte"));
  EXPECT_FALSE(r.has(""));
  expect_error([&] { r.get_int("no_such_int"); }, {"[checkpoint]", "no_such_int"});
  expect_error([&] { r.get_string("no_such_string"); }, {"[checkpoint]", "no_such_string"});
  expect_error([&] { r.get_int("config"); }, {"config"});  // a string is not an int
  expect_error([&] { r.shape("model/missing"); }, {"model/missing"});
}

TEST(Checkpoint, SaveReplacesAnExistingCheckpoint) {
  ScratchDir dir("ckpt");
  std::string path = dir.str("ckpt_000001.h5");
  Sample a = make_sample(1), b = make_sample(2);
  b.meta.ints["step"] = 99;
  save_checkpoint(path, a.entries, a.meta);
  save_checkpoint(path, b.entries, b.meta);
  CheckpointReader r(path);
  EXPECT_EQ(r.get_int("step"), 99);
  Tensor wte = Tensor::empty({11, 8});
  r.read("model/wte", wte);
  EXPECT_TRUE(bit_equal(wte, b.entries[0].tensor));
  EXPECT_FALSE(fs::exists(path + ".tmp"));
}

TEST(Checkpoint, FailedSaveLeavesExistingFileAndNoTmp) {
  ScratchDir dir("ckpt");
  std::string path = dir.str("ckpt_000005.h5");
  Sample good = make_sample(5);
  save_checkpoint(path, good.entries, good.meta);
  const std::string before = read_bytes(path);
  ASSERT_GT(before.size(), 1000u);

  // Fails inside HDF5, after the .tmp file exists: "model/a" is a dataset, so it cannot be a group.
  Sample clash = make_sample(6);
  clash.entries.push_back({"model/a", random_tensor({3}, 7)});
  clash.entries.push_back({"model/a/b", random_tensor({3}, 8)});
  expect_error([&] { save_checkpoint(path, clash.entries, clash.meta); }, {"[checkpoint]", "model/a/b"});

  // Fails validation before any file is touched.
  Sample undefined = make_sample(7);
  undefined.entries.push_back({"model/undefined", Tensor()});
  expect_error([&] { save_checkpoint(path, undefined.entries, undefined.meta); }, {"model/undefined", "undefined"});
  Sample ints = make_sample(8);
  ints.entries.push_back({"model/ids", Tensor::empty({4}, DType::i32)});
  expect_error([&] { save_checkpoint(path, ints.entries, ints.meta); }, {"model/ids", "i32"});
  Sample reserved = make_sample(9);
  reserved.meta.ints["format_version"] = 7;
  expect_error([&] { save_checkpoint(path, reserved.entries, reserved.meta); }, {"format_version", "reserved"});
  Sample twice = make_sample(10);
  twice.entries.push_back({"/model/wte", random_tensor({2}, 3)});
  expect_error([&] { save_checkpoint(path, twice.entries, twice.meta); }, {"twice"});
  Sample badname = make_sample(11);
  badname.entries.push_back({"model//x", random_tensor({2}, 3)});
  expect_error([&] { save_checkpoint(path, badname.entries, badname.meta); }, {"model//x"});

  // A stale .tmp from a crashed save is replaced, and removed again when this save fails too.
  write_bytes(path + ".tmp", "partial garbage from a crash");
  expect_error([&] { save_checkpoint(path, clash.entries, clash.meta); }, {"[checkpoint]"});

  EXPECT_EQ(read_bytes(path), before);
  EXPECT_FALSE(fs::exists(path + ".tmp"));
  CheckpointReader r(path);
  Tensor wte = Tensor::empty({11, 8});
  r.read("model/wte", wte);
  EXPECT_TRUE(bit_equal(wte, good.entries[0].tensor));
}

TEST(Checkpoint, UncreatableFolderIsAnError) {
  ScratchDir dir("ckpt");
  write_bytes(dir.str("file"), "not a folder");
  Sample s = make_sample(3);
  expect_error([&] { save_checkpoint(dir.str("file/sub/ckpt_000001.h5"), s.entries, s.meta); },
               {"[checkpoint]", "cannot create folder"});
  EXPECT_FALSE(fs::exists(dir.str("file/sub")));
}

TEST(Checkpoint, TruncatedFilesFailCleanly) {
  ScratchDir dir("ckpt");
  std::string path = dir.str("ckpt_000001.h5");
  Sample s = make_sample(11);
  s.entries.push_back({"model/big", random_tensor({256, 256}, 12)});
  save_checkpoint(path, s.entries, s.meta);
  const std::string bytes = read_bytes(path);
  for (size_t keep : {size_t{0}, size_t{100}, size_t{1024}, bytes.size() / 2, bytes.size() - 4096, bytes.size() - 1}) {
    SCOPED_TRACE("kept " + std::to_string(keep) + " of " + std::to_string(bytes.size()) + " bytes");
    std::string cut = dir.str("cut.h5");
    write_bytes(cut, bytes.substr(0, keep));
    expect_error(
        [&] {
          CheckpointReader r(cut);
          for (const std::string& name : r.list()) {
            Tensor t = Tensor::empty(r.shape(name));
            r.read(name, t);
          }
        },
        {"[checkpoint]", cut});
  }
  // The header survives these cuts, so the reader must name the file as unreadable.
  write_bytes(dir.str("half.h5"), bytes.substr(0, bytes.size() / 2));
  expect_error([&] { CheckpointReader r(dir.str("half.h5")); },
               {"[checkpoint] '" + dir.str("half.h5") + "' is not a readable HDF5 file (truncated or corrupt?)"});
}

// A cut that keeps the metadata but loses tensor data: plain truncation is caught at open by the
// stored end-of-file address, so each cut copy gets that address patched to its new length.
TEST(Checkpoint, CutDataWithIntactHeaderFailsOnRead) {
  ScratchDir dir("ckpt");
  std::string path = dir.str("ckpt_000001.h5");
  Sample s = make_sample(31);
  s.entries.push_back({"optim/v/big", random_tensor({128, 256}, 32)});
  save_checkpoint(path, s.entries, s.meta);
  const std::string bytes = read_bytes(path);
  ASSERT_EQ(bytes.compare(0, 8, "\x89HDF\r\n\x1a\n"), 0);
  // Checkpoints use the 1.8 file format: a version-2 superblock with its end-of-file address at byte
  // 28 and a checksum of bytes [0, 44) at byte 44, recomputed here as HDF5 computes it.
  ASSERT_EQ(bytes[8], 2) << "expected a version-2 superblock";
  int reached_read = 0;
  for (size_t keep = 512; keep < bytes.size(); keep += 8192) {
    SCOPED_TRACE("kept " + std::to_string(keep) + " of " + std::to_string(bytes.size()) + " bytes");
    std::string cut = bytes.substr(0, keep);
    uint64_t eof = keep;
    std::memcpy(cut.data() + 28, &eof, sizeof eof);
    const uint32_t sum = H5_checksum_metadata(cut.data(), 44, 0);
    std::memcpy(cut.data() + 44, &sum, sizeof sum);
    write_bytes(dir.str("cut.h5"), cut);
    bool opened = false;
    expect_error(
        [&] {
          CheckpointReader r(dir.str("cut.h5"));
          opened = true;
          for (const std::string& name : r.list()) {
            Tensor t = Tensor::empty(r.shape(name));
            r.read(name, t);
          }
        },
        {"[checkpoint]", "truncated or corrupt?"});
    reached_read += opened;
  }
  EXPECT_GT(reached_read, 0) << "no cut got past the header, so the read path was not exercised";
}

TEST(Checkpoint, RandomBytesMissingAndEmptyFiles) {
  ScratchDir dir("ckpt");
  std::vector<float> noise = testing::random_floats(4096, 77);
  std::string bytes(reinterpret_cast<const char*>(noise.data()), noise.size() * sizeof(float));
  write_bytes(dir.str("noise.h5"), bytes);
  write_bytes(dir.str("empty.h5"), "");
  for (const char* name : {"noise.h5", "empty.h5"}) {
    expect_error([&] { CheckpointReader r(dir.str(name)); },
                 {"[checkpoint] '" + dir.str(name) + "' is not a readable HDF5 file (truncated or corrupt?)"});
  }
  expect_error([&] { CheckpointReader r(dir.str("missing.h5")); }, {"[checkpoint]", "missing.h5", "does not exist"});
  expect_error([&] { CheckpointReader r(dir.str()); }, {"[checkpoint]", "not a regular file"});
}

// A file written with the raw API, as another tool would: one float64 dataset, optional attributes.
void write_foreign(const std::string& path, const char* format, int64_t version) {
  hid_t file = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  ASSERT_GE(file, 0);
  hsize_t dims[1] = {4};
  double data[4] = {1.5, -2.5, 3.25, 4.0};
  hid_t space = H5Screate_simple(1, dims, nullptr);
  hid_t group = H5Gcreate2(file, "model", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  ASSERT_GE(group, 0);
  H5Gclose(group);
  hid_t dset = H5Dcreate2(file, "model/wte", H5T_IEEE_F64LE, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  ASSERT_GE(dset, 0);
  ASSERT_GE(H5Dwrite(dset, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, data), 0);
  if (format) {
    h5::write_attribute(file, "format", std::string(format));
    h5::write_attribute(file, "format_version", version);
  }
  H5Dclose(dset);
  H5Sclose(space);
  ASSERT_GE(H5Fclose(file), 0);
}

TEST(Checkpoint, ForeignAndNewerFilesAreRejected) {
  ScratchDir dir("ckpt");
  h5::silence_errors();
  std::string foreign = dir.str("foreign.h5");
  write_foreign(foreign, nullptr, 0);
  expect_error([&] { CheckpointReader r(foreign); },
               {"[checkpoint] '" + foreign + "' is not a meshtrain checkpoint (no 'format' attribute)"});

  std::string other = dir.str("other.h5");
  write_foreign(other, "someone-else", 1);
  expect_error([&] { CheckpointReader r(other); }, {"not a meshtrain checkpoint", "someone-else"});

  std::string newer = dir.str("newer.h5");
  write_foreign(newer, kCheckpointFormat, kCheckpointVersion + 1);
  expect_error([&] { CheckpointReader r(newer); },
               {"[checkpoint]", "format_version " + std::to_string(kCheckpointVersion + 1)});

  // A version-2 file must carry the metadata checksum (a flipped bit in its name must not pass).
  std::string unsummed = dir.str("unsummed.h5");
  write_foreign(unsummed, kCheckpointFormat, 2);
  expect_error([&] { CheckpointReader r(unsummed); }, {"[checkpoint]", unsummed, "no 'meta_crc32' attribute"});

  // A well-formed (version 1, no metadata checksum) checkpoint whose dataset is float64 opens, but
  // reading it as f32 is refused.
  std::string f64 = dir.str("f64.h5");
  write_foreign(f64, kCheckpointFormat, 1);
  CheckpointReader r(f64);
  EXPECT_EQ(r.list(), std::vector<std::string>{"model/wte"});
  Tensor t = Tensor::empty({4});
  expect_error([&] { r.read("model/wte", t); }, {"model/wte", "not float32"});
}

void write_fixed_string(hid_t loc, const char* name, const std::string& value, size_t size, H5T_str_t pad) {
  hid_t type = H5Tcopy(H5T_C_S1);
  H5Tset_size(type, size);
  H5Tset_strpad(type, pad);
  hid_t space = H5Screate(H5S_SCALAR);
  hid_t attr = H5Acreate2(loc, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
  ASSERT_GE(attr, 0);
  std::string buf = value;
  buf.resize(size, pad == H5T_STR_SPACEPAD ? ' ' : '\0');
  ASSERT_GE(H5Awrite(attr, type, buf.data()), 0);
  H5Aclose(attr);
  H5Sclose(space);
  H5Tclose(type);
}

// Other writers (h5py with numpy bytes, C tools) use fixed-length strings and narrower integers.
TEST(Checkpoint, ReadsAttributesFromOtherWriters) {
  ScratchDir dir("ckpt");
  h5::silence_errors();
  std::string path = dir.str("other_writer.h5");
  hid_t file = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  ASSERT_GE(file, 0);
  std::string format = kCheckpointFormat;
  write_fixed_string(file, "format", format, format.size(), H5T_STR_NULLPAD);  // no room for a terminator
  write_fixed_string(file, "short", "hi", 16, H5T_STR_NULLTERM);
  write_fixed_string(file, "spaced", "x y", 12, H5T_STR_SPACEPAD);
  int32_t version = 1, step = -7;
  hid_t space = H5Screate(H5S_SCALAR);
  for (auto [name, value] : {std::pair{"format_version", &version}, std::pair{"step", &step}}) {
    hid_t attr = H5Acreate2(file, name, H5T_STD_I32BE, space, H5P_DEFAULT, H5P_DEFAULT);
    ASSERT_GE(H5Awrite(attr, H5T_NATIVE_INT32, value), 0);
    H5Aclose(attr);
  }
  double pi = 3.25;
  hid_t attr = H5Acreate2(file, "ignored_double", H5T_IEEE_F64LE, space, H5P_DEFAULT, H5P_DEFAULT);
  ASSERT_GE(H5Awrite(attr, H5T_NATIVE_DOUBLE, &pi), 0);
  H5Aclose(attr);
  H5Sclose(space);
  ASSERT_GE(H5Fclose(file), 0);

  CheckpointReader r(path);
  EXPECT_EQ(r.get_string("format"), kCheckpointFormat);
  EXPECT_EQ(r.get_string("short"), "hi");
  EXPECT_EQ(r.get_string("spaced"), "x y");
  EXPECT_EQ(r.get_int("format_version"), 1);
  EXPECT_EQ(r.get_int("step"), -7);
  EXPECT_EQ(r.meta().ints.count("ignored_double") + r.meta().strings.count("ignored_double"), 0u);
  EXPECT_TRUE(r.list().empty());
}

TEST(Checkpoint, ReadErrorsNameTheDataset) {
  ScratchDir dir("ckpt");
  std::string path = dir.str("ckpt_000002.h5");
  Sample s = make_sample(21);
  save_checkpoint(path, s.entries, s.meta);
  CheckpointReader r(path);
  Tensor t = Tensor::empty({11, 8});
  expect_error([&] { r.read("model/not_there", t); }, {"[checkpoint]", "model/not_there"});
  expect_error([&] { r.read("model", t); }, {"[checkpoint]", "'model'"});
  Tensor wrong = Tensor::empty({8, 11});
  expect_error([&] { r.read("model/wte", wrong); }, {"[checkpoint]", "model/wte", "[11, 8]", "[8, 11]"});
  Tensor ints = Tensor::empty({11, 8}, DType::i32);
  expect_error([&] { r.read("model/wte", ints); }, {"model/wte", "f32"});
}

TEST(Checkpoint, FindLatestPicksHighestStepAndIgnoresOthers) {
  ScratchDir dir("ckpt");
  EXPECT_EQ(checkpoint_path("out", 10), "out/ckpt_000010.h5");
  EXPECT_EQ(checkpoint_path("/a/b", 1234567), "/a/b/ckpt_1234567.h5");
  EXPECT_EQ(find_latest_checkpoint(dir.str("missing")), "");
  EXPECT_EQ(find_latest_checkpoint(dir.str()), "");

  for (const char* name :
       {"ckpt_000010.h5", "ckpt_000200.h5", "ckpt_000150.h5", "ckpt_000300.h5.tmp", "ckpt_000999.h5.bak", "ckpt_12.h5",
        "ckpt_00abc0.h5", "other_000500.h5", "ckpt_000400.txt"}) {
    write_bytes(dir.str(name), "x");
  }
  fs::create_directory(dir.str("ckpt_000700.h5"));  // a folder, not a checkpoint
  EXPECT_EQ(find_latest_checkpoint(dir.str()), checkpoint_path(dir.str(), 200));
  write_bytes(checkpoint_path(dir.str(), 1234567), "x");
  EXPECT_EQ(find_latest_checkpoint(dir.str()), checkpoint_path(dir.str(), 1234567));
  // `latest` lagging behind (re-pointing it failed after the newer checkpoint was complete): the
  // newest checkpoint still wins; the pointer is read as written.
  write_bytes(dir.str("latest"), "ckpt_000200.h5\n");
  EXPECT_EQ(read_latest_pointer(dir.str()), checkpoint_path(dir.str(), 200));
  EXPECT_EQ(find_latest_checkpoint(dir.str()), checkpoint_path(dir.str(), 1234567));
  // With no checkpoint-named file, the file `latest` names; a pointer to a missing file is ignored.
  ScratchDir other("ckpt_pointer");
  write_bytes(other.str("renamed_by_hand.h5"), "x");
  write_bytes(other.str("latest"), "renamed_by_hand.h5\n");
  EXPECT_EQ(find_latest_checkpoint(other.str()), other.str("renamed_by_hand.h5"));
  write_bytes(other.str("latest"), "gone.h5\n");
  EXPECT_EQ(find_latest_checkpoint(other.str()), "");
}

TEST(H5Helpers, CheckNamesTheFailingCallAndHandlesClose) {
  ScratchDir dir("h5");
  h5::silence_errors();
  expect_error([&] { h5::File f(H5_CHECK(H5Fopen(dir.str("absent.h5").c_str(), H5F_ACC_RDONLY, H5P_DEFAULT))); },
               {"[hdf5]", "H5Fopen", "failed"});

  h5::Dataspace a(H5_CHECK(H5Screate(H5S_SCALAR)));
  hid_t id = a.get();
  EXPECT_GT(H5Iis_valid(id), 0);
  h5::Dataspace b(std::move(a));
  EXPECT_FALSE(a.valid());
  EXPECT_EQ(b.get(), id);
  b.reset();
  EXPECT_LE(H5Iis_valid(id), 0);  // closed exactly once, by the handle that owned it last
  b.close();                      // closing an empty handle is a no-op
}

TEST(Checkpoint, CorruptedTensorDataFailsItsChecksum) {
  ScratchDir dir("ckpt");
  const std::string path = dir.str("ckpt_000001.h5");
  Sample s = make_sample(11);
  save_checkpoint(path, s.entries, s.meta);
  // Find where wpe's data sit in the file and flip one bit there.
  haddr_t offset = HADDR_UNDEF;
  {
    hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
    hid_t d = H5Dopen2(f, "model/wpe", H5P_DEFAULT);
    offset = H5Dget_offset(d);
    H5Dclose(d);
    H5Fclose(f);
  }
  ASSERT_NE(offset, HADDR_UNDEF);
  {
    std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(static_cast<std::streamoff>(offset + 13));
    char c = 0;
    f.read(&c, 1);
    c ^= 0x10;
    f.seekp(static_cast<std::streamoff>(offset + 13));
    f.write(&c, 1);
  }
  CheckpointReader r(path);
  Tensor wpe = Tensor::empty({6, 8});
  try {
    r.read("model/wpe", wpe);
    FAIL() << "a flipped bit was not detected";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'model/wpe'"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("fails its checksum"), std::string::npos) << e.what();
  }
  Tensor wte = Tensor::empty({11, 8});
  EXPECT_NO_THROW(r.read("model/wte", wte)) << "other tensors still read";
}

// The checksum is zlib's CRC-32 (what Python's zlib.crc32 gives on a tensor's bytes), whatever
// computes it: ISA-L, split over threads for large buffers, pieces joined by crc32_concat.
TEST(Checksum, IsZlibsCrc32AtEverySizeAndJoinsPieces) {
  std::vector<float> v = testing::random_floats(5'000'000, 91);  // 20 MB: the threaded path
  const auto* bytes = reinterpret_cast<const unsigned char*>(v.data());
  for (size_t n : {size_t{0}, size_t{1}, size_t{3}, size_t{4096}, size_t{1} << 23, v.size() * 4 - 1, v.size() * 4}) {
    uLong z = crc32(0L, Z_NULL, 0);
    for (size_t done = 0; done < n;) {
      const uInt piece = static_cast<uInt>(std::min<size_t>(n - done, 1u << 30));
      z = crc32(z, bytes + done, piece);
      done += piece;
    }
    EXPECT_EQ(crc32_update(0, bytes, n), static_cast<uint32_t>(z)) << n << " bytes";
  }
  const size_t cut = 12'345'679;
  const uint32_t a = crc32_update(0, bytes, cut), b = crc32_update(0, bytes + cut, v.size() * 4 - cut);
  EXPECT_EQ(crc32_concat(a, b, static_cast<int64_t>(v.size() * 4 - cut)), crc32_update(0, bytes, v.size() * 4));
  EXPECT_EQ(crc32_update(a, bytes + cut, v.size() * 4 - cut), crc32_update(0, bytes, v.size() * 4));
}

// A bit flipped anywhere in a checkpoint, one position at a time over the whole file: opening it and
// reading every tensor either fails with a meshtrain::Error (naming the file) or gives back exactly
// what was saved (the flip hit unused padding). Never a crash, never different numbers or metadata.
TEST(Checkpoint, EveryFlippedBitIsAnErrorOrChangesNothing) {
  ScratchDir dir("ckpt");
  const std::string path = dir.str("ckpt_000001.h5"), flipped = dir.str("flipped.h5");
  Sample s = make_sample(21);
  s.meta.strings["config"] = "[model]\nn_layer = 4\nn_head = 4\n";  // a small file: every byte is tried
  save_checkpoint(path, s.entries, s.meta);
  const std::string bytes = read_bytes(path);
  int errors = 0, unchanged = 0, silent = 0;
  for (size_t i = 0; i < bytes.size(); ++i) {
    std::string damaged = bytes;
    damaged[i] = static_cast<char>(damaged[i] ^ (1 << (i % 8)));
    write_bytes(flipped, damaged);
    // (MESHTRAIN_FLIP_TRACE=1 names each byte before it is tried: what hung, if HDF5 ever loops.)
    if (std::getenv("MESHTRAIN_FLIP_TRACE")) std::fprintf(stderr, "flip byte %zu\n", i);
    try {
      CheckpointReader r(flipped);
      auto ints = r.meta().ints;
      bool same = ints.erase("format_version") == 1 && ints == s.meta.ints &&
                  r.meta().strings.size() == s.meta.strings.size() + 1;  // + format
      for (const auto& [key, value] : s.meta.strings) same = same && r.meta().strings.count(key) && r.get_string(key) == value;
      for (const CheckpointEntry& e : s.entries) {
        Tensor t = Tensor::empty(e.tensor.shape());
        r.read(e.path, t);
        same = same && bit_equal(t, e.tensor);
      }
      same ? ++unchanged : ++silent;
      if (!same && silent <= 5) ADD_FAILURE() << "a flipped bit at byte " << i << " changed what was read, silently";
    } catch (const Error& e) {
      ++errors;
      EXPECT_NE(std::string(e.what()).find(flipped), std::string::npos) << "byte " << i << ": " << e.what();
    }
  }
  EXPECT_EQ(silent, 0);
  EXPECT_GT(errors, static_cast<int>(bytes.size() / 2)) << "most of the file is data or checksummed metadata";
  ::testing::Test::RecordProperty("bytes_flipped", std::to_string(bytes.size()));
  std::printf("[checkpoint] %zu single-bit flips: %d errors, %d in unused bytes (read back unchanged), %d silent\n",
              bytes.size(), errors, unchanged, silent);
}

}  // namespace
}  // namespace meshtrain
