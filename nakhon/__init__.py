"""The ``nakhon`` command and the demo that runs a whole city's fleet on one machine."""
