"""The ``whybox`` command line: a thin layer over the public API (see :mod:`whybox.cli.main`)."""
