"""`python -m shadowtap.cli`: the same as the `shadowtap` command."""

from shadowtap.cli import main

main()
