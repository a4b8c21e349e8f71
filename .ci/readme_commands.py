"""Print the README's commands for one CI step, one per line: the shell lines of the fenced block
that follows the ``<!-- .ci/run: STEP -->`` marker. `.ci/run` executes exactly these, so the
README and CI cannot drift apart (tests/test_readme.py checks the markers exist)."""

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def commands(step: str, text: str | None = None) -> list[str]:
    text = README.read_text() if text is None else text
    m = re.search(rf"<!-- \.ci/run: {re.escape(step)} -->\s*```(?:bash|sh)\n(.*?)```", text, re.S)
    if not m:
        raise SystemExit(f"README.md: no fenced block after '<!-- .ci/run: {step} -->'")
    return [ln.strip() for ln in m.group(1).splitlines() if ln.strip() and not ln.strip().startswith("#")]


if __name__ == "__main__":
    for step in sys.argv[1:]:
        print("\n".join(commands(step)))
