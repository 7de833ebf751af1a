"""Training one network: the typed recipe and data configs (config); the data (images: what both
loaders share, data: held in memory, stream: decoded per batch); the run's length and lr
(schedule), how it executes (execution), its checkpoint, its evaluation, the trainer itself;
torch.distributed (distributed); and the throughput measurement (bench)."""
