"""Mesh construction, sharding rules (regex -> PartitionSpec) and multi-host initialisation."""
