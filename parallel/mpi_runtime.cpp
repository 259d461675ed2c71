// MpiRuntime: MPI_Init_thread / MPI_Finalize as RAII, launcher detection from the environment, and
// node-local rank discovery.
#include "parallel/mpi_runtime.h"

#include <algorithm>
#include <charconv>
#include <cstdlib>
#include <cstring>
#include <string_view>
#include <thread>

#include "parallel/mpi_communicator.h"

namespace meshtrain {

void throw_mpi_error(const char* file, int line, const std::string& what, int code) {
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(code, text, &len) != MPI_SUCCESS) len = 0;
  throw_error(file, line, fmt::format("{} failed: {} (MPI error {})", what, std::string_view(text, len), code));
}

namespace {

std::optional<int> env_int(const char* name) {
  const char* s = std::getenv(name);
  if (!s || !*s) return std::nullopt;
  int value = 0;
  auto [end, ec] = std::from_chars(s, s + std::strlen(s), value);
  if (ec != std::errc() || *end != '\0') return std::nullopt;
  return value;
}

bool env_set(const char* name) { return env_int(name).has_value(); }

}  // namespace

bool MpiRuntime::launched_by_mpi() {
  return env_set("OMPI_COMM_WORLD_SIZE")                           // Open MPI's mpirun
         || env_set("PMIX_RANK")                                   // PMIx launchers (prterun, srun --mpi=pmix)
         || (env_set("PMI_SIZE") && env_set("PMI_RANK"))           // MPICH's hydra, srun --mpi=pmi2
         || env_set("MV2_COMM_WORLD_SIZE")                         // MVAPICH
         || (env_set("SLURM_NTASKS") && env_set("SLURM_PROCID"));  // srun
}

std::unique_ptr<MpiRuntime> MpiRuntime::init_if_launched(int* argc, char*** argv) {
  if (!launched_by_mpi()) return nullptr;
  return std::make_unique<MpiRuntime>(argc, argv);
}

std::optional<int> MpiRuntime::local_rank_from_env() {
  for (const char* name :
       {"OMPI_COMM_WORLD_LOCAL_RANK", "MV2_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID"})
    if (auto v = env_int(name)) return v;
  return std::nullopt;
}

MpiRuntime::MpiRuntime(int* argc, char*** argv) {
  int initialized = 0, finalized = 0;
  MPI_CHECK(MPI_Initialized(&initialized));
  MPI_CHECK(MPI_Finalized(&finalized));
  MT_CHECK(!finalized, "[mpi] MPI was already finalized in this process; it cannot be initialised again");
  if (initialized) {
    MPI_CHECK(MPI_Query_thread(&thread_level_));
  } else {
    MPI_CHECK(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &thread_level_));
    owns_ = true;
  }
  // Finalize what we initialised if a check below throws: the destructor will not run.
  try {
    MT_CHECK(thread_level_ >= MPI_THREAD_FUNNELED,
             "[mpi] the MPI library grants thread level {} but meshtrain needs MPI_THREAD_FUNNELED ({}); use an "
             "MPI built with thread support",
             thread_level_, MPI_THREAD_FUNNELED);
    MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &world_rank_));
    MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &world_size_));
    // srun without an MPI plugin that matches the MPI library starts N processes that each see a
    // world of one: N independent runs writing the same files. Refuse that.
    // (A batch script itself is no step: SLURM_STEP_NUM_TASKS is set by srun only.)
    const auto step_tasks = env_int("SLURM_STEP_NUM_TASKS");
    MT_CHECK(!(step_tasks && *step_tasks > 1 && world_size_ == 1),
             "[mpi] srun started {} tasks, but MPI sees this one alone: the launcher did not connect them. Use "
             "`srun --mpi=pmix` (Open MPI; `srun --mpi=list` shows the plugins) or mpirun inside the allocation",
             *step_tasks);
    // Open MPI and MVAPICH say where a rank sits on its node; otherwise ask MPI which ranks share
    // memory with us. Every rank of one launch sees the same variables, so all take the same branch
    // and the collective split below is entered by all or none.
    auto env_rank = env_int("OMPI_COMM_WORLD_LOCAL_RANK"), env_size = env_int("OMPI_COMM_WORLD_LOCAL_SIZE");
    if (!env_rank || !env_size)
      env_rank = env_int("MV2_COMM_WORLD_LOCAL_RANK"), env_size = env_int("MV2_COMM_WORLD_LOCAL_SIZE");
    if (env_rank && env_size) {
      local_rank_ = *env_rank;
      local_size_ = *env_size;
    } else {
      MPI_Comm node = MPI_COMM_NULL;
      MPI_CHECK(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, world_rank_, MPI_INFO_NULL, &node));
      MPI_Comm_rank(node, &local_rank_);
      MPI_Comm_size(node, &local_size_);
      MPI_Comm_free(&node);
    }
  } catch (...) {
    if (owns_) MPI_Finalize();
    throw;
  }
}

MpiRuntime::~MpiRuntime() {
  if (!owns_) return;
  int finalized = 1;
  if (MPI_Finalized(&finalized) == MPI_SUCCESS && !finalized) MPI_Finalize();
}

int MpiRuntime::threads_per_rank() const {
  int cores = static_cast<int>(std::thread::hardware_concurrency());
  return std::max(1, cores / std::max(1, local_size_));
}

std::unique_ptr<Communicator> world_communicator(MpiRuntime* runtime) {
  int initialized = 0, finalized = 0;
  if (runtime) {
    MPI_CHECK(MPI_Initialized(&initialized));
    MPI_CHECK(MPI_Finalized(&finalized));
  }
  if (initialized && !finalized) return std::make_unique<MpiCommunicator>(MPI_COMM_WORLD, "mpi world");
  return std::make_unique<LocalCommunicator>();
}

}  // namespace meshtrain
