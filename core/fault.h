// Fault injection for the tests of failing ranks: MESHTRAIN_TEST_FAULT="KIND:RANK[:STEP]" makes
// rank RANK misbehave at step STEP (any step when absent) in the way KIND names: "hang" (sleeps
// forever at the start of the step), "kill" (SIGKILL at the start of the step), "data" (opens a
// shard that does not exist), "kill_in_save" (SIGKILL after writing its part of the step's
// checkpoint, before the file is complete). Unset, nothing happens. Never set it outside tests.
#pragma once

#include <cstdint>

namespace meshtrain {

/// Whether the injected fault KIND applies to rank at step (step -1: any).
bool test_fault(const char* kind, int rank, int64_t step = -1);

}  // namespace meshtrain
