"""Start the tweetgen daemon: the same as `tweetgen daemon` (all its flags work here too)."""

import sys

from tweetgen.cli import main

if __name__ == "__main__":
    sys.exit(main(["daemon", *sys.argv[1:]]))
