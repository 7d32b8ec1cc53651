"""What a training run leaves on disk, and the tools that read it: ``folder`` (the run folder's
format: the one module that reads and writes it), ``config`` (a run's settings as ``config.json``
holds them, and the upgrade of folders written by older versions), ``recommend`` (top-K lists from a
run) and ``report`` (the HTML report and paired tests over finished runs)."""
