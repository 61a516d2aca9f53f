import sys

from affinitynet.cli import main

sys.exit(main())
