// meshtrain entry point: parses the command line and runs one subcommand; the only place that
// catches meshtrain::Error and turns it into a message and a non-zero exit.
#include "launch/cli.h"

int main(int argc, char** argv) { return meshtrain::run_cli(argc, argv); }
