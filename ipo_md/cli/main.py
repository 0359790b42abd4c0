"""The `ipo-md` (alias `t5x`) command: dispatches to one module per subcommand.

Each subcommand lives in `ipo_md.cli.<module>` and exposes `main(argv)`. The
module is imported only when its subcommand runs, so `ipo-md theory` never
pays for TensorFlow and `ipo-md train` never pays for matplotlib.
"""

import importlib
import sys

# subcommand -> (module under ipo_md.cli, one-line help).
SUBCOMMANDS = {
    "train": ("train", "Train a policy (SFT, online IPO, IPO-MD, ...) from gin files."),
    "theory": ("theory", "Tabular preference games: figures and numbers of the paper's propositions."),
    "data": ("data", "Inspect seqio tasks: decoded examples and length percentiles."),
    "convert": ("convert", "Import Hugging Face / T5X T5 checkpoints."),
    "export": ("export", "Export a trained policy to the Hugging Face layout."),
    "eval": ("eval", "Side-by-side evaluation of policies by judges (oracle, learned PM, LLM)."),
}


def _usage() -> str:
  lines = ["usage: ipo-md <command> [flags]", "", "commands:"]
  for name, (_, text) in SUBCOMMANDS.items():
    lines.append(f"  {name:<10}{text}")
  lines.append("")
  lines.append("Run `ipo-md <command> --help` for the flags of one command.")
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if not argv or argv[0] in ("-h", "--help", "help"):
    print(_usage())
    return 0
  name, rest = argv[0], argv[1:]
  if name not in SUBCOMMANDS:
    print(f"ipo-md: unknown command {name!r}.\n\n{_usage()}", file=sys.stderr)
    return 2
  module = importlib.import_module(f"ipo_md.cli.{SUBCOMMANDS[name][0]}")
  return int(module.main(rest) or 0)


if __name__ == "__main__":
  sys.exit(main())
