"""GPU work on a Redis queue (RQ): request → job → worker → result.

- ``queues``: queue names and which job kind goes where.
- ``client``: the API side: submit, wait, cancel, inspect.
- ``tasks``: the job functions a worker runs (the queue's entry points).
- ``runtime``: what a worker keeps between jobs (its warm models).
- ``training``: training runs (API side).
- ``volume_jobs`` / ``volume_worker``: whole-volume jobs, the API's and the worker's side; ``volume_steps``
  their steps and state machine.
- ``worker``: the worker process.
- ``embedded``: ``make serve``'s launcher: embedded Redis, workers, then the MONAI Label server.
"""
