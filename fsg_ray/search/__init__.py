"""The `fsg tune` search, Ray-free: the search-file format, and the results, best config, figure and report page."""
