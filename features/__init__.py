"""The raw-data contract and its readers, point-in-time features and labels, snapshots."""
