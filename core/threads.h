// CPU thread control: one number drives both OpenMP regions and OpenBLAS.
#pragma once

namespace meshtrain {

/// Cores available to this process (its CPU affinity mask), at least 1.
int available_cores();
/// Sets the thread count for OpenMP and OpenBLAS.
void set_num_threads(int n);
/// The thread count last set (or OpenMP's default).
int num_threads();

}  // namespace meshtrain
