# shellcheck shell=bash
# The environment the bench scripts launch mpiexec in; source it (`. "$(dirname "$0")/mpi_env.sh"`).
# Running as root in a container, more ranks than cores (oversubscribed ranks yield when they wait),
# ranks placed by the OS unless BIND names an Open MPI binding policy (core:overload-allowed pins
# each rank to a core), and PMIx's native security check: with libmunge installed but no munge
# daemon, the default one retries the daemon's socket for 2.3 s before every mpiexec starts a rank
# (README, "Running under MPI"). bench/sweep.py and the tests set the same variables themselves.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OMPI_MCA_hwloc_base_binding_policy=${BIND:-none} OMPI_MCA_mpi_yield_when_idle=1
export PMIX_MCA_psec=${PMIX_MCA_psec:-native}
