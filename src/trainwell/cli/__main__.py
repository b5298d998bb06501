import sys

from trainwell.cli.app import main

sys.exit(main())
