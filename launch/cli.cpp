// Placeholder CLI; replaced by the full command set.
#include "launch/cli.h"

namespace meshtrain {
int run_cli(int, char**) { return 0; }
}  // namespace meshtrain
