"""``python -m microvm``: the same as the ``microvm`` command."""
from microvm.cli import console_main

console_main()
