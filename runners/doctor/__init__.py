"""`ablate doctor`: a self-check of this machine for the lab. The shared state (context), the
checks by concern (environment, cuda_path, throughput, several_nets), and their order (run)."""
