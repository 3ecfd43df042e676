"""Training loops (lidar, bev), QAT and distillation drivers."""
