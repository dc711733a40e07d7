"""`phi-sensor live` and `status`: service (entry point, one worker), worker, supervisor, reload,
stats, system (signals, user, privileges, sd_notify), status."""
