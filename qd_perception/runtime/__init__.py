"""Runtime backends behind one :class:`~qd_perception.runtime.base.Detector` protocol."""
