"""The report of a recorded run: built from the data directory, printed as tables or written as HTML."""
