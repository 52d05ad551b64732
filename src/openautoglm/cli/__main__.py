"""``python -m openautoglm.cli`` runs the ``autoglm`` command."""

from openautoglm.cli.main import main

main()
