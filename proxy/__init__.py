"""The shadow proxy: passthrough to the primary, mirroring to the candidate, pair records and sinks."""
