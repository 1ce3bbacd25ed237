import sys

from fxnas.cli import main

sys.exit(main())
