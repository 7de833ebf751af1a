"""Training one network: the typed recipe and data configs (config), the data (data, stream),
the trainer, torch.distributed (distributed), and the measurements (bench, doctor)."""
