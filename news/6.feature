`hydra.launcher.devices` hands each running job its own device ids in `CUDA_VISIBLE_DEVICES` (or `device_env`), caps concurrency to the pool, and releases the ids however the job ends.
