"""`python -m persam.video`: see persam/video/app.py."""

from persam.video.app import main

if __name__ == "__main__":
    main()
