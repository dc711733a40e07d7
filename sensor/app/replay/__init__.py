"""`phi-sensor replay`: main (one process or two), plan (prefilter and split decisions), files (one
capture into the pipeline), split (fork, spill, collect)."""
