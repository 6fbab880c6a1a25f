"""Training: train state, pure steps and the stage loop (train), checkpoints, stage
fingerprints, config checks, device code (parallel, the only module that knows
devices), the run log, the errors a run explains itself, choosing on the held-out
slice (selection), inference settings chosen on that slice (sweep), and the SDTP
decoder's module training (sdtp_decoder)."""
