"""Pure-numpy geometry: boxes, rigid transforms, camera projection, rig description."""
