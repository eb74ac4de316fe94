"""`python -m persam.video`: see persam/video/app.py."""

import sys

from persam.preflight import resume_argv
from persam.video.app import main

if __name__ == "__main__":
    # `resume=true hydra.run.dir=DIR` alone continues the run recorded in DIR (its overrides)
    sys.argv[1:] = resume_argv(sys.argv[1:])
    main()
