// The meshtrain command line: subcommands train, generate, tokenize, tokenizer train.
#pragma once

namespace meshtrain {

/// Parses argv, runs the chosen subcommand, prints errors; returns the process exit code.
int run_cli(int argc, char** argv);

}  // namespace meshtrain
