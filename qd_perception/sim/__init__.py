"""Synthetic driving world: procedural scenes, camera renderer, lidar ray caster, writers."""
