"""`python -m persam.video`: see persam/video/app.py."""

import sys

from persam.video.app import cli

if __name__ == "__main__":
    sys.exit(cli())
