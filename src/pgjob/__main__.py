"""`python -m pgjob` and the `pgjob` console script: both end up in pgjob._cli.main()."""
from __future__ import annotations

import sys
from typing import Optional, Sequence


def main(argv: Optional[Sequence[str]] = None) -> int:
    # Imported on call, not at module level: `python -m pgjob` runs this file as __main__,
    # and the argument parser should be built once, by the module that owns it.
    from ._cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
