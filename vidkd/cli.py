"""Entry-point helper for the scripts in tools/ and data_prep/."""
import sys

from vidkd.errors import VidkdError


def run(main):
    """Call `main()` and exit with its status; bad input (a VidkdError) exits 1 with its one-line message
    naming the file / line / key, not a traceback."""
    try:
        sys.exit(main())
    except VidkdError as e:
        sys.exit(f"error: {e}")
