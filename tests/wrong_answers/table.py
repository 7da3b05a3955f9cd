"""Print the per-check table of the wrong-implementation suite: check, wrong answers, rejected, named, misleading.

    PYTHONPATH=. python tests/wrong_answers/table.py [--messages]
"""

import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from wrong_answers import load, verdict  # noqa: E402


def main() -> None:
    _, wrong = load()
    rows = defaultdict(lambda: [0, 0, 0, 0])
    for case in wrong:
        v = verdict(case, wrong)
        row = rows[case.check.__name__]
        row[0] += 1
        row[1] += v.rejected
        row[2] += v.named
        row[3] += v.misleading
        if "--messages" in sys.argv or not v.named:
            print(f"{'NOT NAMED' if not v.named else 'named'}: {case.id}\n    {v.message.splitlines()[0] if v.message else 'PASSED'}",
                  file=sys.stderr)
    print("| check | wrong answers | rejected | named | misleading |")
    print("| --- | --- | --- | --- | --- |")
    total = [0, 0, 0, 0]
    for name, row in rows.items():
        print(f"| {name} | " + " | ".join(map(str, row)) + " |")
        total = [a + b for a, b in zip(total, row)]
    print(f"| **all {len(rows)} checks** | " + " | ".join(map(str, total)) + " |")
    print(f"named: {100 * total[2] / total[0]:.1f}%")


if __name__ == "__main__":
    main()
