// MPI's lifetime as an RAII object, detection of mpirun/srun launches, and the world communicator.
// A plain single process never initialises MPI: world_communicator(nullptr) is a LocalCommunicator.
#pragma once

#include <mpi.h>

#include <memory>
#include <optional>
#include <string>

#include "core/error.h"
#include "core/communicator.h"

/// Throws meshtrain::Error naming the failing MPI call and MPI's description of the error.
#define MPI_CHECK(call)                                                                                            \
  do {                                                                                                             \
    int mt_mpi_err_ = (call);                                                                                      \
    if (mt_mpi_err_ != MPI_SUCCESS) ::meshtrain::throw_mpi_error(__FILE__, __LINE__, "[mpi] " #call, mt_mpi_err_); \
  } while (0)

namespace meshtrain {

/// Throws "<what> failed: <MPI's text for code> (MPI error <code>)".
[[noreturn]] void throw_mpi_error(const char* file, int line, const std::string& what, int code);

class MpiRuntime {
 public:
  /// Initialises MPI with MPI_THREAD_FUNNELED or better (throws if the library offers less), so
  /// MPI calls must all come from the thread that created the runtime. If MPI
  /// is already initialised this object does not own it and will not finalize it. Collective over
  /// MPI_COMM_WORLD (it also finds which ranks share this node).
  explicit MpiRuntime(int* argc = nullptr, char*** argv = nullptr);
  /// Calls MPI_Finalize if this object initialised MPI and nobody finalized it already.
  ~MpiRuntime();
  MpiRuntime(const MpiRuntime&) = delete;
  MpiRuntime& operator=(const MpiRuntime&) = delete;

  /// True when the environment shows an MPI launcher (mpirun/mpiexec of Open MPI, MPICH or
  /// MVAPICH, PMIx, or srun), i.e. when initialising MPI is wanted.
  static bool launched_by_mpi();
  /// An MpiRuntime when launched_by_mpi(), else nullptr (and MPI stays uninitialised).
  static std::unique_ptr<MpiRuntime> init_if_launched(int* argc = nullptr, char*** argv = nullptr);
  /// This process's index among the ranks on its node, from the launcher's environment (Open MPI,
  /// MVAPICH, MPICH, Slurm), usable before MPI is initialised (to pick a GPU); nullopt if unknown.
  static std::optional<int> local_rank_from_env();

  /// The thread level MPI granted (MPI_THREAD_FUNNELED, _SERIALIZED or _MULTIPLE).
  int thread_level() const { return thread_level_; }
  /// Rank and number of ranks in MPI_COMM_WORLD.
  int world_rank() const { return world_rank_; }
  int world_size() const { return world_size_; }
  /// This rank's index among the ranks on its node, and how many ranks share the node.
  int local_rank() const { return local_rank_; }
  int local_size() const { return local_size_; }
  /// Hardware threads of the node divided among the ranks on it (at least 1).
  int threads_per_rank() const;

 private:
  bool owns_ = false;
  int thread_level_ = 0;
  int world_rank_ = 0, world_size_ = 1;
  int local_rank_ = 0, local_size_ = 1;
};

/// MpiCommunicator over MPI_COMM_WORLD when runtime is non-null and MPI is initialised, else a
/// LocalCommunicator.
std::unique_ptr<Communicator> world_communicator(MpiRuntime* runtime);

}  // namespace meshtrain
