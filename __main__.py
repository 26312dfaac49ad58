"""`python -m revnet ...` is the command line (the same as the `revnet` console script)."""
from revnet.cli import main

main()
