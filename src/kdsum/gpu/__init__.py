"""GPU: device slots, multi-GPU (DDP) launch, attention and fused kernels for training, and the memory planner."""
