"""``python -m magma_data`` is ``magma-data``."""

from magma_data.cli import main

main()
