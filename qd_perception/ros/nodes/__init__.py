"""Node executables (``lib/qd_perception/<name>``; also ``python -m qd_perception.ros.nodes.<name>``)."""
