"""Raw-data contract, readers and (later) the point-in-time feature pipeline."""
