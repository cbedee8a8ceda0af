import sys

from unmask.cli.main import main

if __name__ == "__main__":  # a spawned worker process imports this module too, and must not run the command
    sys.exit(main())
