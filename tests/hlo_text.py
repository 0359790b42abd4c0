"""Reading compiled XLA programs (`.compile().as_text()`) in tests."""

import re


def largest_while_loop(hlo_text: str, *,
                       with_condition: bool = False) -> list[str]:
  """The instructions (stripped lines) of the program's largest while loop:
  its body, preceded by its condition when `with_condition`."""
  loops = [l for l in hlo_text.splitlines() if re.search(r"\) while\(", l)]
  loop = max(loops, key=len)
  lines = []
  for part in (("condition", "body") if with_condition else ("body",)):
    name = re.search(rf"{part}=(%[\w.\-]+)", loop).group(1)
    inside = False
    for line in hlo_text.splitlines():
      if line.startswith(name + " ") and line.rstrip().endswith("{"):
        inside = True
      elif inside and line.strip() == "}":
        break
      elif inside:
        lines.append(line.strip())
  return lines
