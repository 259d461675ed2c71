// One Chrome Trace Event file (viewable in Perfetto or chrome://tracing) from every rank's trace
// events (core/trace.h): ranks are processes ("rank r (dp d, tp t, pp p)"), threads are threads,
// regions are complete ("X") events with their step and bytes, and each pipeline send is joined to
// its receive by a flow arrow. Every rank's clock is moved onto rank 0's by an offset measured at
// start-up, so regions of different ranks line up.
#pragma once

#include <string>

namespace meshtrain {

class Communicator;

/// Microseconds to add to this rank's steady clock to read rank 0's: 0 on rank 0's host (one
/// system-wide monotonic clock), elsewhere from the quickest of 16 ping-pongs with rank 0 (off by
/// at most half that round trip).
double clock_offset_us(Communicator& world);

/// Collective over world: every rank's recorded events (taken from the tracer) go to rank 0, which
/// writes them to path as one JSON file (a temporary name, then renamed). process_name is this
/// rank's process label; offset_us its clock offset.
void write_trace(const std::string& path, Communicator& world, const std::string& process_name, double offset_us);

}  // namespace meshtrain
