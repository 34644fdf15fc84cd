"""The streaming diff: configuration, CPU and GPU executors, per-chunk kernels, mergeable
statistics, the report and its terminal summary."""
