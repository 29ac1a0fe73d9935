"""The `keras-transfer` command line: its parser, its commands and the run folders they write."""
