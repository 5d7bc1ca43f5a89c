"""``python -m bgp``: same as ``tabby-bgp``."""

from bgp.main import main

main()
