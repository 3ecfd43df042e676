"""Knowledge distillation for QAT: view-guided (QD-BEV), channel-wise (CWD), temporal."""
