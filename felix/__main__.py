"""``python -m felix``: same as ``tabby-felix``."""

from felix.main import main

main()
