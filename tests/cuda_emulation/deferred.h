// CUDA emulation: work that finishes on its own after it was queued on a stream (the emulated
// NCCL's MPI transfers), which is how a stream's asynchrony shows through the emulation. Kernels and
// copies still run when queued; deferred work runs in stream order like a GPU's: a stream starts its
// next piece only once the one before has finished, and every stream moves forward whenever the host
// waits for any of them (stream synchronisation and queries, events recorded after the work, and
// cudaStreamWaitEvent, which here blocks the host; device synchronisation; later kernels and copies
// queued on the same stream). So two ranks whose streams each wait on the other deadlock here as they
// would on GPUs; a wait that lasts over 60 s is reported as one. Private to the emulation library.
#pragma once

#include <cuda_runtime.h>

#include <functional>

namespace mt_emu {

/// Says, without waiting, whether the work has finished.
using Poll = std::function<bool()>;
/// Queues work on stream s (nullptr: the default stream): start() begins it once everything queued
/// before it on s has finished, poll() says when it has.
void defer(cudaStream_t s, std::function<void()> start, Poll poll);
/// Waits for all the work deferred on s so far.
void drain(cudaStream_t s);
/// True while s records a CUDA graph (work queued on it is recorded, to run at each replay).
bool capturing(cudaStream_t s);

}  // namespace mt_emu
