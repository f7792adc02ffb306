"""`python -m bench` (what scripts/bench runs): see bench.run."""

from bench.run import main

main()
