import sys

from dqar_bench.cli import main

sys.exit(main())
