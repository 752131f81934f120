"""``python -m search.cli`` (what torchrun runs): the ``fbnet-search`` command line."""

from search.cli import main

main()
